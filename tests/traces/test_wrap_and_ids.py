"""Windows crossing the period wrap around; one trace-id order in every format;
formats detected by content (no suffix needed)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetsim.cli import main
from fleetsim.traces.config import TracesConfig
from fleetsim.traces.fleet_builder import build_availability
from fleetsim.traces.formats.common import trace_id_order
from fleetsim.traces.formats.fedscale import load_fedscale
from fleetsim.traces.formats.flash import load_flash
from fleetsim.traces.formats.intervals import load_intervals
from fleetsim.traces.registry import detect_format
from fleetsim.traces.window_cursor import _walk_online_seconds, online_seconds

CASES = Path(__file__).resolve().parents[2] / ".." / "shared" / "cases"
DAY = 86400.0


def _grid_online_seconds(trace, device: int, end: float, step: float = 60.0) -> float:
    """Online seconds by sampling the middle of every ``step`` (exact when all window
    edges are multiples of ``step``): independent of the trace's own accounting."""
    t = np.arange(0.0, end, step) + step / 2
    return float(sum(trace.is_available(np.array([device]), x)[0] for x in t) * step)


def test_overnight_window_wraps(tmp_path):
    csv = tmp_path / "w.csv"
    csv.write_text("device_id,start_s,end_s\n0,82800,90000\n", encoding="utf-8")
    trace = load_intervals(csv, 1, DAY)
    ids = np.array([0])
    # online 23:00-01:00 every day, day 0's 00:00-01:00 included
    assert trace.is_available(ids, 1800.0)[0] and trace.is_available(ids, 83000.0)[0]
    assert not trace.is_available(ids, 3600.0)[0] and not trace.is_available(ids, 82799.0)[0]
    # one window across midnight: it ends at 01:00 the next day, not at 24:00
    assert trace.window_end(ids, 84000.0)[0] == DAY + 3600.0
    assert trace.window_end(ids, 2 * DAY + 84000.0)[0] == 3 * DAY + 3600.0
    for end in (DAY, 2.5 * DAY, 3 * DAY):
        expected = _grid_online_seconds(trace, 0, end)
        assert online_seconds(trace, ids, end)[0] == expected
        assert _walk_online_seconds(trace, ids, end)[0] == expected
    assert online_seconds(trace, ids, 3 * DAY)[0] == 3 * 7200.0


def test_readme_overnight_case_runs_and_validates(tmp_path, capsys):
    case = CASES / "readme_overnight_window_period"
    if not case.exists():
        pytest.skip("shared cases not present")
    trace = load_intervals(case / "my_windows.csv", 4, DAY)
    # trace ids 0 and 7 -> fleet devices 0,1,2,3 = ids 0,7,0,7
    ids = np.arange(4)
    got = online_seconds(trace, ids, 2 * DAY)
    want = [_grid_online_seconds(trace, i, 2 * DAY) for i in range(4)]
    np.testing.assert_array_equal(got, want)
    # id 0: 00:00-01:00 and 23:00-01:00 are one 2-h overnight window a day;
    # id 7: 00:30-01:30 a day
    np.testing.assert_array_equal(got, [2 * 7200.0, 2 * 3600.0, 2 * 7200.0, 2 * 3600.0])
    work = tmp_path / "case"
    shutil.copytree(case, work)
    assert main(["validate", str(work / "scenario.yaml")]) == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow  # a whole (systems-only) run
