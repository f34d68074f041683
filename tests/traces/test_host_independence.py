"""Results do not depend on the host: time zone, locale, hash seed, listing order.

A tiny systems-only run over a FLASH trace whose messages cross a daylight-saving
change (America/New_York, 2023-03-12) runs in two subprocesses with different
``TZ``/``LC_ALL``/``PYTHONHASHSEED``; every output file must be byte-identical
(summary.json compared without ``host_seconds``).  Zone-less timestamps are read in
``traces.availability.timezone`` (default UTC).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.formats.flash import flash_intervals

REPO = Path(__file__).resolve().parents[2]

MESSAGES = {
    "2": "\n".join([
        "2023-03-11 21:00:00\tscreen_lock",
        "2023-03-11 21:00:00\tbattery_charged_on",
        "2023-03-11 21:00:00\twifi",
        "2023-03-12 07:00:00\tscreen_unlock",
        "2023-03-12 22:00:00\tscreen_lock",
        "2023-03-13 06:30:00\tscreen_unlock",
    ]),
    "10": "\n".join([
        "2023-03-11 12:00:00\twifi",
        "2023-03-11 23:30:00\tbattery_charged_on",
        "2023-03-11 23:45:00\tscreen_lock",
        "2023-03-12 04:15:00\tbattery_charged_off",
        "2023-03-13 01:00:00\tbattery_charged_on",
        "2023-03-13 05:00:00\tphone_off",
    ]),
}


def _write_trace(folder: Path) -> Path:
    path = folder / "state_traces.json"
    path.write_text(json.dumps({uid: {"messages": m} for uid, m in MESSAGES.items()}),
                    encoding="utf-8")
    return path


def _with_host_zone(zone: str, fn):
    old = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        return fn()
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_flash_timestamps_ignore_host_zone(tmp_path):
    path = _write_trace(tmp_path)
    utc = _with_host_zone("UTC", lambda: flash_intervals(path, 86400.0 * 3))
    ny = _with_host_zone("America/New_York", lambda: flash_intervals(path, 86400.0 * 3))
    for a, b in zip(utc[:3], ny[:3]):
        np.testing.assert_array_equal(a, b)
    # user "2" (numbered 0: "2" before "10") is online 21:00 -> 07:00 = 10 h, read in UTC
    dev, start, end, m = utc
    assert m == 2
    first = np.nonzero(dev == 0)[0][0]
    assert end[first] - start[first] == 10 * 3600.0
    # The documented setting: the same wall clock read in New York crosses the DST
    # change (02:00 -> 03:00 on 2023-03-12), so that window lasts one hour less.
    dev2, start2, end2, _ = flash_intervals(path, 86400.0 * 3, timezone="America/New_York")
    first2 = np.nonzero(dev2 == 0)[0][0]
    assert end2[first2] - start2[first2] == 9 * 3600.0


def test_unknown_timezone_is_refused(tmp_path):
    path = _write_trace(tmp_path)
    with pytest.raises(FleetsimInputError) as err:
        flash_intervals(path, 86400.0, timezone="Mars/Olympus")
    assert str(err.value) == (
        "traces.availability.timezone: 'Mars/Olympus' is not an IANA time zone (allowed: "
        "e.g. UTC, Europe/Paris, Asia/Shanghai)"
    )


SCENARIO = """\
fleet: {size: 6}
traces:
  availability: {kind: flash, path: state_traces.json}
  network: {type: fixed, uplink_mbps: 10}
numerics: {engine: none}
model: {name_or_path: tiny-bert, max_seq_len: 16}
data: {name: bbc_news, max_examples: 64, max_eval_examples: 16}
protocol: {devices_per_step: 2, rounds: 2, batches_per_round: 2}
run: {name: host, seed: 3, max_sim_hours: 60, progress: false}
output: {dir: out}
"""


def _run(folder: Path, out: str, env_extra: dict) -> Path:
    env = dict(os.environ, **env_extra)
    res = subprocess.run(
        [sys.executable, "-m", "fleetsim", "run", "scenario.yaml", "--out", out,
         "--no-progress"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return folder / out


@pytest.mark.slow  # two subprocess runs, ~15 s
def test_outputs_identical_across_host_zone_locale_and_hash_seed(tmp_path):
    _write_trace(tmp_path)
    (tmp_path / "scenario.yaml").write_text(SCENARIO, encoding="utf-8")
    a = _run(tmp_path, "out_a", {"TZ": "UTC", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "1"})
    b = _run(tmp_path, "out_b", {"TZ": "America/New_York", "LC_ALL": "C",
                                 "PYTHONHASHSEED": "4242"})
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and "summary.json" in files_a
    for name in files_a:
        x, y = (a / name).read_bytes(), (b / name).read_bytes()
        if name == "summary.json":
            sx, sy = json.loads(x), json.loads(y)
            sx.pop("host_seconds"), sy.pop("host_seconds")
            assert sx == sy
            assert sx["steps"] > 0
        elif name == "run_complete.json":  # records summary.json's size, host_seconds' digits
            mx, my = json.loads(x), json.loads(y)
            mx["files"].pop("summary.json"), my["files"].pop("summary.json")
            assert mx == my
        else:
            assert x == y, name
