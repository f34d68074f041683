"""Figures are checked for the series they should contain, not only for existing."""

import numpy as np
import pytest

from fleetsim.analysis.figures.convergence import median_band
from fleetsim.analysis.load import load_runs
from fleetsim.analysis.metrics import BREAKDOWN_PARTS, step_breakdown, utilisation
from fleetsim.analysis.plots import (
    TIMELINE_STATES,
    breakdown_figure,
    convergence_figure,
    device_spans,
    sample_devices,
    timeline_figure,
    utilisation_figure,
)
from fleetsim.errors import FleetsimInputError


def _lines(ax):
    return [line for line in ax.get_lines() if line.get_gid() not in (None, "target")]


def test_convergence_draws_group_medians_not_seeds(make_run, tmp_path) -> None:
    """Issue 24: a group of seeds is one median line with a quartile band; a group of one
    run is that run's line; legends in words with the run count; the target is named."""
    dirs = [
        make_run(name="v2-s0", seed=0, units_per_device=2, accuracies=(0.3, 0.5, 0.45, 0.7)),
        make_run(name="v2-s1", seed=1, units_per_device=2, accuracies=(0.1, 0.7, 0.5, 0.9)),
        make_run(name="v2-s2", seed=2, units_per_device=2, accuracies=(0.2, 0.6, 0.4, 0.8)),
        make_run(name="v5-s0", seed=0, units_per_device=5, accuracies=(0.2, 0.4, 0.8)),
    ]
    runs = load_runs(dirs)
    path = tmp_path / "curves.png"
    figure = convergence_figure(
        runs, by="protocol.perturbations_per_device", targets=[0.6], path=path
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    accuracy_ax, loss_ax = figure.axes
    assert accuracy_ax.get_ylabel() == "held-out accuracy"
    assert loss_ax.get_ylabel() == "training loss"
    assert sorted(line.get_gid() for line in _lines(accuracy_ax)) == ["median:2", "v5-s0"]
    _handles, labels = accuracy_ax.get_legend_handles_labels()
    assert labels == [
        "v = 2 perturbations per device: median of 3 runs, band: quartiles",
        "v = 5 perturbations per device",
        "target 0.6",
    ]
    # the three seeds share one schedule (commits at 13, 26, 39, 52 s): the median by hand
    median = next(line for line in _lines(accuracy_ax) if line.get_gid() == "median:2")
    # then held at its last value to the runs' common end (62 s)
    np.testing.assert_allclose(median.get_xdata(),
                               np.array([13.0, 26.0, 39.0, 52.0, 62.0]) / 3600)
    np.testing.assert_allclose(median.get_ydata(), [0.2, 0.6, 0.45, 0.8, 0.8])
    assert [c.get_gid() for c in accuracy_ax.collections] == ["band:2"]
    # one colour per group
    v5 = next(line for line in _lines(accuracy_ax) if line.get_gid() == "v5-s0")
    assert median.get_color() != v5.get_color()
    np.testing.assert_allclose(v5.get_ydata(), [0.2, 0.4, 0.8])
    np.testing.assert_allclose(v5.get_xdata(), np.array([13.0, 26.0, 39.0]) / 3600)
    targets = [line for line in accuracy_ax.get_lines() if line.get_gid() == "target"]
    assert [line.get_label() for line in targets] == ["target 0.6"]
    assert targets[0].get_ydata()[0] == 0.6
    # panels share the x range, which starts at t = 0
    assert accuracy_ax.get_xlim() == loss_ax.get_xlim() and accuracy_ax.get_xlim()[0] == 0.0


def test_median_band_by_hand() -> None:
    """Runs end at different x: each counts up to its own end (last value carried, never
    extended), points covered by fewer than half of the runs are left out."""
    curves = [
        (np.array([0.0, 10.0, 20.0]), np.array([0.1, 0.5, 0.9])),
        (np.array([0.0, 15.0]), np.array([0.2, 0.6])),
        (np.array([0.0, 5.0, 30.0]), np.array([0.3, 0.4, 0.7])),
    ]
    grid, median, low, high = median_band(curves)
    np.testing.assert_allclose(grid, [0, 5, 10, 15, 20])  # 30: only one run of three
    np.testing.assert_allclose(median, [0.2, 0.2, 0.4, 0.5, 0.65])
    # quartiles (linear): at 0 of (.1, .2, .3) → .15, .25; at 20 of (.9, .4) → .525, .775
    np.testing.assert_allclose(low, [0.15, 0.15, 0.3, 0.45, 0.525])
    np.testing.assert_allclose(high, [0.25, 0.3, 0.45, 0.55, 0.775])


def test_convergence_x_axes(make_run) -> None:
    runs = load_runs([make_run(name="a", repeat_steps=(1,))])
    summary = runs.summary.iloc[0]

    def xdata(x: str) -> np.ndarray:
        figure = convergence_figure(runs, x=x, metrics=("accuracy",))
        return _lines(figure.axes[0])[0].get_xdata()

    np.testing.assert_allclose(xdata("steps"), [1, 2, 3, 4])
    # perturbations of committed rows: 6, 12 (repeat: cumulative over attempts), 6, 6
    np.testing.assert_allclose(xdata("perturbations"), [6, 18, 24, 30])
    assert xdata("bytes")[-1] == pytest.approx((summary["bytes_up"] + summary["bytes_down"]) / 1e6)
    # energy is spread over busy spans; all of it is spent by the last upload
    energy = xdata("energy")
    assert energy[-1] == pytest.approx(summary["energy_j"] / 1e3)
    assert np.all(np.diff(energy) > 0)
    hours = xdata("hours")
    np.testing.assert_allclose(xdata("minutes"), hours * 60.0)
    np.testing.assert_allclose(xdata("seconds"), hours * 3600.0)
    with pytest.raises(FleetsimInputError, match="hours, minutes, seconds, steps"):
        convergence_figure(runs, x="days")


def test_time_axis_reads_in_the_run_s_unit() -> None:
    # issue 24 (seen in a browser): a 69 s run was drawn on ticks of 0.0025 h
    from fleetsim.analysis.figures.convergence import time_axis_for

    assert time_axis_for(69.0) == "seconds"
    assert time_axis_for(600.0) == "minutes"
    assert time_axis_for(4 * 3600.0) == "hours"


def test_systems_only_curves_show_progress(make_run) -> None:
    runs = load_runs([make_run(name="s", accuracies=None)])
    figure = convergence_figure(runs)
    (ax,) = figure.axes
    assert ax.get_ylabel() == "committed steps"
    # issue 24: the progress curve starts at t = 0 with no step committed
    np.testing.assert_allclose(_lines(ax)[0].get_ydata(), [0, 1, 2, 3, 4])
    assert _lines(ax)[0].get_xdata()[0] == 0.0


def test_timeline_has_states_and_step_boundaries(make_run) -> None:
    runs = load_runs([make_run(name="a", repeat_steps=(1,), offline_device=2, offline_step=2)])
    figure = timeline_figure(runs)
    (ax,) = figure.axes
    states = {c.get_gid() for c in ax.collections}
    assert {
        "available",
        "offline",
        "interrupted",
        "download",
        "compute",
        "upload",
        "step_commit",
        "step_rollback",
    } <= states
    commits = next(c for c in ax.collections if c.get_gid() == "step_commit")
    assert len(commits.get_segments()) == 4
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[: len(TIMELINE_STATES)] == list(TIMELINE_STATES)
    # issue 24: the phone model beside each device
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "device 0 (pixel7)", "device 1 (pixel7)", "device 2 (galaxy_a14)"]