def test_readme_overnight_case_run(tmp_path, capsys):
    case = CASES / "readme_overnight_window_period"
    if not case.exists():
        pytest.skip("shared cases not present")
    work = tmp_path / "case"
    shutil.copytree(case, work)
    assert main(["run", str(work / "scenario.yaml"), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_fedscale_real_name_without_suffix(tmp_path, capsys):
    case = CASES / "fedscale_real_name_no_suffix"
    if not case.exists():
        pytest.skip("shared cases not present")
    path = case / "client_behave_trace"
    assert detect_format(path) == "fedscale"
    rec = pickle.loads(path.read_bytes())[3834]
    online = sum(b - a for a, b in zip(rec["active"], rec["inactive"]))
    assert online == 211625 == rec["duration"]
    assert main(["traces", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid fedscale trace" in out
    assert f"online_s_per_period={online}" in out
    assert f"period_s={rec['finish_time']}" in out
    assert f"online_share={online / rec['finish_time']:.4g}" in out  # 0.4082
    assert main(["traces", "inspect", str(path), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "client_behave_trace_inspect.png").exists()
    capsys.readouterr()
    # --format forces a format: as FLASH JSON this pickle is refused in one line
    assert main(["traces", "validate", str(path), "--format", "flash"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not UTF-8 text" in err
    assert main(["traces", "validate", str(path), "--format", "fedscale"]) == 0


def _formats_with_ids(tmp_path: Path, ids: list) -> dict[str, tuple[Path, str]]:
    """One file per format where trace id ``x`` is online [0, 100*(x+1)) each period,
    written in the (unsorted) order of ``ids``."""
    rows = pd.DataFrame({"device_id": ids, "start_s": 0.0,
                         "end_s": [100.0 * (int(x) + 1) for x in ids]})
    out: dict[str, tuple[Path, str]] = {}
    rows.to_csv(tmp_path / "i.csv", index=False)
    out["csv"] = (tmp_path / "i.csv", "intervals")
    rows.to_csv(tmp_path / "i.tsv", index=False, sep="\t")
    out["tsv"] = (tmp_path / "i.tsv", "intervals")
    rows.to_parquet(tmp_path / "i.parquet")
    out["parquet"] = (tmp_path / "i.parquet", "intervals")
    rows.to_csv(tmp_path / "intervals_no_suffix", index=False)
    out["csv_no_suffix"] = (tmp_path / "intervals_no_suffix", "intervals")
    for key_type in (int, str):
        rec = {key_type(x): {"active": [0], "inactive": [100 * (int(x) + 1)],
                             "finish_time": 10_000} for x in ids}
        p = tmp_path / f"behave_{key_type.__name__}"
        p.write_bytes(pickle.dumps(rec))
        out[f"fedscale_{key_type.__name__}_keys"] = (p, "fedscale")
    # FLASH: user x locked, charging and on Wi-Fi for 100*(x+1) s, then unlocked; the
    # trace spans 10,000 s
    flash = {}
    for x in ids:
        on = 100 * (int(x) + 1)
        flash[str(x)] = {"messages": "\n".join([
            "2024-01-01 00:00:00\tscreen_lock", "2024-01-01 00:00:00\tbattery_charged_on",
            "2024-01-01 00:00:00\twifi",
            f"2024-01-01 00:{on // 60:02d}:{on % 60:02d}\tscreen_unlock",
            "2024-01-01 02:46:40\tscreen_lock"])}
    (tmp_path / "state.json").write_text(json.dumps(flash), encoding="utf-8")
    out["flash_json"] = (tmp_path / "state.json", "flash")
    shutil.copy(tmp_path / "state.json", tmp_path / "state_no_suffix")
    out["flash_no_suffix"] = (tmp_path / "state_no_suffix", "flash")
    return out


def test_trace_ids_numeric_order_in_every_format(tmp_path):
    ids = [10, 9, 2, 11]  # string order would be 10, 11, 2, 9
    expected = [2, 9, 10, 11]
    assert trace_id_order(["10", "9", "2", "11", "b", "a"]) == ["2", "9", "10", "11", "a", "b"]
    files = _formats_with_ids(tmp_path, ids)
    n = 8  # fleet device i uses trace id expected[i % 4]
    for label, (path, kind) in files.items():
        assert detect_format(path) == kind, label
        if kind == "intervals":
            trace = load_intervals(path, n, 10_000.0)
        elif kind == "fedscale":
            trace = load_fedscale(path, n, 10_000.0)
        else:
            trace = load_flash(path, n, 10_000.0)
        first_end = trace.window_end(np.arange(n), 0.0)
        np.testing.assert_array_equal(
            first_end, [100.0 * (expected[i % 4] + 1) for i in range(n)], err_msg=label
        )


def test_scenario_kind_auto_detects_by_content(tmp_path):
    files = _formats_with_ids(tmp_path, [3, 1])
    for label in ("csv_no_suffix", "fedscale_int_keys", "flash_no_suffix"):
        path, _ = files[label]
        cfg = TracesConfig.model_validate(
            {"availability": {"kind": "auto", "path": path.name, "period_s": 10_000}})
        trace = build_availability(cfg, 2, 0, 10_000.0, tmp_path)
        np.testing.assert_array_equal(trace.window_end(np.arange(2), 0.0), [200.0, 400.0])
