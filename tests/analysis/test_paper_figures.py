"""Issue 24, point 3: figures fit for a paper.  Each property is read back from the
matplotlib objects (titles, legends, axes, limits, scales) or from the written files."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree

import numpy as np
import pandas as pd
import pytest

from fleetsim.analysis.figures.common import group_words, models_line, parse_formats
from fleetsim.analysis.load import load_runs
from fleetsim.analysis.metrics import step_breakdown, utilisation
from fleetsim.analysis.plots import (
    breakdown_figure,
    convergence_figure,
    grouped_breakdown_figure,
    time_to_accuracy_figure,
    timeline_figure,
    utilisation_figure,
)
from fleetsim.cli import main
from fleetsim.errors import FleetsimInputError
from fleetsim.traces.inspect import inspect_figure, inspect_trace_file
from fleetsim.traces.tables import CATALOGUES, DATA_DIR

TWO_MODELS = "phones charged for bert-base; learning signal from tiny-bert"


def _suptitle(figure) -> str:
    return figure._suptitle.get_text() if figure._suptitle is not None else ""


def _two_model_runs(make_run, **kwargs):
    extra = {"model_label": TWO_MODELS, "charged_model": "bert-base",
             "learning_model": "tiny-bert", "method": "FwdLLM"}
    return load_runs([make_run(name="a", summary_extra=extra, initial_accuracy=0.1,
                               offline_device=2, offline_step=2, **kwargs)])


def test_every_figure_names_both_models(make_run) -> None:
    runs = _two_model_runs(make_run)
    breakdown = step_breakdown(runs.events, runs.steps)
    figures = {
        "convergence": convergence_figure(runs),
        "progress": convergence_figure(runs, metrics=("steps",)),
        "timeline": timeline_figure(runs),
        "utilisation": utilisation_figure(utilisation(runs), summary=runs.summary),
        "breakdown": breakdown_figure(breakdown, summary=runs.summary),
        "grouped breakdown": grouped_breakdown_figure(
            breakdown, {"a": "fwdllm"}, "protocol.name", summary=runs.summary),
    }
    for name, figure in figures.items():
        assert _suptitle(figure).endswith("\n" + TWO_MODELS), name


def test_models_line_one_model_and_older_runs() -> None:
    same = pd.DataFrame({"charged_model": ["tiny-bert"], "learning_model": ["tiny-bert"]})
    assert models_line(same) == "tiny-bert"
    both = pd.DataFrame({"charged_model": ["bert-base"], "learning_model": ["tiny-bert"]})
    assert models_line(both) == TWO_MODELS
    older = pd.DataFrame({"model": ["all-minilm-l6-v2"]})  # summary.json before issue 24.1
    assert models_line(older) == "all-minilm-l6-v2"
    several = pd.DataFrame({"model_label": ["x", "y", "x"]})
    assert models_line(several) == "x | y"


def test_accuracy_curve_starts_at_the_initial_evaluation(make_run) -> None:
    runs = _two_model_runs(make_run)
    figure = convergence_figure(runs, targets=[0.5, 0.68])
    accuracy_ax, loss_ax = figure.axes
    (line,) = [ln for ln in accuracy_ax.get_lines() if ln.get_gid() == "a"]
    assert line.get_xdata()[0] == 0.0 and line.get_ydata()[0] == pytest.approx(0.1)
    np.testing.assert_allclose(line.get_ydata(), [0.1, 0.3, 0.5, 0.45, 0.7])
    assert accuracy_ax.get_xlim()[0] == 0.0
    # the training loss has no t = 0 value (no step trained yet): it starts at step 1
    (loss,) = [ln for ln in loss_ax.get_lines() if ln.get_gid() == "a"]
    assert loss.get_xdata()[0] > 0
    # both panels share one x range
    assert accuracy_ax.get_xlim() == loss_ax.get_xlim()
    labels = [t.get_text() for t in accuracy_ax.get_legend().get_texts()]
    assert labels == ["a", "target 0.5", "target 0.68"]
    targets = [ln for ln in accuracy_ax.get_lines() if ln.get_gid() == "target"]
    assert [ln.get_ydata()[0] for ln in targets] == [0.5, 0.68]
    assert len({str(ln.get_linestyle()) for ln in targets}) == 2  # told apart in the legend


def test_log_time_axis_keeps_t_zero(make_run) -> None:
    runs = _two_model_runs(make_run)
    figure = convergence_figure(runs, log_time=True)
    for ax in figure.axes:
        assert ax.get_xscale() == "symlog"
        assert ax.get_xlabel().endswith("(symmetric log scale)")
    (line,) = [ln for ln in figure.axes[0].get_lines() if ln.get_gid() == "a"]
    assert line.get_xdata()[0] == 0.0
    assert figure.axes[0].get_xlim()[0] == 0.0  # no negative times on the axis
    linear = convergence_figure(runs)
    assert linear.axes[0].get_xscale() == "linear"


def test_legends_in_words() -> None:
    assert group_words("protocol.perturbations_per_device", 5) == \
        "v = 5 perturbations per device"
    assert group_words("protocol.name", "fwdllm") == "FwdLLM"
    assert group_words("protocol.name", "fedavg", methods=["FedAdam", "FedAdam"]) == "FedAdam"
    assert group_words("policy.name", "variance_paced") == "variance-paced allocation"
    assert group_words("protocol.commit.max_staleness", 2) == "max staleness 2"
    assert group_words("fleet.size", 200.0) == "200 phones"
    assert group_words(None, "run-7") == "run-7"


def test_compare_curves_by_policy_in_words(make_run, tmp_path) -> None:
    dirs = [
        make_run(name="u0", seed=0, policy="uniform", initial_accuracy=0.1,
                 extra_params={"policy.name": "uniform"}),
        make_run(name="u1", seed=1, policy="uniform", initial_accuracy=0.1,
                 extra_params={"policy.name": "uniform"}),
        make_run(name="d0", seed=0, policy="deadline", initial_accuracy=0.1,
                 accuracies=(0.2, 0.4, 0.6, 0.8), extra_params={"policy.name": "deadline"}),
    ]
    figure = convergence_figure(load_runs(dirs), by="policy.name", metrics=("accuracy",))
    # several groups: one legend below the panels, none covering a curve
    assert figure.axes[0].get_legend() is None
    (legend,) = figure.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["uniform allocation: median of 2 runs, band: quartiles",
                      "deadline-aware allocation"]
    median = next(ln for ln in figure.axes[0].get_lines() if ln.get_gid() == "median:uniform")
    # the two uniform seeds are identical: their median is each one's curve, from t = 0
    # (held at its last value to the runs' end)
    np.testing.assert_allclose(median.get_ydata(), [0.1, 0.3, 0.5, 0.45, 0.7, 0.7])
    assert median.get_xdata()[0] == 0.0


def _tta_table() -> pd.DataFrame:
    inf = math.inf
    return pd.DataFrame({
        "policy.name": ["uniform", "uniform", "deadline", "deadline"],
        "target": [0.5, 0.7, 0.5, 0.7],
        "runs": [3, 3, 3, 3],
        "reached": [3, 1, 2, 2],
        "median_s": [600.0, inf, 1200.0, 2400.0],
        "ci_low_s": [300.0, inf, 900.0, 1800.0],
        "ci_high_s": [30000.0, inf, inf, 3000.0],
    })


def test_time_to_accuracy_bars_are_never_clipped() -> None:
    figure = time_to_accuracy_figure(_tta_table(), "policy.name")
    (ax,) = figure.axes
    # 30,000 s (8.33 h) is the highest finite value, 50x the group's median: the axis
    # reaches above it (it was cut at 1.15x the largest median before issue 24)
    assert ax.get_ylabel() == "median simulated time to reach (h)"
    assert ax.get_ylim()[1] >= 30000.0 / 3600.0
    bars = ax.containers[0].lines[2][0].get_segments()
    tops = [np.asarray(seg)[:, 1].max() for seg in bars if np.asarray(seg).ndim == 2]
    assert max(tops) == pytest.approx(30000.0 / 3600.0)
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["not reached (1 of 3)"]
    gids = {ln.get_gid() for ln in ax.get_lines()}
    assert {"not_reached:uniform", "unbounded:deadline"} <= gids
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["deadline-aware allocation",
                              "deadline-aware allocation: interval unbounded above",
                              "uniform allocation", "uniform allocation: median not reached"]
    logged = time_to_accuracy_figure(_tta_table(), "policy.name", log_time=True)
    assert logged.axes[0].get_yscale() == "symlog"


def test_figure_formats_written_and_valid(make_run, tmp_path) -> None:
    run = make_run(name="a", initial_accuracy=0.1)
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out), "--format", "pdf,svg",
                 "--log-time"]) == 0
    for stem in ("convergence_time", "convergence_perturbations", "timeline", "utilisation",
                 "step_breakdown"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the page's
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        root = ElementTree.parse(out / f"{stem}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    cmp_out = tmp_path / "cmp"
    assert main(["compare", str(run), "--out", str(cmp_out), "--format", "svg,pdf"]) == 0
    assert ElementTree.parse(cmp_out / "curves.svg").getroot().tag.endswith("svg")
    assert (cmp_out / "curves.pdf").read_bytes()[:5] == b"%PDF-"
    assert not (cmp_out / "curves.png").exists()  # only what was asked for


def test_unknown_figure_format_is_one_line(make_run, tmp_path, capsys) -> None:
    with pytest.raises(FleetsimInputError, match=r"--format 'jpg': unknown figure format "
                       r"\(allowed: png, pdf, svg"):
        parse_formats("png,jpg")
    run = make_run(name="a")
    assert main(["compare", str(run), "--out", str(tmp_path / "c"), "--format", "tiff"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "allowed: png, pdf, svg" in err[0]


def test_traces_inspect_draws_only_panels_with_data(tmp_path) -> None:
    from fleetsim.traces.inspect import analyse

    catalogue = analyse(CATALOGUES["default"])
    figure = inspect_figure("phones.csv", catalogue)
    (ax,) = figure.axes  # latency only: no empty availability or bandwidth panel
    names = [t.get_text() for t in ax.get_xticklabels()]
    phones = set(pd.read_csv(CATALOGUES["default"])["phone_model"].astype(str))
    assert names and set(names) <= phones
    assert ax.get_yscale() == "log"
    network = analyse(DATA_DIR / "network" / "hsdpa_3g.csv")
    (bw_ax,) = inspect_figure("hsdpa_3g.csv", network).axes
    assert bw_ax.get_title() == "bandwidth CDF" and bw_ax.get_ylim() == (0.0, 100.0)
    intervals = tmp_path / "w.csv"
    intervals.write_text("device_id,start_s,end_s\n0,0,43200\n1,0,43200\n")
    (hour_ax,) = inspect_figure("w.csv", analyse(intervals)).axes
    heights = [p.get_height() for p in hour_ax.patches]
    # both devices online from midnight to noon (over the report's days): 100 % then 0 %
    assert heights[0] == pytest.approx(100.0) and heights[-1] == pytest.approx(0.0)
    _, path = inspect_trace_file(intervals, tmp_path / "out", formats="png,pdf")
    assert path.suffix == ".png" and path.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_traces_inspect_cli_figure_format(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["traces", "inspect", str(CATALOGUES["default"]), "--out", str(out),
                 "--figure-format", "svg"]) == 0
    assert ElementTree.parse(out / "phones_inspect.svg").getroot().tag.endswith("svg")
    assert f"figure: {out / 'phones_inspect.svg'}" in capsys.readouterr().out


def test_traces_inspect_overlay_in_percent_and_pdf(tmp_path) -> None:
    a = tmp_path / "a.csv"
    a.write_text("device_id,start_s,end_s\n0,0,43200\n1,0,43200\n")
    b = tmp_path / "b.csv"
    b.write_text("device_id,start_s,end_s\n0,0,21600\n1,43200,86400\n")
    table, path = inspect_trace_file(a, tmp_path / "out", overlay=b, formats="pdf")
    assert path == tmp_path / "out" / "a_vs_b.pdf"
    assert path.read_bytes()[:5] == b"%PDF-" and not path.with_suffix(".png").exists()
    assert {"field", "value"} <= set(table.columns)


def test_figure_files_are_byte_identical_for_the_same_figure(make_run, tmp_path) -> None:
    """No date, producer or random id in the files: the same runs give the same bytes."""
    runs = _two_model_runs(make_run)
    for name in ("a", "b"):
        convergence_figure(runs, path=tmp_path / name / "curves.png",
                           formats=("png", "pdf", "svg"))
    for suffix in ("png", "pdf", "svg"):
        first = (tmp_path / "a" / f"curves.{suffix}").read_bytes()
        assert first == (tmp_path / "b" / f"curves.{suffix}").read_bytes(), suffix
    assert b"CreationDate" not in (tmp_path / "a" / "curves.pdf").read_bytes()
