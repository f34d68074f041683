"""A fleet larger than its trace: replay counts said in outputs; ``replay: resample_days``
gives day-shifted copies from named streams."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fleetsim.cli import main
from fleetsim.errors import FleetsimInputError
from fleetsim.rng import stream
from fleetsim.traces.config import AvailabilityConfig, TracesConfig
from fleetsim.traces.fleet_builder import build_availability
from fleetsim.traces.replay import replay_counts, replay_note

DAY = 86400.0


def _windows(trace, i: int) -> list[tuple[float, float]]:
    a, b = trace.offsets[i], trace.offsets[i + 1]
    return list(zip(trace.starts[a:b].tolist(), trace.ends[a:b].tolist()))


def _csv(tmp_path, text: str):
    path = tmp_path / "w.csv"
    path.write_text("device_id,start_s,end_s\n" + text)
    return path


THREE = "0,3600,7200\n0,90000,93600\n5,40000,50000\n9,150000,160000\n"


def _load(tmp_path, n, replay="repeat", period=None, seed=3):
    path = _csv(tmp_path, THREE)
    cfg = TracesConfig(availability=AvailabilityConfig(
        kind="intervals", path=str(path), period_s=period, replay=replay))
    return build_availability(cfg, n, seed, 4 * DAY, tmp_path)


def test_replay_counts_by_hand():
    assert replay_counts(7, 3).tolist() == [3, 2, 2]
    assert replay_counts(6, 3).tolist() == [2, 2, 2]
    assert replay_counts(2, 3).tolist() == [1, 1, 0]
    assert replay_note(7, 3) == (
        "fleet of 7 devices on 3 trace devices: each trace device replayed 2 or 3 times "
        "(1 of them 3 times); copies churn together (correlated churn; replay: "
        "resample_days shifts them by whole days)")


def test_repeat_counts_match_the_fleet_windows(tmp_path, capsys):
    trace = _load(tmp_path, 7)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fleetsim: note: " + replay_note(7, 3)]
    assert replay_note(7, 3) in trace.label
    # count, from the windows themselves, how many fleet devices replay each trace device
    trace_windows = [_windows(trace, j) for j in range(3)]
    counted = [sum(_windows(trace, i) == w for i in range(7)) for w in trace_windows]
    assert counted == trace.replay_counts.tolist() == [3, 2, 2]


def test_no_note_when_the_trace_is_large_enough(tmp_path, capsys):
    trace = _load(tmp_path, 3)
    assert capsys.readouterr().err == ""
    assert "replayed" not in trace.label


@pytest.mark.parametrize("period", [2 * DAY, None])
def test_resample_days_gives_day_shifted_copies(tmp_path, capsys, period):
    n, m, seed = 40, 3, 3
    trace = _load(tmp_path, n, "resample_days", period, seed)
    capsys.readouterr()
    base = _load(tmp_path, m, "repeat", period, seed)  # the trace devices as they are
    # cycle: the period, or the trace's span (last end 160,000 s) in whole days = 2 days
    cycle, days = (2 * DAY, 2)
    src = stream(seed, "availability", "replay", "trace_device").integers(m, size=n)
    shift = stream(seed, "availability", "replay", "day_shift").integers(days, size=n)
    src[:m], shift[:m] = np.arange(m), 0
    assert trace.replay_source.tolist() == src.tolist()
    assert trace.replay_day_shift.tolist() == shift.tolist()
    assert set(shift[m:].tolist()) == {0, 1}  # both shifts occur among 37 draws
    for i in range(m):
        assert _windows(trace, i) == _windows(base, i)
    # device i at t is trace device src[i] at t - shift[i] days (wrapping at the cycle)
    times = np.arange(0.0, 2 * DAY, 600.0) + 1.0
    for i in range(n):
        want = [base.is_available(np.array([src[i]]), (t - shift[i] * DAY) % cycle)[0]
                for t in times]
        got = [trace.is_available(np.array([i]), t)[0] for t in times]
        assert got == want, i
    assert trace.period_s == period
    used = np.bincount(src, minlength=m)
    assert (f"trace devices used {used.min()} to {used.max()} times") in trace.label


def test_resample_days_draws_do_not_depend_on_fleet_size(tmp_path, capsys):
    a = _load(tmp_path, 20, "resample_days", 2 * DAY)
    b = _load(tmp_path, 30, "resample_days", 2 * DAY)
    capsys.readouterr()
    for i in range(20):
        assert _windows(a, i) == _windows(b, i)


def test_resample_days_refused_for_a_model(tmp_path):
    cfg = TracesConfig(availability=AvailabilityConfig(kind="diurnal_model",
                                                       replay="resample_days"))
    with pytest.raises(FleetsimInputError, match="traces.availability.replay: "
                       "'resample_days' applies to traces replayed device by device"):
        build_availability(cfg, 5, 0, DAY, tmp_path)


NOTE = ("fleet of 5 devices on 2 trace devices: each trace device replayed 2 or 3 times "
        "(1 of them 3 times)")


def _scenario(tmp_path):
    _csv(tmp_path, "0,3600,7200\n7,1800,5400\n")
    (tmp_path / "s.yaml").write_text(
        "fleet: {size: 5}\n"
        "traces:\n"
        "  availability: {kind: intervals, path: w.csv, period_s: 86400}\n"
        "  network: {type: fixed, uplink_mbps: 10}\n"
        "numerics: {engine: none}\n"
        "model: {name_or_path: tiny-bert, max_seq_len: 16}\n"
        "data: {name: bbc_news, max_examples: 200, max_eval_examples: 40}\n"
        "protocol: {devices_per_step: 2, rounds: 1, batches_per_round: 2}\n"
        "run: {name: replay, max_sim_hours: 24, progress: false}\n")
    return tmp_path / "s.yaml"


def test_validate_says_the_replay(tmp_path, capsys):
    assert main(["validate", str(_scenario(tmp_path))]) == 0
    io = capsys.readouterr()
    assert NOTE in io.out and NOTE in io.err


@pytest.mark.slow  # a whole (systems-only) run
def test_run_says_the_replay_and_summary_labels_it(tmp_path, capsys):
    _scenario(tmp_path)
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert NOTE in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert NOTE in summary["availability_label"]