def test_device_spans_by_hand(make_run) -> None:
    runs = load_runs([make_run(name="a", offline_device=2, offline_step=2)])
    spans = device_spans(runs.events, horizon_s=67.0)
    mine = spans[spans["device_id"] == 2]
    # step 2 starts at 26 s: download 26-28, offline 28-33, compute 33-43, upload 43-44
    assert mine[mine["state"] == "offline"][["start_s", "end_s"]].values.tolist() == [[28, 33]]
    assert mine[mine["state"] == "interrupted"][["start_s", "end_s"]].values.tolist() == [[28, 33]]
    assert mine[mine["state"] == "available"][["start_s", "end_s"]].values.tolist() == [
        [0, 28],
        [33, 67],
    ]
    assert [33.0, 43.0] in mine[mine["state"] == "compute"][["start_s", "end_s"]].values.tolist()


def test_device_sample_is_seeded_and_bounded(make_run) -> None:
    devices = tuple(("pixel7", "npu", 1.0 + i) for i in range(20))
    runs = load_runs([make_run(name="a", devices=devices, accuracies=(0.5,))])
    first = sample_devices(runs.events, 6, seed=3)
    assert first == sample_devices(runs.events, 6, seed=3)
    assert len(first) == 6 and first == sorted(first)
    assert first != sample_devices(runs.events, 6, seed=4)
    figure = timeline_figure(runs, sample=6, seed=3)
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == [f"device {d} (pixel7)" for d in first]


