"""What every figure family shares: saving (PNG, PDF, SVG), time units, stacked bars in
percent, one-run lookup, legends in words and the model(s) a figure names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from fleetsim.analysis.load import RunSet
from fleetsim.errors import FleetsimInputError
from fleetsim.record import figure_files

_PART_COLOURS = {
    "download": "#377eb8",
    "compute": "#ff7f00",
    "upload": "#984ea3",
    "straggler_wait": "#e41a1c",
    "variance_repeats": "#ffd92f",
    "other": "#bdbdbd",
    "used": "#4daf4a",
    "wasted": "#e41a1c",
    "idle": "#a6d854",
    "offline": "#d9d9d9",
}


# Figure files (formats, names, saving) live on the ground floor so that ``traces inspect``
# writes them the same way.
FIGURE_FORMATS = figure_files.FIGURE_FORMATS
parse_formats = figure_files.parse_formats
figure_paths = figure_files.figure_paths
save_figure = figure_files.save_figure


# Words for legends (issue 24: "legends in words, not raw keys").  Policy names as the
# README's policy table describes them; protocols are named by the summary's ``method``
# (fleetsim.protocols.registry.method_label) where present, else by the registered
# protocol class's ``paper_name``.
POLICY_WORDS = {
    "uniform": "uniform allocation",
    "capability": "capability-proportional allocation",
    "deadline": "deadline-aware allocation",
    "variance_paced": "variance-paced allocation",
    "overcommit": "over-commit",
}
#: key → a format of its value in words (``{v}`` is the value)
KEY_WORDS = {
    "protocol.perturbations_per_device": "v = {v} perturbations per device",
    "protocol.devices_per_step": "{v} devices per step",
    "protocol.lr": "learning rate {v}",
    "protocol.phone_estimator": "{v} differences on the phones",
    "protocol.eval_every_s": "evaluated every {v} s",
    "protocol.rounds": "{v} rounds",
    "protocol.max_steps": "at most {v} steps",
    "fleet.size": "{v} phones",
    "fleet.interruption": "interruption: {v}",
    "run.seed": "seed {v}",
    "seed": "seed {v}",
    "numerics.h": "h = {v}",
    "numerics.estimator": "{v} estimator",
    "peft.rank": "LoRA rank {v}",
    "peft.method": "{v}",
    "model.name_or_path": "{v}",
    "policy.cohort": "{v} cohort",
    "traces.availability.kind": "availability: {v}",
    "availability_label": "availability: {v}",
}


def _value_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _protocol_words(name: str) -> str:
    """A protocol's name as its paper gives it (the registered class's ``paper_name``)."""
    from fleetsim.protocols.registry import known_protocol_class

    cls = known_protocol_class(name)
    return getattr(cls, "paper_name", "") or name


def group_words(by: str | None, group: object, methods: Sequence[str] = ()) -> str:
    """A legend entry for the runs whose ``by`` equals ``group``, in words: the method as its
    paper names it for ``protocol``/``protocol.name`` (``methods``: the summary's ``method``
    of the group's runs, else :data:`PROTOCOL_WORDS`), :data:`POLICY_WORDS` for policies,
    :data:`KEY_WORDS` for common keys, else the key's last part in words and the value
    (``protocol.commit.max_staleness`` 2 → "max staleness 2").  ``by`` None: the run id."""
    text = _value_text(group)
    if by is None or by in ("run", "method", "scenario_name", "run.name"):
        return text
    if by in ("protocol", "protocol.name"):
        named = sorted(set(str(m) for m in methods if m is not None and m == m))
        return " / ".join(named) if named else _protocol_words(text)
    if by in ("policy", "policy.name"):
        return POLICY_WORDS.get(text, text.replace("_", " "))
    if by in KEY_WORDS:
        return KEY_WORDS[by].format(v=text.replace("_", " "))
    leaf = by.rsplit(".", 1)[-1].replace("_", " ")
    return f"{leaf} {text.replace('_', ' ')}"


def models_line(summary: pd.DataFrame) -> str:
    """The model(s) behind the runs of ``summary`` (one row per run): its ``model_label``
    ("phones charged for X; learning signal from Y" when ``fleet.cost_model`` differs from
    the learning model, else the one model; :func:`fleetsim.cost_model.model_label`), from
    ``charged_model``/``learning_model`` or the older ``model`` field when absent; several
    distinct ones joined by " | "; "" when no run names one."""
    labels: list[str] = []
    for _, row in summary.iterrows():
        label = row.get("model_label")
        if not isinstance(label, str) or not label:
            charged, learning = row.get("charged_model"), row.get("learning_model")
            if isinstance(charged, str) and isinstance(learning, str):
                # fleetsim.cost_model.model_label's wording (a floor above analysis)
                label = (charged if charged == learning
                         else f"phones charged for {charged}; learning signal from {learning}")
            else:
                model = row.get("model", row.get("model.name_or_path"))
                label = model if isinstance(model, str) else ""
        if label:
            labels.append(label)
    return " | ".join(dict.fromkeys(labels))


def titled(figure: Figure, title: str, summary: pd.DataFrame) -> None:
    """``title`` over the figure with the models line (:func:`models_line`) beneath it."""
    models = models_line(summary)
    figure.suptitle(f"{title}\n{models}" if models else title, fontsize=11)


def _time_unit(horizon_s: float) -> tuple[str, float]:
    if horizon_s > 3 * 3600:
        return "h", 3600.0
    if horizon_s > 180:
        return "min", 60.0
    return "s", 1.0


def _one_run(runset: RunSet, run: str | None) -> str:
    if run is None:
        if len(runset.runs) != 1:
            raise FleetsimInputError(
                f"this figure shows one run; choose one of: {', '.join(runset.runs)}"
            )
        return runset.runs[0]
    if run not in runset.runs:
        raise FleetsimInputError(f"run {run!r} not loaded; loaded: {', '.join(runset.runs)}")
    return run


#: legend words of utilisation shares and step-breakdown parts
PART_WORDS = {
    "download": "download",
    "compute": "compute",
    "upload": "upload",
    "straggler_wait": "straggler wait",
    "variance_repeats": "variance repeats",
    "other": "other",
    "used": "used",
    "wasted": "wasted",
    "idle": "idle",
    "offline": "offline",
}


def _stacked_bars(ax, labels: list[str], shares: pd.DataFrame, parts: Sequence[str]) -> None:
    """Horizontal bars of ``shares`` (fractions, one row per label) stacked by ``parts``,
    drawn in percent (0–100 %)."""
    left = np.zeros(len(labels))
    for part in parts:
        values = shares[part].fillna(0.0).to_numpy(dtype=float) * 100.0
        bars = ax.barh(labels, values, left=left, color=_PART_COLOURS[part],
                       label=PART_WORDS.get(part, part))
        for bar in bars:
            bar.set_gid(part)
        left += values
    ax.set_xlim(0, 100)
    ax.xaxis.set_major_formatter(PercentFormatter(100))
    # Top to bottom in the given order, half a bar of space at each end: the default 5 %
    # margin left several empty bar rows above and below a panel of 60+ phone models.
    rows = len(dict.fromkeys(labels))
    ax.set_ylim(rows - 0.5, -0.5)
