"""Malformed trace files: each raises FleetsimInputError with an exact message."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.formats.fedscale import load_fedscale
from fleetsim.traces.formats.flash import load_flash
from fleetsim.traces.formats.intervals import load_intervals
from fleetsim.traces.inspect import validate_trace_file
from fleetsim.traces.registry import file_formats
from fleetsim.traces.tables import CATALOGUES, load_catalogue, load_population


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _message(fn, *args) -> str:
    with pytest.raises(FleetsimInputError) as info:
        fn(*args)
    return str(info.value)


def test_intervals_missing_column(tmp_path):
    p = _write(tmp_path, "a.csv", "device_id,start_s\n0,1\n")
    assert _message(load_intervals, p, 4) == (
        f"{p}: missing column(s) 'end_s' (required: device_id, start_s, end_s; "
        "found: device_id, start_s)"
    )


def test_intervals_negative_start(tmp_path):
    p = _write(tmp_path, "a.csv", "device_id,start_s,end_s\n0,5,9\n1,-3,4\n")
    assert _message(load_intervals, p, 4) == (
        f"{p}: column 'start_s' row 2: -3 is not allowed (allowed: numbers >= 0)"
    )


def test_intervals_reversed(tmp_path):
    p = _write(tmp_path, "a.csv", "device_id,start_s,end_s\n0,5,9\n1,8,4\n")
    assert _message(load_intervals, p, 4) == (
        f"{p}: row 2: interval of device 1 has end_s 4 <= start_s 8 (allowed: end_s > start_s)"
    )


def test_intervals_zero_length(tmp_path):
    p = _write(tmp_path, "a.csv", "device_id,start_s,end_s\n0,5,5\n")
    assert _message(load_intervals, p, 4) == (
        f"{p}: row 1: interval of device 0 has end_s 5 <= start_s 5 (allowed: end_s > start_s)"
    )


def test_intervals_overlapping(tmp_path):
    p = _write(tmp_path, "a.csv", "device_id,start_s,end_s\n3,10,20\n3,0,12\n")
    assert _message(load_intervals, p, 4) == (
        f"{p}: device 3 has overlapping intervals [0, 12) and [10, 20) "
        "(allowed: sorted, non-overlapping per device)"
    )


def test_intervals_non_numeric(tmp_path):
    p = _write(tmp_path, "a.csv", "device_id,start_s,end_s\n0,abc,9\n")
    assert _message(load_intervals, p, 4) == f"{p}: column 'start_s' row 1: 'abc' is not a number"


def test_intervals_non_integer_device_is_an_id(tmp_path):
    # issue 22 kind 6: any device id is accepted (0.5 is the id "0.5", after integer ids)
    p = _write(tmp_path, "a.csv", "device_id,start_s,end_s\n0.5,1,9\n3,2,4\n")
    trace = load_intervals(p, 2)
    assert trace.window_end(np.arange(2), 2.5).tolist() == [4.0, 9.0]


def test_intervals_blank_or_missing_device(tmp_path):
    p = _write(tmp_path, "a.csv", "device_id,start_s,end_s\n3,1,9\n,2,4\n")
    assert _message(load_intervals, p, 4) == f"{p}: column 'device_id' row 2: value is missing"
    p = _write(tmp_path, "b.csv", "device_id,start_s,end_s\ndev0,1,9\n  ,2,4\n")
    assert _message(load_intervals, p, 4) == (
        f"{p}: column 'device_id' row 2: the id is blank (allowed: any non-empty id)")


def test_empty_file(tmp_path):
    p = _write(tmp_path, "a.csv", "")
    assert _message(load_intervals, p, 4) == f"{p}: file is empty"


def test_header_only(tmp_path):
    p = _write(tmp_path, "a.csv", "device_id,start_s,end_s\n")
    assert _message(load_intervals, p, 4) == f"{p}: table has a header but no rows"


def test_intervals_outside_period(tmp_path):
    # A window may cross the period's end (it wraps), but not be longer than a period,
    # start after it, or overlap another window once wrapped.
    p = _write(tmp_path, "a.csv", "device_id,start_s,end_s\n0,10,200\n")
    assert _message(load_intervals, p, 4, 100.0) == (
        f"{p}: row 1 (device 0): [10, 200) is longer than the period "
        "traces.availability.period_s = 100 (allowed: at most one period)"
    )
    p = _write(tmp_path, "b.csv", "device_id,start_s,end_s\n0,10,20\n3,120,130\n")
    assert _message(load_intervals, p, 4, 100.0) == (
        f"{p}: row 2 (device 3): start 120 is not inside the period "
        "traces.availability.period_s = 100 (allowed: 0 <= start < period; a window may "
        "end after the period and then wraps around to the period's start)"
    )
    # a wrapped piece overlapping another window joins it (union)
    p = _write(tmp_path, "c.csv", "device_id,start_s,end_s\n0,5,20\n0,90,110\n")
    trace = load_intervals(p, 1, 100.0)
    assert trace.starts.tolist() == [0.0, 90.0] and trace.ends.tolist() == [20.0, 100.0]


def test_broken_parquet(tmp_path):
    p = tmp_path / "a.parquet"
    p.write_bytes(b"not a parquet file at all")
    assert _message(load_intervals, p, 4).startswith(f"{p}: cannot be read as a table (")


def test_catalogue_zero_latency(tmp_path):
    p = _write(tmp_path, "c.csv", "phone_model,ram_gb,cpu_ref_forward_s\nA,4,1.5\nB,4,0\n")
    assert _message(load_catalogue, p) == (
        f"{p}: column 'cpu_ref_forward_s' row 2: 0 is not allowed (allowed: numbers > 0)"
    )


def test_catalogue_negative_latency(tmp_path):
    p = _write(
        tmp_path,
        "c.csv",
        "phone_model,ram_gb,cpu_ref_forward_s,npu_ref_forward_s\nA,4,1.5,-0.2\n",
    )
    assert _message(load_catalogue, p) == (
        f"{p}: column 'npu_ref_forward_s' row 1: -0.2 is not allowed (allowed: numbers > 0)"
    )


def test_catalogue_duplicate_phone(tmp_path):
    p = _write(tmp_path, "c.csv", "phone_model,ram_gb,cpu_ref_forward_s\nA,4,1\nA,6,2\n")
    assert _message(load_catalogue, p) == f"{p}: column 'phone_model': 'A' appears more than once"


def test_population_unknown_phone(tmp_path):
    cat = load_catalogue(CATALOGUES["default"])
    p = _write(tmp_path, "p.csv", "phone_model,weight\nXiaomi 14,1\nNokia 3310,2\n")
    assert _message(load_population, p, cat) == (
        f"{p}: column 'phone_model' row 2: unknown phone model 'Nokia 3310' "
        f"(allowed: the catalogue's {len(cat)} phone models)"
    )


def test_population_zero_weights(tmp_path):
    cat = load_catalogue(CATALOGUES["default"])
    p = _write(tmp_path, "p.csv", "phone_model,weight\nXiaomi 14,0\n")
    assert _message(load_population, p, cat) == (
        f"{p}: column 'weight': weights sum to zero (need > 0)"
    )


def test_pickle_with_global_is_refused(tmp_path):
    p = tmp_path / "trace.pkl"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p.write_bytes(pickle.dumps({0: Evil()}))
    msg = _message(load_fedscale, p, 4, 86400.0)
    assert msg.startswith(f"{p}: pickle refers to ")
    assert msg.endswith(
        "; refused (allowed: builtin data only: dict, list, tuple, str, bytes, int, float, "
        "bool, None)"
    )


def test_pickle_not_a_dict(tmp_path):
    p = tmp_path / "trace.pkl"
    p.write_bytes(pickle.dumps([1, 2, 3]))
    assert _message(load_fedscale, p, 4, 86400.0) == (
        f"{p}: expected a non-empty dict client_id -> {{'active', 'inactive', 'finish_time'}}, "
        "got list"
    )


def test_fedscale_missing_key(tmp_path):
    p = tmp_path / "trace.pkl"
    p.write_bytes(pickle.dumps({7: {"active": [0.0], "inactive": [5.0]}}))
    assert _message(load_fedscale, p, 4, 86400.0) == (
        f"{p}: client 7: missing key(s) finish_time (required: active, inactive, finish_time)"
    )


def test_fedscale_length_mismatch(tmp_path):
    p = tmp_path / "trace.pkl"
    p.write_bytes(pickle.dumps({7: {"active": [0.0, 9.0], "inactive": [5.0], "finish_time": 20}}))
    assert _message(load_fedscale, p, 4, 86400.0) == (
        f"{p}: client 7: 'active' has 2 entries but 'inactive' has 1 (must match)"
    )


def test_flash_bad_timestamp(tmp_path):
    p = _write(tmp_path, "s.json", json.dumps({"u1": {"messages": "yesterday\tscreen_on\n"}}))
    assert _message(load_flash, p, 4, 86400.0) == (
        f"{p}: user 'u1' messages line 1: 'yesterday\\tscreen_on' does not start with a "
        "'YYYY-mm-dd HH:MM:SS' timestamp and a tab"
    )


def test_flash_invalid_json(tmp_path):
    p = _write(tmp_path, "s.json", "{not json")
    assert _message(load_flash, p, 4, 86400.0).startswith(f"{p}: not valid JSON (")


def test_unknown_suffix(tmp_path):
    p = _write(tmp_path, "trace.xyz", "hello")
    assert _message(validate_trace_file, p) == (
        f"{p}: cannot tell the trace format from the suffix '.xyz' or the content (allowed: "
        f"a file of format {', '.join(file_formats())}, a device table (CSV/TSV/Parquet), or "
        "name one with --format)"
    )
    assert file_formats()[:3] == ["intervals", "fedscale", "flash"]


def test_undetectable_columns(tmp_path):
    p = _write(tmp_path, "t.csv", "foo,bar\n1,2\n")
    assert _message(validate_trace_file, p) == (
        f"{p}: cannot tell the trace format from columns foo, bar (allowed: device_id,start_s,"
        "end_s | phone_model,weight | phone_model,ram_gb,cpu_ref_forward_s | quantile,"
        "downlink_mbps,uplink_mbps | downlink_mbps,uplink_mbps)"
    )


def test_network_quantiles_not_rising(tmp_path):
    p = _write(tmp_path, "n.csv", "quantile,downlink_mbps,uplink_mbps\n0,1,1\n0.5,2,2\n0.4,3,3\n")
    assert _message(validate_trace_file, p) == (
        f"{p}: column 'quantile' must rise strictly within [0, 1] (allowed: 0..1)"
    )


# ----------------------------------------------------------- found by a new-user trial


def _flash_file(tmp_path, lines: list[str], name: str = "state.json"):
    import json

    path = tmp_path / name
    path.write_text(json.dumps({"7": {"messages": "\n".join(lines)}}))
    return path


FLASH_LINES = [  # available (locked, charging, Wi-Fi) 05:01-06:00 of a 9 h span
    "2018-03-06 00:00:00\tbattery_charged_on",
    "2018-03-06 05:00:00\tscreen_lock",
    "2018-03-06 05:00:10\twifi",
    "2018-03-06 05:01:00\tbattery_charged_on",
    "2018-03-06 06:00:00\tscreen_unlock",
    "2018-03-06 07:00:00\tbattery_charged_off",
    "2018-03-06 09:00:00\tbattery_charged_off",
]


def test_flash_messages_out_of_time_order_are_read_in_time_order(tmp_path):
    from fleetsim.traces.formats.flash import flash_intervals

    shuffled = [FLASH_LINES[i] for i in (1, 2, 3, 5, 0, 6, 4)]
    in_order = flash_intervals(_flash_file(tmp_path, FLASH_LINES, "a.json"), 86400.0)
    out_of_order = flash_intervals(_flash_file(tmp_path, shuffled, "b.json"), 86400.0)
    for a, b in zip(in_order, out_of_order):
        np.testing.assert_array_equal(a, b)
    _, start, end, _ = in_order
    # by hand: one window 05:00:10-06:00 (the charger was already on), repeated every 9 h
    assert start[0] == 5 * 3600 + 10 and end[0] == 6 * 3600
    assert np.allclose(np.diff(start), 9 * 3600)


def test_flash_user_repeated_into_millions_of_windows_is_refused(tmp_path):
    from fleetsim.traces.formats.flash import flash_intervals

    lines = ["2018-03-06 05:00:00\tscreen_lock", "2018-03-06 05:00:00\twifi",
             "2018-03-06 05:00:00\tbattery_charged_on",
             "2018-03-06 05:00:01\tscreen_unlock", "2018-03-06 05:00:02\tscreen_lock"]
    with pytest.raises(FleetsimInputError, match="its messages span only 2 s"):
        flash_intervals(_flash_file(tmp_path, lines), 8000 * 3600.0)


def test_the_host_zone_link_is_refused():
    from fleetsim.traces.formats.common import zone

    for name in ("localtime", "posixrules"):
        with pytest.raises(FleetsimInputError, match="host's own zone"):
            zone(name)
    assert str(zone("UTC")) == "UTC"


def test_online_share_counts_short_windows_exactly(tmp_path):
    """One second online every 15 minutes: 96 s a day.  Sampling at the quarter hours read
    this as always online; the report now integrates the windows."""
    from fleetsim.traces.formats.intervals import IntervalsFormat

    path = tmp_path / "blips.csv"
    rows = [f"0,{q * 900},{q * 900 + 1}" for q in range(96)]
    path.write_text("device_id,start_s,end_s\n" + "\n".join(rows) + "\n")
    report = IntervalsFormat().report(path)
    assert report.summary["mean_online_share"] == pytest.approx(96 / 86400, rel=1e-6)
    assert report.hourly_share == pytest.approx(np.full(24, 4 / 3600), rel=1e-6)