def test_utilisation_and_breakdown_bars(make_run) -> None:
    runs = load_runs([make_run(name="a", offline_device=2, offline_step=2)])
    figure = utilisation_figure(utilisation(runs))
    assert [ax.get_title() for ax in figure.axes] == [
        "share of device-time, per fleet",
        "share of device-time, per phone model",
        "share of device-time, per backend",
    ]
    backend_ax = figure.axes[2]
    assert [t.get_text() for t in backend_ax.get_yticklabels()] == ["cpu", "npu"]
    widths: dict[float, float] = {}
    for patch in backend_ax.patches:
        widths[patch.get_y()] = widths.get(patch.get_y(), 0.0) + patch.get_width()
    # issue 24: shares in percent (these were 1.0 and 5/67 as fractions)
    np.testing.assert_allclose(list(widths.values()), 100.0)
    offline = [p for p in backend_ax.patches if p.get_gid() == "offline"]
    assert max(p.get_width() for p in offline) == pytest.approx(500.0 / 67.0)
    assert backend_ax.get_xlim() == (0.0, 100.0)
    assert all(ax.get_xlim() == (0.0, 100.0) for ax in figure.axes)  # shared range

    breakdown = step_breakdown(runs.events, runs.steps)
    figure = breakdown_figure(breakdown)
    step_ax, share_ax = figure.axes
    parts = {p.get_gid() for p in step_ax.patches}
    assert parts == set(BREAKDOWN_PARTS)
    compute = [p.get_height() for p in step_ax.patches if p.get_gid() == "compute"]
    assert compute == [6.0, 6.0, 6.0, 6.0]
    assert sum(p.get_width() for p in share_ax.patches) == pytest.approx(100.0)
    assert share_ax.get_xlabel() == "share of step time (%)"


def test_long_runs_draw_stacked_areas(make_run) -> None:
    runs = load_runs([make_run(name="long", devices=(("p", "cpu", 1.0),), accuracies=[0.5] * 90)])
    figure = breakdown_figure(step_breakdown(runs.events, runs.steps))
    step_ax = figure.axes[0]
    assert [c.get_gid() for c in step_ax.collections] == list(BREAKDOWN_PARTS)
    assert not step_ax.patches


def test_interrupted_download_is_split_around_the_pause(make_run) -> None:
    runs = load_runs(
        [make_run(name="a", offline_device=2, offline_step=1, offline_phase="download")]
    )
    spans = device_spans(runs.events, horizon_s=100.0)
    mine = spans[spans["device_id"] == 2]
    # step 1 starts at 13 s: download 13-14, offline 14-19, download 19-20, compute 20-30
    downloads = mine[mine["state"] == "download"][["start_s", "end_s"]].values.tolist()
    assert [13.0, 14.0] in downloads and [19.0, 20.0] in downloads
    assert mine[mine["state"] == "interrupted"][["start_s", "end_s"]].values.tolist() == [
        [14.0, 19.0]
    ]
    breakdown = step_breakdown(runs.events, runs.steps, reference="last").set_index("step")
    step = breakdown.loc[1]
    assert (step["download"], step["compute"], step["upload"], step["other"]) == (2, 10, 1, 5)


def test_unrecorded_availability_is_not_invented(make_run) -> None:
    runs = load_runs(
        [make_run(name="a", offline_device=2, offline_step=1, record_availability=False)]
    )
    figure = timeline_figure(runs)
    (ax,) = figure.axes
    states = {c.get_gid() for c in ax.collections}
    assert "available" not in states and "offline" not in states
    assert "interrupted" in states
    assert "availability not recorded" in ax.get_title()
    # an always-online run without transitions is available throughout
    runs = load_runs([make_run(name="b")])
    spans = device_spans(runs.events, horizon_s=62.0, always_online=True)
    available = spans[spans["state"] == "available"]
    assert available[["start_s", "end_s"]].drop_duplicates().values.tolist() == [[0.0, 62.0]]


