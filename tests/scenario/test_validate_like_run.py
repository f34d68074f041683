"""``fleetsim validate`` refuses what ``run`` would refuse: trace files are loaded,
the feasibility checks made, and too few training examples for the fleet caught,
with the same one-line message as ``run`` (exit 2, never a traceback)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fleetsim.cli import main

CASES = Path(__file__).resolve().parents[2] / ".." / "shared" / "cases"

BASE = """\
fleet: {size: 6}
traces:
  availability: {kind: intervals, path: w.csv, period_s: 86400}
  network: {type: fixed, uplink_mbps: 10}
numerics: {engine: none}
model: {name_or_path: tiny-bert, max_seq_len: 16}
data: {name: bbc_news, max_examples: 64}
protocol: {devices_per_step: 2, rounds: 1, batches_per_round: 1}
run: {name: v, progress: false}
"""


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _both(path: Path, tmp_path: Path, capsys) -> tuple[tuple[int, str], tuple[int, str]]:
    v = _cli(["validate", str(path)], capsys)
    r = _cli(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    return v, r


def test_overlapping_trace_refused_by_validate_and_run(tmp_path, capsys):
    (tmp_path / "w.csv").write_text("device_id,start_s,end_s\n0,0,100\n0,50,200\n",
                                    encoding="utf-8")
    (tmp_path / "s.yaml").write_text(BASE, encoding="utf-8")
    (vc, verr), (rc, rerr) = _both(tmp_path / "s.yaml", tmp_path, capsys)
    assert vc == rc == 2
    assert verr == rerr and verr.count("\n") == 1
    assert "device 0 has overlapping intervals [0, 100) and [50, 200)" in verr


def test_no_device_holds_the_job_refused_by_validate(tmp_path, capsys):
    (tmp_path / "w.csv").write_text("device_id,start_s,end_s\n0,0,100\n", encoding="utf-8")
    text = BASE.replace("network: {type: fixed, uplink_mbps: 10}",
                        "network: {type: fixed, uplink_mbps: 10}\n  usable_ram_fraction: 1.0e-6")
    (tmp_path / "s.yaml").write_text(text, encoding="utf-8")
    code, err = _cli(["validate", str(tmp_path / "s.yaml")], capsys)
    assert code == 2 and "traces: no device can hold the job" in err


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_fewer_examples_than_clients_exit_2(tmp_path, capsys, partition):
    (tmp_path / "w.csv").write_text("device_id,start_s,end_s\n0,0,100\n", encoding="utf-8")
    text = BASE.replace("numerics: {engine: none}", "numerics: {engine: torch, threads: 1}")
    text = text.replace("max_examples: 64", f"max_examples: 4, partition: {partition}, "
                        "alpha: 1.0e-6")
    (tmp_path / "s.yaml").write_text(text, encoding="utf-8")
    (vc, verr), (rc, rerr) = _both(tmp_path / "s.yaml", tmp_path, capsys)
    assert vc == rc == 2
    assert verr == rerr and verr.count("\n") == 1
    # 4 examples for 6 clients: any partition leaves at least 6 - 4 = 2 clients empty
    m = re.search(r"data\.max_examples 4 < fleet\.size 6: (\d) of 6 clients would hold no "
                  r"examples \(clients ([\d, ]+); data\.partition (\w+)\)", verr)
    assert m is not None, verr
    assert int(m.group(1)) == len(m.group(2).split(", ")) >= 2 and m.group(3) == partition
    if partition == "iid":  # near-equal shares: exactly the last 2 clients get nothing
        assert m.group(2) == "4, 5"
    # systems-only runs need no examples: the same fleet validates
    ok = text.replace("numerics: {engine: torch, threads: 1}", "numerics: {engine: none}")
    (tmp_path / "ok.yaml").write_text(ok, encoding="utf-8")
    assert _cli(["validate", str(tmp_path / "ok.yaml")], capsys)[0] == 0


def test_dirichlet_case(tmp_path, capsys):
    case = CASES / "dirichlet_fewer_examples_than_clients"
    if not case.exists():
        pytest.skip("shared cases not present")
    work = tmp_path / "case"
    shutil.copytree(case, work)
    for name, empty in (("scenario.yaml", None), ("iid.yaml", 40 - 24)):
        (vc, verr), (rc, rerr) = _both(work / name, tmp_path, capsys)
        assert vc == rc == 2 and verr == rerr and verr.count("\n") == 1
        assert "data.max_examples 24 < fleet.size 40: " in verr
        if empty is not None:
            assert f": {empty} of 40 clients would hold no examples" in verr
    assert _cli(["validate", str(work / "enough.yaml")], capsys)[0] == 0


def test_misspelt_output_dir_placeholder_refused_by_validate_and_run(tmp_path, capsys):
    """validate refused nothing and run refused ``{sed}``: both now give the same line,
    at the line of output.dir, with the placeholder it probably meant."""
    (tmp_path / "w.csv").write_text("device_id,start_s,end_s\n0,0,100\n", encoding="utf-8")
    (tmp_path / "s.yaml").write_text(BASE + "output: {dir: 'runs/x-{sed}'}\n", encoding="utf-8")
    v = _cli(["validate", str(tmp_path / "s.yaml")], capsys)
    r = _cli(["run", str(tmp_path / "s.yaml"), "--no-progress"], capsys)
    assert v == r and v[0] == 2 and v[1].count("\n") == 1
    assert (f"{tmp_path / 's.yaml'}:10: output.dir: bad placeholder {{sed}} (did you mean "
            "'seed'?); allowed placeholders: {name}, {seed}") in v[1]
