"""Issue 22 kind 6: real trace files load, their quirks reported, not fatal.

* Real traces name devices by strings (hashes, user names): every format accepts any id,
  numbered in one order (integer ids numerically, then the other ids in string order,
  whatever the file's row order).
* FedScale's client reads its trace as ``norm_time = cur_time % finish_time`` with
  ``active[k] <= norm_time <= inactive[k]`` (``ClientMetadata.is_active``): a window starting
  after ``finish_time`` is never seen (skipped), one running past it is clipped there,
  reversed or empty windows hold no time, overlapping ones are their union; each quirk is
  counted by ``traces validate`` and in the run's availability label.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from fleetsim.cli import main
from fleetsim.traces.formats.fedscale import QUIRKS, load_fedscale
from fleetsim.traces.formats.flash_windows import read_flash_windows
from fleetsim.traces.formats.intervals import load_intervals

# trace id -> its one window [0, end) (end distinct per id, to tell them apart)
STRING_IDS = {"dev0": 100.0, "b7f3a9c2": 200.0, "10": 300.0, "9": 400.0, "alice": 500.0}
ORDER = ["9", "10", "alice", "b7f3a9c2", "dev0"]  # integers numerically, then sorted strings


def _rows() -> pd.DataFrame:
    return pd.DataFrame({"device_id": list(STRING_IDS), "start_s": 0.0,
                         "end_s": list(STRING_IDS.values())})


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet"])
def test_interval_tables_accept_string_ids(tmp_path, kind):
    rows = _rows()
    for label, frame in (("file", rows), ("reversed", rows.iloc[::-1])):
        p = tmp_path / f"{label}.{kind}"
        if kind == "parquet":
            frame.to_parquet(p)
        else:
            frame.to_csv(p, index=False, sep="\t" if kind == "tsv" else ",")
        trace = load_intervals(p, 7)
        # fleet device i uses the (i mod 5)-th trace id in ORDER
        expected = [STRING_IDS[ORDER[i % 5]] for i in range(7)]
        np.testing.assert_array_equal(trace.window_end(np.arange(7), 0.0), expected)
        assert "5 trace devices" in trace.label


def test_string_ids_in_validate_and_errors(tmp_path, capsys):
    p = tmp_path / "real.csv"
    _rows().to_csv(p, index=False)
    assert main(["traces", "validate", str(p)]) == 0
    out = capsys.readouterr().out
    assert "valid intervals trace" in out
    assert "trace_devices=5" in out and "non_integer_ids=3" in out
    # errors name the trace's own id
    bad = tmp_path / "overlap.csv"
    bad.write_text("device_id,start_s,end_s\ndev0,0,50\nalice,0,9\ndev0,40,60\n")
    assert main(["traces", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "device dev0 has overlapping intervals [0, 50) and [40, 60)" in err
    # integer ids written as " 07" and "7" are one device
    same = tmp_path / "same.csv"
    same.write_text("device_id,start_s,end_s\n7,0,10\n07,20,30\nx,0,5\n")
    trace = load_intervals(same, 2)
    assert trace.num_devices == 2 and trace.offsets.tolist() == [0, 2, 3]
    assert trace.window_end(np.array([0]), 25.0)[0] == 30.0


def test_flash_windows_and_fedscale_take_string_ids_in_the_same_order(tmp_path):
    windows = {u: [[0.0, end]] for u, end in STRING_IDS.items()}
    m = read_flash_windows(_write_json(tmp_path / "w.json", windows), observed_day_min_share=0)
    assert m.user_ids == ORDER
    rec = {u: {"active": [0.0], "inactive": [end], "finish_time": 1000.0}
           for u, end in STRING_IDS.items()}
    p = tmp_path / "behave"
    p.write_bytes(pickle.dumps(rec))
    trace = load_fedscale(p, 5, 1000.0)
    np.testing.assert_array_equal(trace.window_end(np.arange(5), 0.0),
                                  [STRING_IDS[u] for u in ORDER])


def _write_json(path, obj):
    import json

    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


FEDSCALE_QUIRKS = {
    # clipped at finish_time: [50, 120) is online [50, 100) of every period
    "a": {"active": [0.0, 50.0], "inactive": [10.0, 120.0], "finish_time": 100.0},
    # a window starting after finish_time is never seen: [150, 160) skipped
    "b": {"active": [20.0, 150.0], "inactive": [30.0, 160.0], "finish_time": 100.0},
    # reversed (40 -> 30) skipped, empty (60 -> 60) skipped, overlapping [0,20)+[10,30) merged
    "c": {"active": [0.0, 10.0, 40.0, 60.0], "inactive": [20.0, 30.0, 30.0, 60.0],
          "finish_time": 100.0},
    # every window after finish_time: never online
    "d": {"active": [200.0], "inactive": [300.0], "finish_time": 100.0},
    # starts before 0: online from 0
    "e": {"active": [-5.0], "inactive": [5.0], "finish_time": 100.0},
}


def test_fedscale_quirks_load_as_fedscale_reads_them(tmp_path, capsys):
    p = tmp_path / "client_behave_trace"
    p.write_bytes(pickle.dumps(FEDSCALE_QUIRKS))
    trace = load_fedscale(p, 5, 400.0)  # devices a, b, c, d, e
    ids = np.arange(5)

    def online(t):
        return trace.is_available(ids, t).tolist()

    assert online(5.0) == [True, False, True, False, False]
    assert online(25.0) == [False, True, True, False, False]
    assert online(35.0) == [False, False, False, False, False]  # c's reversed window
    assert online(99.5) == [True, False, False, False, False]
    # next period: clipped at 100, then a's first window again; b's [150, 160) never seen
    assert online(100.0) == [True, False, True, False, True]
    assert online(155.0) == [True, False, False, False, False]
    assert online(215.0) == [False, False, True, False, False]
    assert trace.window_end(ids[:1], 60.0)[0] == 100.0 + 10.0  # [50,100) joins [100,110)
    assert not any(trace.is_available(ids[3:4], t)[0] for t in np.arange(0.0, 400.0, 2.5))
    counts = {"windows_outside_period_skipped": 2, "windows_clipped_at_finish": 1,
              "windows_before_zero_clipped": 1, "empty_or_reversed_windows_skipped": 2,
              "overlapping_windows_merged": 1, "clients_never_online": 1}
    assert set(counts) == set(QUIRKS)
    assert "2 windows outside period skipped" in trace.label
    assert main(["traces", "validate", str(p), "--format", "fedscale"]) == 0
    out = capsys.readouterr().out
    for key, n in counts.items():
        assert f"{key}={n}" in out, (key, out)
    assert "clients=5" in out


def test_negative_and_fractional_ids_are_ids(tmp_path):
    # once refused; real ids may be signed hashes: -1 and 3 numerically, then "0.5"
    p = tmp_path / "ids.csv"
    p.write_text("device_id,start_s,end_s\n0.5,0,10\n3,0,20\n-1,0,30\n")
    trace = load_intervals(p, 3)
    assert trace.window_end(np.arange(3), 0.0).tolist() == [30.0, 20.0, 10.0]