def test_interruption_without_resume_is_a_marker(make_run) -> None:
    import pandas as pd

    run = make_run(name="a", offline_device=1, offline_step=0)
    events = pd.read_parquet(run / "events.parquet")
    events[events["kind"] != "resumed"].to_parquet(run / "events.parquet")
    runs = load_runs([run])
    spans = device_spans(runs.events)
    lost = spans[spans["state"] == "interruption"]
    assert lost[["device_id", "start_s", "end_s"]].values.tolist() == [[1, 2.0, 2.0]]
    (ax,) = timeline_figure(runs).axes
    markers = [line for line in ax.get_lines() if line.get_gid() == "interruption"]
    assert len(markers) == 1 and list(markers[0].get_xdata()) == [2.0]


def test_stacked_step_bars_keep_headroom(make_run) -> None:
    # issue 24 (seen in a browser): zero-height parts stacked on top put the axis' sticky
    # edge at the tallest bar, so the tallest bars touched the frame and read as clipped
    from fleetsim.analysis.figures.breakdown import grouped_breakdown_figure

    runs = load_runs([make_run(name="h", devices=(("p", "cpu", 1.0),), accuracies=[0.5] * 4)])
    breakdown = step_breakdown(runs.events, runs.steps)
    tallest = float(breakdown[list(BREAKDOWN_PARTS)].sum(axis=1).max())
    step_ax = breakdown_figure(breakdown).axes[0]
    assert step_ax.get_ylim()[1] > tallest * 1.03
    tops = [p.get_y() + p.get_height() for p in step_ax.patches]
    assert max(tops) == pytest.approx(tallest)
    grouped = grouped_breakdown_figure(breakdown, {"h": "a"}, by="policy.name").axes[0]
    assert grouped.get_ylim()[1] > tallest * 1.03
    long = load_runs([make_run(name="l", devices=(("p", "cpu", 1.0),), accuracies=[0.5] * 90)])
    long_breakdown = step_breakdown(long.events, long.steps)
    area_ax = breakdown_figure(long_breakdown).axes[0]
    assert area_ax.get_ylim()[1] > float(
        long_breakdown[list(BREAKDOWN_PARTS)].sum(axis=1).max()) * 1.03


def test_share_panels_have_no_empty_rows(make_run) -> None:
    # issue 24 (seen in a browser): a panel of 60+ phone models had several empty bar rows
    # above and below it (matplotlib's 5 % margin)
    runs = load_runs([make_run(name="rows", devices=(("a", "cpu", 1.0), ("b", "npu", 2.0),
                                                     ("c", "cpu", 3.0)))])
    figure = utilisation_figure(utilisation(runs))
    for ax in figure.axes:
        rows = len(ax.get_yticks())
        assert ax.get_ylim() == (rows - 0.5, -0.5)


def test_group_median_holds_each_run_to_its_end(make_run) -> None:
    # found by a new-user trial: a run's curve stopped at its last commit, so the median of
    # committed steps fell at the end as the shorter run dropped out of the grid
    import json

    long = make_run(name="long", seed=0, accuracies=[0.2, 0.3, 0.4, 0.5],
                    extra_params={"policy.name": "uniform"})
    short = make_run(name="short", seed=1, accuracies=[0.2, 0.3],
                     extra_params={"policy.name": "uniform"})
    ends = []
    for run in (long, short):
        ends.append(json.loads((run / "summary.json").read_text())["simulated_seconds"])
    for run in (long, short):  # both runs end at the same simulated time
        summary = json.loads((run / "summary.json").read_text())
        summary["simulated_seconds"] = max(ends) + 10.0
        (run / "summary.json").write_text(json.dumps(summary))
    figure = convergence_figure(load_runs([long, short]), x="seconds", by="policy.name",
                                metrics=("steps",))
    (median,) = [ln for ln in figure.axes[0].get_lines() if ln.get_gid() == "median:uniform"]
    ys = np.asarray(median.get_ydata(), dtype=float)
    assert np.all(np.diff(ys) >= 0)
    assert ys[-1] == pytest.approx(3.0)  # the median of 4 and 2 committed steps
    assert median.get_xdata()[-1] == pytest.approx(max(ends) + 10.0)
