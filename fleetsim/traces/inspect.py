"""``fleetsim traces validate|inspect PATH``: detect a trace file's format, check
it, summarise it, and draw latency / availability-by-hour / bandwidth-CDF panels.

Detection works with any suffix or none (FedScale ships ``client_behave_trace``
without one): first the availability formats of the registry, each asked
``sniff(path)`` on the file's head (:func:`fleetsim.traces.registry.detect_format`:
FedScale pickle, FLASH ``state_traces`` JSON, ``device_id,start_s,end_s`` interval
tables, then plug-ins); then device tables (CSV/TSV by suffix or content, Parquet)
by columns: ``phone_model,weight`` → population; ``phone_model,ram_gb,
cpu_ref_forward_s`` → catalogue; ``quantile,downlink_mbps,uplink_mbps`` → network
distribution; ``downlink_mbps,uplink_mbps`` → per-user network profiles.
``--format NAME`` (``fmt``) skips detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from fleetsim.errors import FleetsimInputError
from fleetsim.record.figure_files import figure_paths, parse_formats, save_figure
from fleetsim.traces.files import refuse_special_file
from fleetsim.traces.plausibility import check_link_mbps, check_median_window
from fleetsim.traces.report import TraceReport
from fleetsim.traces.tables import CATALOGUES, load_catalogue, load_population, read_table


def _detect_table_kind(path: Path, df: pd.DataFrame) -> str:
    cols = set(df.columns)
    if {"device_id", "start_s", "end_s"} <= cols:
        return "intervals"
    if {"phone_model", "weight"} <= cols:
        return "population"
    if {"phone_model", "ram_gb", "cpu_ref_forward_s"} <= cols:
        return "catalogue"
    if {"quantile", "downlink_mbps", "uplink_mbps"} <= cols:
        return "network_distribution"
    if {"downlink_mbps", "uplink_mbps"} <= cols:
        return "network_profiles"
    raise FleetsimInputError(
        f"{path}: cannot tell the trace format from columns {', '.join(map(str, df.columns))} "
        "(allowed: device_id,start_s,end_s | phone_model,weight | phone_model,ram_gb,"
        "cpu_ref_forward_s | quantile,downlink_mbps,uplink_mbps | downlink_mbps,uplink_mbps)"
    )


#: device-table kinds ``traces validate|inspect --format`` accepts besides the registry's
TABLE_KINDS = ("catalogue", "population", "network_distribution", "network_profiles",
               "fedscale_capacity")


def trace_file_kinds() -> list[str]:
    """Values of ``--format``: registered availability formats, then device-table kinds."""
    from fleetsim.traces.registry import file_formats

    return [*file_formats(), *TABLE_KINDS]


def analyse(
    path: Path, fmt: str | None = None, timezone: str = "UTC", catalogue: Path | None = None
) -> TraceReport:
    """Detect (or take ``fmt``), load and validate ``path``; raise FleetsimInputError if
    malformed.  Zone-less timestamps are read in ``timezone`` (IANA name).  A population
    is checked against ``catalogue`` (default: the shipped one): every unknown phone model
    in one error line (:mod:`fleetsim.traces.phone_names`)."""
    from fleetsim.traces.registry import (
        detect_format,
        file_formats,
        format_for_suffix,
    )
    from fleetsim.traces.tables import TABLE_SUFFIXES, sniff_table

    path = refuse_special_file(Path(path))
    if not path.exists():
        raise FleetsimInputError(f"{path}: file not found")
    if path.is_dir():
        raise FleetsimInputError(f"{path}: is a folder (expected a trace file)")
    if fmt is not None and fmt not in trace_file_kinds():
        raise FleetsimInputError(
            f"--format: {fmt!r} is not a trace format (allowed: {', '.join(trace_file_kinds())})"
        )
    kind = fmt if fmt is not None else detect_format(path)
    if kind is None and not TABLE_SUFFIXES.get(path.suffix.lower()):
        kind = format_for_suffix(path)  # its loader then says what is wrong
    if kind == "fedscale" and fmt is None:
        from fleetsim.traces.fedscale_devices import is_capacity_dict
        from fleetsim.traces.formats.fedscale import safe_unpickle

        if is_capacity_dict(safe_unpickle(path)):
            kind = "fedscale_capacity"
    if kind == "fedscale_capacity":
        from fleetsim.traces.fedscale_devices import (
            FEDSCALE_KBIT,
            capacity_report,
            load_device_capacity,
        )

        if catalogue is not None:
            raise FleetsimInputError(
                f"--catalogue: {path} is a FedScale client_device_capacity file, which names "
                "no phone models (allowed: drop --catalogue)")
        summary = capacity_report(path)
        _, _, comm = load_device_capacity(path)
        return TraceReport(kind, summary, bandwidth={"link": comm * FEDSCALE_KBIT / 1e6})
    if catalogue is not None and kind == "fedscale":
        from fleetsim.traces.fedscale_devices import fedscale_model_report

        rep = _availability_report(kind, path, timezone)
        rep.summary.update(fedscale_model_report(path, Path(catalogue)))
        return rep
    if catalogue is not None and kind is not None and kind != "population":
        raise _catalogue_not_applicable(path, kind)
    if kind is not None and kind not in TABLE_KINDS:
        # Every availability format reports itself, through the same registry as runs.
        return _availability_report(kind, path, timezone)
    if kind is None and not (TABLE_SUFFIXES.get(path.suffix.lower()) or sniff_table(path)):
        raise FleetsimInputError(
            f"{path}: cannot tell the trace format from the suffix {path.suffix!r} or the "
            f"content (allowed: a file of format {', '.join(file_formats())}, a device table "
            "(CSV/TSV/Parquet), or name one with --format)"
        )
    df = read_table(path)
    kind = kind or _detect_table_kind(path, df)
    if catalogue is not None and kind != "population":
        raise _catalogue_not_applicable(path, kind)
    if kind not in TABLE_KINDS:  # an interval table found by its columns
        return _availability_report(kind, path, timezone)
    if kind == "catalogue":
        cat = load_catalogue(path)
        return _catalogue_report(cat)
    if kind == "population":
        from fleetsim.traces.phone_names import check_population

        cat_path = Path(catalogue) if catalogue is not None else CATALOGUES["default"]
        cat = load_catalogue(refuse_special_file(cat_path, "--catalogue"))
        counts = check_population(path, cat, cat_path)
        w = load_population(path, cat)
        top = np.argsort(w, kind="stable")[::-1][:5]
        summary = {
            "format": "population",
            **counts,
            "phone_models": int((w > 0).sum()),
            "top": "; ".join(f"{cat['phone_model'][i]} {w[i]:.1%}" for i in top),
            "mean_ram_gb": float((w * cat["ram_gb"]).sum()),
        }
        lat = _catalogue_report(cat[w > 0].reset_index(drop=True)).latency
        return TraceReport("population", summary, latency=lat)
    if kind == "network_distribution":
        from fleetsim.traces.network import load_quantile_table

        q, down, up = load_quantile_table(path)
        summary = {
            "format": "network_distribution",
            "quantiles": int(len(q)),
            "median_downlink_mbps": float(np.interp(0.5, q, down)),
            "median_uplink_mbps": float(np.interp(0.5, q, up)),
        }
        return TraceReport(kind, summary, bandwidth={"downlink": down, "uplink": up})
    from fleetsim.traces.tables import numeric_column, require_columns

    require_columns(df, path, ("downlink_mbps", "uplink_mbps"))
    down = numeric_column(df, path, "downlink_mbps", positive=True)
    up = numeric_column(df, path, "uplink_mbps", positive=True)
    check_link_mbps(path, "downlink_mbps", down)
    check_link_mbps(path, "uplink_mbps", up)
    down, up = np.sort(down), np.sort(up)
    summary = {
        "format": "network_profiles",
        "users": int(len(df)),
        "median_downlink_mbps": float(np.median(down)),
        "median_uplink_mbps": float(np.median(up)),
    }
    return TraceReport(kind, summary, bandwidth={"downlink": down, "uplink": up})


def _catalogue_not_applicable(path: Path, kind: str) -> FleetsimInputError:
    return FleetsimInputError(
        f"--catalogue: checks the phone models of a population or a FedScale "
        f"client_behave_trace; {path} is a {kind} file (allowed: drop --catalogue)")


def _availability_report(kind: str, path: Path, timezone: str) -> TraceReport:
    """The format's own report, plus the median-window plausibility warning."""
    from fleetsim.traces.fleet_builder import WINDOW_COLUMNS
    from fleetsim.traces.registry import get_format

    rep = get_format(kind).report(path, timezone)
    med = rep.summary.get("median_window_s")
    if med is not None and rep.summary.get("windows"):
        check_median_window(path, WINDOW_COLUMNS.get(kind, "start/end times"), [0.0], [med])
    return rep


