"""flash_windows format: every real-data quirk on small hand-made files; the empirical model's
day shifts, seeding and wrap-around; the diurnal_windows fit; `traces sample` and overlay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetsim.cli import main as cli_main
from fleetsim.errors import FleetsimInputError
from fleetsim.traces.config import AvailabilityConfig, TracesConfig
from fleetsim.traces.fleet_builder import build_availability
from fleetsim.traces.formats.common import DAY_S
from fleetsim.traces.formats.diurnal_windows import fit_windows_model, load_params, sample_windows
from fleetsim.traces.formats.empirical import measured_model
from fleetsim.traces.formats.flash_windows import (
    clean_windows,
    hourly_online_share,
    read_flash_windows,
)
from fleetsim.traces.registry import detect_format
from fleetsim.traces.sample import trace_windows

H = 3600.0


def _write(tmp_path: Path, obj, name: str = "ready.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj, indent=1))
    return p


def test_quirks_are_cleaned_and_counted(tmp_path):
    users = {
        "a": [[1000.0, 2000.0], [2030.0, 3000.0], [1000.0, 2000.0], [5000.0, 5000.0]],
        "b": [[90000.0, 95000.0], [94000.0, 96000.0], [97000.0, 96990.0]],
        "c": [],
        "d": [[-2.0e8, -2.0e8 + 50.0], [40000.0, 41000.0]],  # wrong clock
        "e": [[7000.0, 7000.0]],  # only a zero-length interval: no window left
        "f": [[170000.0, 180000.0]],
    }
    # observed_day_min_share 0: every day of the file is observed (the edge rule has its own
    # test below)
    m = read_flash_windows(_write(tmp_path, users), merge_gap_s=60.0, observed_day_min_share=0.0)
    q = m.quirks
    assert q["users_in_file"] == 6
    assert q["zero_length_dropped"] == 2
    assert q["reversed_dropped"] == 1
    assert q["duplicates_dropped"] == 1
    assert q["users_wrong_clock_skipped"] == 1
    assert q["overlaps_merged"] == 1  # b's two overlapping intervals
    assert q["gaps_merged"] == 1  # a's 30-s gap
    assert q["users_empty_skipped"] == 2  # c and e
    assert m.user_ids == ["a", "b", "f"]
    got = sorted(zip(m.device.tolist(), m.start.tolist(), m.end.tolist()))
    assert got == [(0, 1000.0, 3000.0), (1, 90000.0, 96000.0), (2, 170000.0, 180000.0)]
    assert (m.span_start_s, m.span_days) == (0.0, 2)  # f starts on day 1, ends on day 2
    # the gap setting: 0 keeps a's two windows apart
    assert len(read_flash_windows(_write(tmp_path, users), merge_gap_s=0.0,
                                  observed_day_min_share=0.0).start) == 4


def test_clock_tolerance_and_span(tmp_path):
    # starts on days 0, 1 and 3: with a tolerance of one empty day, day 3 belongs to the span
    users = {
        "a": [[100.0, 200.0]],
        "b": [[DAY_S + 10, DAY_S + 20]],
        "c": [[3 * DAY_S, 3 * DAY_S + 5]],
    }
    m = read_flash_windows(_write(tmp_path, users), clock_tolerance_days=1.0,
                           observed_day_min_share=0.0)
    assert m.span_days == 4 and m.quirks["users_wrong_clock_skipped"] == 0
    m0 = read_flash_windows(_write(tmp_path, users), clock_tolerance_days=0.0,
                            observed_day_min_share=0.0)
    assert m0.span_days == 2 and m0.quirks["users_wrong_clock_skipped"] == 1
    # a window ending more than the tolerance after the span is a wrong clock too
    users["d"] = [[DAY_S, 9 * DAY_S]]
    assert read_flash_windows(_write(tmp_path, users)).quirks["users_wrong_clock_skipped"] == 1


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "file is empty"),
        ("{not json", "line 1: not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{\n"u1": [[1, 2]],\n"u2": [[1, "x"]]\n}', "line 3: user 'u2'"),
        ('{"u1": [[1, 2, 3]]}', "pairs of finite numbers"),
        ('{"u1": [[0, 0]]}', "no user has a usable window"),
    ],
)
def test_malformed_files_raise_one_line(tmp_path, text, needle):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(FleetsimInputError, match=needle) as err:
        read_flash_windows(p)
    assert "\n" not in str(err.value) and "bad.json" in str(err.value)


def test_detected_by_content_and_validated_by_cli(tmp_path, capsys):
    p = _write(tmp_path, {"a": [[100.0, 4000.0]], "b": [[50000.0, 52000.0]]}, "windows.dat")
    assert detect_format(p) == "flash_windows"
    state = _write(tmp_path, {"u": {"messages": "2018-03-06 00:00:01\tscreen_on"}}, "st.json")
    assert detect_format(state) == "flash"
    assert cli_main(["traces", "validate", str(p)]) == 0
    out = capsys.readouterr().out
    assert "valid flash_windows trace" in out and "users_kept=2" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"u": [[1, "x"]]}')
    assert cli_main(["traces", "validate", str(bad), "--format", "flash_windows"]) == 2


def _measured(tmp_path) -> object:
    rng = np.random.default_rng(5)
    users = {}
    for u in range(12):
        s = np.sort(rng.uniform(0, 3 * DAY_S, 4))
        users[f"u{u:02d}"] = [[float(a), float(a + rng.uniform(60, 20000))] for a in s]
    users["u00"].append([3 * DAY_S - 3600.0, 3 * DAY_S + 7200.0])  # crosses the span's end
    return clean_windows({k: np.asarray(v) for k, v in users.items()}, "hand-made")


def test_empirical_keeps_time_of_day_and_is_seeded(tmp_path):
    from fleetsim.rng import stream

    m = _measured(tmp_path)
    tr = measured_model(m, 50, seed=3)
    tr2 = measured_model(m, 50, seed=3)
    assert np.array_equal(tr.starts, tr2.starts) and np.array_equal(tr.offsets, tr2.offsets)
    assert not np.array_equal(measured_model(m, 50, seed=4).starts, tr.starts)
    # device i's schedule does not depend on the fleet size
    small = measured_model(m, 10, seed=3)
    assert np.array_equal(small.starts, tr.starts[: small.offsets[-1]])
    # each device = its drawn user's windows moved by its drawn whole number of days
    user = stream(3, "availability", "empirical", "user").integers(m.num_users, size=50)
    day = stream(3, "availability", "empirical", "day_shift").integers(m.span_days, size=50)
    assert len(set(day.tolist())) > 1
    for i in range(50):
        lo, hi = tr.offsets[i], tr.offsets[i + 1]
        s = m.start[m.device == user[i]] - m.span_start_s + day[i] * DAY_S
        e = m.end[m.device == user[i]] - m.span_start_s + day[i] * DAY_S
        # time of day kept: a window not starting at the period's start starts at a measured
        # user's start hour (the shift is whole days)
        mine = tr.starts[lo:hi]
        tod = np.mod(s, DAY_S)
        assert all(np.isclose(tod, x).any() for x in np.mod(mine[mine > 0], DAY_S))
        # online time per period: a grid over the period tested against the user's shifted
        # windows modulo the period (t is online when (t - s) mod P < length)
        grid = np.arange(0.0, m.period_s, 60.0) + 30.0
        inside = (np.mod(grid[:, None] - s[None, :], m.period_s) < (e - s)[None, :]).any(axis=1)
        got = (tr.ends[lo:hi] - mine).sum()
        assert got == pytest.approx(inside.sum() * 60.0, abs=2 * 60.0 * (hi - lo + len(s)))


def test_window_crossing_the_span_wraps_as_one_window(tmp_path):
    m = _measured(tmp_path)
    tr = measured_model(m, m.num_users, 0, resample=False)
    u0 = m.user_ids.index("u00")
    t = 3 * DAY_S - 1800.0 - m.span_start_s  # inside the crossing window, before the end
    assert tr.is_available(np.array([u0]), t)[0]
    assert tr.window_end(np.array([u0]), t)[0] == pytest.approx(3 * DAY_S + 7200.0)
    assert tr.is_available(np.array([u0]), 7000.0)[0]  # the wrapped piece, next period


def test_hourly_share_exact_against_a_grid():
    dev = np.array([0, 0, 1])
    s = np.array([0.5 * H, 23.5 * H, 10 * H])
    e = np.array([2.25 * H, 26.0 * H, 10.5 * H])
    share = hourly_online_share(dev, s, e, 2, 0.0, 2 * DAY_S)
    grid = np.arange(0, 2 * DAY_S, 10.0) + 5.0
    online = ((grid[None, :] >= s[:, None]) & (grid[None, :] < e[:, None])).sum(axis=0) / 2.0
    by_hour = pd.Series(online).groupby((np.mod(grid, DAY_S) // H).astype(int)).mean()
    assert np.allclose(share, by_hour.to_numpy(), atol=1e-3)


def test_diurnal_windows_fit_recovers_its_own_parameters():
    params = load_params()
    d, s, e = sample_windows(params, 250, seed=11)
    synth = clean_windows(
        {f"u{i:04d}": np.column_stack([s[d == i], e[d == i]]) for i in range(250)},
        "synthetic",
        merge_gap_s=0.0,
        clock_tolerance_days=10.0,
    )
    fit = fit_windows_model(synth)
    # windows per user: mean of the zero-truncated NB, recomputed from the fit
    from scipy import stats

    def zt_mean(p):
        return stats.nbinom.mean(p["nb_r"], p["nb_p"]) / (
            1 - stats.nbinom.pmf(0, p["nb_r"], p["nb_p"])
        )

    assert zt_mean(fit) == pytest.approx(np.bincount(synth.device).mean(), rel=0.1)
    assert fit["mu"][1] == pytest.approx(params["mu"][1], abs=0.3)
    assert fit["mu"][2] == pytest.approx(params["mu"][2], abs=0.3)


def test_scenario_kinds_build(tmp_path):
    p = _write(tmp_path, {"a": [[3600.0, 7200.0]], "b": [[0.5 * DAY_S, 0.6 * DAY_S]]})
    for kind, path in (("empirical", str(p)), ("flash_windows", str(p)), ("diurnal_windows", None)):
        cfg = TracesConfig(availability=AvailabilityConfig(kind=kind, path=path))
        tr = build_availability(cfg, 20, 0, 7 * DAY_S, tmp_path)
        assert tr.num_devices == 20 and tr.period_s
        assert ("empirical" in tr.label) == (kind == "empirical")
        assert (p.name in tr.label) or kind == "diurnal_windows"
    cfg = TracesConfig(
        availability=AvailabilityConfig(kind="empirical", path=str(p), wifi_share=0.0)
    )
    assert build_availability(cfg, 20, 0, DAY_S, tmp_path).offsets[-1] == 0


def test_sample_csv_matches_the_model(tmp_path, capsys):
    scen = tmp_path / "s.yaml"
    scen.write_text(
        "fleet: {size: 20}\ntraces:\n  availability: {kind: diurnal_model}\n"
        "numerics: {engine: none}\nrun: {seed: 7}\n"
    )
    out = tmp_path / "w.csv"
    assert (
        cli_main(
            ["traces", "sample", str(scen), "--devices", "30", "--hours", "72", "--out", str(out)]
        )
        == 0
    )
    assert "windows of 30 devices" in capsys.readouterr().out
    df = pd.read_csv(out)
    from fleetsim.traces.formats.diurnal_model import diurnal_model

    tr = diurnal_model(30, 7)  # closed form: [offset + kP, offset + kP + duration)
    rows = []
    for i in range(30):
        a, d = tr.offset_s[i], tr.duration_s[i]
        for k in range(-1, 4):
            s, e = max(a + (k * DAY_S), 0.0), min(a + k * DAY_S + d, 72 * H)
            if d > 0 and e > s:
                rows.append((i, s, e))
    expected = pd.DataFrame(rows, columns=["device_id", "start_s", "end_s"])
    assert len(df) == len(expected)
    assert np.allclose(
        df[["start_s", "end_s"]].to_numpy(), expected[["start_s", "end_s"]].to_numpy(), atol=1e-2
    )


def test_trace_windows_join_a_wrapped_window(tmp_path):
    m = _measured(tmp_path)
    tr = measured_model(m, m.num_users, 0, resample=False)
    df = trace_windows(tr, 2 * m.period_s)
    u0 = m.user_ids.index("u00")
    mine = df[df["device_id"] == u0]
    # the window crossing the period end is one row [3d - 1h, 3d + 2h) shifted by the span start
    s = 3 * DAY_S - 3600.0 - m.span_start_s
    assert ((mine["start_s"] - s).abs() < 1e-6).any()
    assert float(mine.loc[(mine["start_s"] - s).abs() < 1e-6, "end_s"].iloc[0]) == pytest.approx(
        s + 3 * H
    )


def test_overlay_png(tmp_path, capsys):
    p = _write(tmp_path, {"a": [[3600.0, 7200.0], [DAY_S, DAY_S + 600]], "b": [[40000.0, 43600.0]]})
    csv = tmp_path / "model.csv"
    pd.DataFrame(
        {"device_id": [0, 1], "start_s": [3600.0, 40000.0], "end_s": [7200.0, 43600.0]}
    ).to_csv(csv, index=False)
    assert (
        cli_main(["traces", "inspect", str(p), "--overlay", str(csv), "--out", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "ks_window_length" in out and (tmp_path / "ready_vs_model.png").stat().st_size > 5000
