"""Availability semantics, loaders, safe unpickling, fleet synthesis determinism."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetsim.errors import FleetsimInputError
from fleetsim.traces import build_devices
from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.config import AvailabilityConfig, NetworkConfig, TracesConfig
from fleetsim.traces.formats.diurnal_model import DiurnalAvailability
from fleetsim.traces.formats.fedscale import load_fedscale, safe_unpickle
from fleetsim.traces.formats.flash import load_flash
from fleetsim.traces.formats.intervals import load_intervals


def test_interval_boundaries_half_open():
    tr = IntervalAvailability(np.array([0, 2]), np.array([10.0, 30.0]), np.array([20.0, 40.0]))
    d = np.array([0])
    assert not tr.is_available(d, 9.999)[0]
    assert tr.is_available(d, 10.0)[0]  # a window starting at t is online at t
    assert tr.is_available(d, 19.999)[0]
    assert not tr.is_available(d, 20.0)[0]  # a window ending at t is offline at t
    assert tr.window_end(d, 10.0)[0] == 20.0
    assert tr.window_end(d, 25.0)[0] == 25.0
    assert tr.next_start(d, 20.0)[0] == 30.0
    assert tr.next_start(d, 35.0)[0] == 35.0
    assert tr.next_start(d, 40.0)[0] == np.inf


def test_interval_periodic():
    tr = IntervalAvailability(np.array([0, 1]), np.array([100.0]), np.array([200.0]), period_s=1000)
    d = np.array([0])
    assert tr.is_available(d, 3100.0)[0] and not tr.is_available(d, 3200.0)[0]
    assert tr.next_start(d, 3250.0)[0] == 4100.0
    assert tr.window_end(d, 5150.0)[0] == 5200.0
    t = tr.next_start(d, 7777.7)[0]
    assert tr.is_available(d, t)[0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 50), st.integers(1, 20)), max_size=6),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=10),
)
def test_interval_lookup_matches_brute_force(per_device, times):
    offsets, starts, ends, windows = [0], [], [], []
    for gaps in per_device:
        t, w = 0.0, []
        for gap, length in gaps:
            s = t + gap
            w.append((s, s + length))
            t = s + length + 1
        windows.append(w)
        starts += [a for a, _ in w]
        ends += [b for _, b in w]
        offsets.append(len(starts))
    tr = IntervalAvailability(np.array(offsets), np.array(starts), np.array(ends))
    ids = np.arange(len(per_device))
    for t in times:
        on = tr.is_available(ids, t)
        we = tr.window_end(ids, t)
        ns = tr.next_start(ids, t)
        for i, w in enumerate(windows):
            inside = [b for a, b in w if a <= t < b]
            assert on[i] == bool(inside)
            assert we[i] == (inside[0] if inside else t)
            later = [a for a, b in w if b > t]
            assert ns[i] == (max(later[0], t) if later else np.inf)


def test_diurnal_boundaries_and_periodicity():
    tr = DiurnalAvailability(
        np.array([3600.0, 82800.0, 0.0, 0.0]), np.array([7200.0, 7200.0, 0.0, 86400.0])
    )
    ids = np.arange(4)
    assert list(tr.is_available(ids, 3600.0)) == [True, False, False, True]
    assert list(tr.is_available(ids, 3599.0)) == [False, True, False, True]
    assert list(tr.is_available(ids, 10800.0)) == [False, False, False, True]
    # the window that starts at 23:00 wraps past midnight
    assert tr.is_available(ids[1:2], 86400.0 + 3599.0)[0]
    assert not tr.is_available(ids[1:2], 86400.0 + 3600.0)[0]
    for day in range(5):
        base = day * 86400.0
        assert tr.is_available(ids[:1], base + 3600.0)[0]
        assert not tr.is_available(ids[:1], base + 3600.0 + 7200.0)[0]
        assert tr.window_end(ids[:1], base + 4000.0)[0] == base + 3600.0 + 7200.0
    ns = tr.next_start(ids, 20000.0)
    assert ns[0] == 86400.0 + 3600.0 and ns[2] == np.inf and ns[3] == 20000.0
    assert tr.window_end(ids, 20000.0)[3] == np.inf
    # round trips at awkward times: next_start is online, window_end is offline
    rng = np.random.default_rng(0)
    big = DiurnalAvailability(rng.uniform(0, 86400, 500), rng.uniform(1, 30000, 500))
    bid = np.arange(500)
    for t in rng.uniform(0, 40 * 86400, 20):
        ns = big.next_start(bid, t)
        assert all(big.is_available(bid[i : i + 1], ns[i])[0] for i in range(0, 500, 37))
        we = big.window_end(bid, ns.max())
        online = big.is_available(bid, ns.max())
        assert not any(
            big.is_available(bid[i : i + 1], we[i])[0] for i in np.nonzero(online)[0][:20]
        )


def test_diurnal_model_calibration():
    cfg = TracesConfig()
    _, av = build_devices(cfg, 20_000, 11, 86400.0, Path("."))
    assert av.label.startswith("model: diurnal")
    hourly = np.array([av.is_available(np.arange(20_000), h * 3600.0).mean() for h in range(24)])
    # overnight charging dominates: the 01:00 share beats the 14:00 share
    assert hourly[1] > 2 * hourly[14]
    # FLASH medians: 67,035 s charging and 140,646 s screen-on over 7 days
    # -> about 9,576 s/day charging x (1 - 0.23) idle ≈ 2 h/day
    assert 3600 < np.median(av.duration_s) < 3 * 3600


def test_fleet_determinism_and_prefix_stability():
    cfg = TracesConfig(population="market_share_2024", network=NetworkConfig(type="hsdpa_3g"))
    a, av_a = build_devices(cfg, 5000, 7, 86400.0, Path("."))
    b, av_b = build_devices(cfg, 5000, 7, 86400.0, Path("."))
    c, _ = build_devices(cfg, 5000, 8, 86400.0, Path("."))
    small, av_small = build_devices(cfg, 100, 7, 86400.0, Path("."))
    np.testing.assert_array_equal(a.phone_model_index, b.phone_model_index)
    np.testing.assert_array_equal(a.uplink_bps, b.uplink_bps)
    np.testing.assert_array_equal(av_a.offset_s, av_b.offset_s)
    assert not np.array_equal(a.phone_model_index, c.phone_model_index)
    np.testing.assert_array_equal(small.phone_model_index, a.phone_model_index[:100])
    np.testing.assert_array_equal(av_small.duration_s, av_a.duration_s[:100])


def test_population_frequencies_follow_weights():
    cfg = TracesConfig(population="flash_1000")
    table, _ = build_devices(cfg, 200_000, 1, 10.0, Path("."))
    root = Path(__file__).resolve().parents[2]
    pop = pd.read_csv(root / "device_traces/population/flash_1000.csv")
    w = pop.set_index("phone_model")["weight"]
    w = w / w.sum()
    counts = np.bincount(table.phone_model_index, minlength=len(table.phone_models))
    got = pd.Series(counts / counts.sum(), index=table.phone_models)
    top = w.sort_values().index[-5:]
    np.testing.assert_allclose(got[top].to_numpy(), w[top].to_numpy(), atol=0.004)
    assert np.all(table.usable_ram_bytes == np.floor(table.ram_bytes * 0.5).astype(np.int64))


def test_network_types_and_units():
    base = Path(".")
    fixed = TracesConfig(network=NetworkConfig(type="fixed", uplink_mbps=10, mebibit=True))
    t, _ = build_devices(fixed, 3, 0, 1.0, base)
    assert np.all(t.uplink_bps == 10 * 2**20) and np.all(t.downlink_bps == 10 * 2**20)
    g5, _ = build_devices(TracesConfig(network=NetworkConfig(type="5g_mmwave")), 4000, 0, 1.0, base)
    g3, _ = build_devices(TracesConfig(network=NetworkConfig(type="hsdpa_3g")), 4000, 0, 1.0, base)
    assert np.median(g5.downlink_bps) > 50 * np.median(g3.downlink_bps)
    assert 1.0e6 < np.median(g3.downlink_bps) < 2.0e6  # HSDPA median 1.44 Mbit/s
    assert np.all(g3.uplink_bps < g3.downlink_bps)


def test_config_validation_names_keys():
    with pytest.raises(ValueError, match="traces.availability.path"):
        AvailabilityConfig(kind="intervals")
    with pytest.raises(ValueError, match="traces.availability.kind: 'bogus' is not one of"):
        AvailabilityConfig(kind="bogus")
    with pytest.raises(ValueError, match="traces.network.uplink_mbps"):
        NetworkConfig(type="fixed")
    with pytest.raises(ValueError, match="extra"):
        TracesConfig(colour="red")
    with pytest.raises(FleetsimInputError, match="traces.population: 'nowhere.csv' is neither"):
        build_devices(TracesConfig(population="nowhere.csv"), 3, 0, 1.0, Path("/tmp"))


def test_interval_file_relative_path_and_cyclic_mapping(tmp_path):
    (tmp_path / "win.csv").write_text("device_id,start_s,end_s\n5,0,10\n5,10,20\n9,100,200\n")
    cfg = TracesConfig(availability=AvailabilityConfig(kind="intervals", path="win.csv"))
    _, av = build_devices(cfg, 5, 0, 1000.0, tmp_path)
    ids = np.arange(5)
    # touching windows of device 5 merge to [0, 20); fleet devices 0,2,4 -> trace 5
    assert list(av.is_available(ids, 15.0)) == [True, False, True, False, True]
    assert av.window_end(ids[:1], 5.0)[0] == 20.0
    assert list(av.is_available(ids, 150.0)) == [False, True, False, True, False]


def test_parquet_intervals(tmp_path):
    p = tmp_path / "w.parquet"
    pd.DataFrame({"device_id": [0, 1], "start_s": [0.0, 5.0], "end_s": [3.0, 9.0]}).to_parquet(p)
    tr = load_intervals(p, 2)
    assert list(tr.is_available(np.arange(2), 6.0)) == [False, True]


def test_fedscale_loader_and_safe_unpickle(tmp_path):
    trace = {
        1: {"active": [0.0, 50.0], "inactive": [10.0, 60.0], "finish_time": 100.0, "duration": 100},
        2: {"active": [20.0], "inactive": [30.0], "finish_time": 40.0},
    }
    p = tmp_path / "client_behave_trace"
    p.write_bytes(pickle.dumps(trace, protocol=4))
    assert safe_unpickle(p) == trace
    tr = load_fedscale(p, 2, horizon_s=400.0)
    ids = np.arange(2)
    assert list(tr.is_available(ids, 55.0)) == [True, False]
    assert list(tr.is_available(ids, 155.0)) == [True, False]  # replayed modulo finish_time
    assert list(tr.is_available(ids, 65.0)) == [False, True]  # client 2: [60, 70) = 20 + 40
    # a set is a global reference in protocol 2 (builtins.set): refused too
    p2 = tmp_path / "with_set.pkl"
    p2.write_bytes(pickle.dumps({1: {1, 2}}, protocol=2))
    refused = r"pickle refers to (__builtin__|builtins).set; refused"
    with pytest.raises(FleetsimInputError, match=refused):
        safe_unpickle(p2)


def test_flash_state_traces(tmp_path):
    msgs = "\n".join(
        [
            "2019-03-01 00:00:00\tscreen_on",
            "2019-03-01 00:10:00\twifi",
            "2019-03-01 00:20:00\tbattery_charged_on",
            "2019-03-01 00:30:00\tscreen_lock",  # available from 30 min
            "2019-03-01 01:00:00\t57%",
            "2019-03-01 02:00:00\tscreen_unlock",  # until 2 h
            "2019-03-01 03:00:00\tscreen_lock",  # again from 3 h
            "2019-03-01 04:00:00\t4G",  # until 4 h (left Wi-Fi)
            "2019-03-01 10:00:00\tbattery_charged_off",
        ]
    )
    p = tmp_path / "state_traces.json"
    p.write_text(json.dumps({"u": {"guid": "g", "model": "CPH1909", "messages": msgs}}))
    tr = load_flash(p, 1, horizon_s=86400.0)
    d = np.array([0])
    hours = {0.4: False, 0.5: True, 1.9: True, 2.0: False, 3.5: True, 4.0: False}
    for h, expected in hours.items():
        assert tr.is_available(d, h * 3600.0)[0] == expected
    # the 10 h pattern repeats
    assert tr.is_available(d, 10 * 3600.0 + 0.5 * 3600.0)[0]


def test_periodic_intervals_round_trip():
    rng = np.random.default_rng(3)
    n = 200
    s = rng.uniform(0, 500, n)
    e = s + rng.uniform(1, 400, n)
    tr = IntervalAvailability(np.arange(n + 1), s, e, period_s=1000.0 / 3.0 * 3.3)
    ids = np.arange(n)
    for t in rng.uniform(0, 1e6, 30):
        ns = tr.next_start(ids, t)
        assert all(tr.is_available(ids[i : i + 1], ns[i])[0] for i in range(n))
        we = tr.window_end(ids, t)
        online = tr.is_available(ids, t)
        assert not any(tr.is_available(ids[i : i + 1], we[i])[0] for i in np.nonzero(online)[0])


def test_network_types_name_radio_technology():
    for net, radio in [
        (NetworkConfig(type="hsdpa_3g"), "hsdpa"),
        (NetworkConfig(type="5g_mmwave"), "5g"),
        (NetworkConfig(type="flash_wifi"), "wifi"),
        (NetworkConfig(type="fixed", uplink_mbps=1, radio="lte"), "lte"),
    ]:
        table, _ = build_devices(TracesConfig(network=net), 3, 0, 1.0, Path("."))
        assert table.network_types == [radio]
        assert np.all(table.network_type_index == 0)