def _catalogue_report(cat: pd.DataFrame) -> TraceReport:
    rows = []
    for b in ("cpu", "gpu", "npu"):
        col = cat[f"{b}_ref_forward_s"]
        for name, v in zip(cat["phone_model"], col):
            if not np.isnan(v):
                rows.append((name, b, float(v)))
    lat = pd.DataFrame(rows, columns=["phone_model", "backend", "ref_forward_s"])
    summary = {
        "format": "catalogue",
        "phone_models": int(len(cat)),
        "with_npu": int(cat["npu_ref_forward_s"].notna().sum()),
        "with_gpu": int(cat["gpu_ref_forward_s"].notna().sum()),
        "median_cpu_ref_forward_s": float(cat["cpu_ref_forward_s"].median()),
        "ram_gb_range": f"{cat['ram_gb'].min():g}-{cat['ram_gb'].max():g}",
    }
    return TraceReport("catalogue", summary, latency=lat)


def validate_trace_file(
    path: Path, fmt: str | None = None, timezone: str = "UTC", catalogue: Path | None = None
) -> str:
    """One summary line; raises FleetsimInputError when the file is malformed (a
    population: also when a phone model is not in ``catalogue``)."""
    rep = analyse(Path(path), fmt, timezone, catalogue)
    def show(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 1000 and float(v).is_integer() else f"{v:.4g}"
        return str(v)

    parts = [
        f"{k}={show(v)}"
        for k, v in rep.summary.items()
        if k not in ("format", "label")
    ]
    return f"{Path(path).name}: valid {rep.kind} trace; " + ", ".join(parts)


#: at most this many phone names on the latency panel's axis (every k-th beyond it)
MAX_PHONE_LABELS = 160


def _latency_panel(ax, latency: pd.DataFrame) -> None:
    """Seconds per reference forward of each phone model and backend, phones sorted by CPU
    latency and named on the x axis (every k-th when more than :data:`MAX_PHONE_LABELS`)."""
    piv = latency.pivot_table(index="phone_model", columns="backend", values="ref_forward_s")
    piv = piv.sort_values("cpu" if "cpu" in piv else piv.columns[0], kind="stable")
    positions = np.arange(len(piv))
    for backend in piv.columns:
        line = ax.plot(positions, piv[backend].to_numpy(), "o", ms=3,
                       label=f"{str(backend).upper()}")[0]
        line.set_gid(f"latency:{backend}")
    every = max(1, int(np.ceil(len(piv) / MAX_PHONE_LABELS)))
    ax.set_xticks(positions[::every])
    ax.set_xticklabels([str(n) for n in piv.index[::every]], rotation=90, fontsize=6)
    ax.set_yscale("log")
    named = "" if every == 1 else f", 1 in {every} named"
    ax.set_xlabel(f"phone model (sorted by CPU latency{named})")
    ax.set_ylabel("s per reference forward (BERT-base, batch 8 x seq 128)")
    ax.legend(fontsize=8)
    ax.set_title("latency by phone model", fontsize=10)


def _hourly_panel(ax, hourly_share: np.ndarray) -> None:
    bars = ax.bar(np.arange(24), np.asarray(hourly_share, dtype=float) * 100.0)
    for bar in bars:
        bar.set_gid("hourly_share")
    ax.set_xlim(-0.5, 23.5)
    ax.set_xticks(range(0, 24, 3))
    ax.set_ylim(0, 100)
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    ax.set_xlabel("hour of day")
    ax.set_ylabel("devices online (%)")
    ax.set_title("availability by hour of day", fontsize=10)


def _bandwidth_panel(ax, bandwidth: dict) -> None:
    for label, values in bandwidth.items():
        v = np.sort(np.asarray(values, dtype=float))
        line = ax.plot(v, np.linspace(0, 100, len(v)), label=str(label))[0]
        line.set_gid(f"bandwidth:{label}")
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    ax.set_xlabel("Mbit/s")
    ax.set_ylabel("share of devices at or below (%)")
    ax.legend(fontsize=8)
    ax.set_title("bandwidth CDF", fontsize=10)


def inspect_figure(name: str, rep: TraceReport) -> Figure | None:
    """The figure of ``traces inspect``: one panel per kind of data the file has (latency
    by phone model, availability by hour of day, bandwidth CDF), none for data it lacks;
    None when it has none of them.  Shares in percent."""
    panels = []
    if rep.latency is not None and len(rep.latency):
        panels.append(lambda ax: _latency_panel(ax, rep.latency))
    if rep.hourly_share is not None:
        panels.append(lambda ax: _hourly_panel(ax, rep.hourly_share))
    if rep.bandwidth:
        panels.append(lambda ax: _bandwidth_panel(ax, rep.bandwidth))
    if not panels:
        return None
    latency_phones = (rep.latency["phone_model"].nunique()
                      if rep.latency is not None and len(rep.latency) else 0)
    # the latency panel widens with its phones so that every name stays readable
    widths = [5.5] * len(panels)
    if latency_phones:
        widths[0] = min(max(5.5, 0.11 * min(latency_phones, MAX_PHONE_LABELS)), 18.0)
    figure = Figure(figsize=(sum(widths), 6.0 if latency_phones else 4.6),
                    layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    for ax, draw in zip(axes, panels):
        draw(ax)
    figure.suptitle(f"{name} ({rep.kind})")
    return figure


def inspect_trace_file(
    path: Path,
    out_dir: Path,
    fmt: str | None = None,
    timezone: str = "UTC",
    overlay: Path | None = None,
    formats: Sequence[str] | str = ("png",),
) -> tuple[pd.DataFrame, Path | None]:
    """Summary table and a figure of the panels the file has data for
    (:func:`inspect_figure`), written to ``out_dir`` as ``<stem>_inspect.<format>`` for
    each of ``formats`` (png, pdf, svg; :mod:`fleetsim.record.figure_files`); the path of the
    first, or None when the file has nothing to draw.  With ``overlay`` (another
    availability file, e.g. from ``fleetsim traces sample``): one figure overlaying the two
    window-length CDFs and hourly online shares, and a table of their KS distance and
    largest hourly difference (:mod:`fleetsim.traces.overlay`)."""
    formats = parse_formats(formats, "--figure-format")
    if overlay is not None:
        from fleetsim.traces.overlay import overlay_figure, windows_profile

        a = windows_profile(Path(path), fmt, timezone)
        b = windows_profile(Path(overlay), None, timezone)
        png = Path(out_dir) / f"{Path(path).stem}_vs_{Path(overlay).stem}.png"
        table = overlay_figure(a, b, png, f"{Path(path).name} vs {Path(overlay).name}",
                               formats=formats)
        return table, figure_paths(png, formats)[0]
    path = Path(path)
    rep = analyse(path, fmt, timezone)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(
        {"field": list(rep.summary), "value": [str(v) for v in rep.summary.values()]}
    )
    figure = inspect_figure(path.name, rep)
    if figure is None:
        return table, None
    target = out_dir / f"{path.stem}_inspect.png"
    save_figure(figure, target, dpi=90, formats=formats)
    return table, figure_paths(target, formats)[0]
