"""Device facts and availability of N devices (:func:`build_devices`), vectorised (no
per-device loop); the SimPy ``Fleet`` is built from them in :mod:`fleetsim.fleet`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.rng import stream
from fleetsim.traces.base import AvailabilityTrace, DeviceTable
from fleetsim.traces.config import TracesConfig
from fleetsim.traces.files import refuse_special_file
from fleetsim.traces.network import radio_technology, sample_network
from fleetsim.traces.plausibility import check_median_window
from fleetsim.traces.registry import (
    MODEL_FORMATS,
    detect_format,
    file_formats,
    format_for_suffix,
    get_format,
)
from fleetsim.traces.replay import apply_replay
from fleetsim.traces.tables import catalogue_for, population_weights

GIB = 2**30
#: the time fields of each file format, named in the median-window warning
WINDOW_COLUMNS = {"intervals": "'start_s', 'end_s'", "fedscale": "'active', 'inactive'",
                  "flash_windows": "[start_s, end_s]", "empirical": "[start_s, end_s]"}


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value whose cumulative weight reaches half the total."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(np.asarray(weights, dtype=float)[order])
    return float(np.asarray(values)[order][np.searchsorted(cum, 0.5 * cum[-1])])


def _trace_models(
    cfg: TracesConfig, cat, n: int, base_dir: Path, trace_source: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(catalogue index or -1 per device, mapped mask) for ``population: trace_models``:
    device i is the phone its FedScale client's ``model`` names
    (:mod:`fleetsim.traces.fedscale_devices`; matched ignoring case, spaces, hyphens)."""
    from fleetsim.traces.fedscale_devices import behave_models
    from fleetsim.traces.phone_names import did_you_mean, match_names
    from fleetsim.traces.plausibility import warn

    a = cfg.availability
    path = cfg.resolve(a.path, base_dir)
    if a.kind not in ("fedscale", "auto") or path is None or (
            a.kind == "auto" and detect_format(path) != "fedscale"):
        raise FleetsimInputError(
            "traces.population: 'trace_models' takes each device's phone from the 'model' "
            "field of a FedScale client_behave_trace (allowed with traces.availability.kind "
            "fedscale; else a built-in population or a CSV)")
    models = behave_models(path)
    matched = match_names([m for m in models if m is not None], cat, loose=True)
    unknown = [m for m, hit in matched.items() if hit is None]
    if unknown:
        warn(f"{path}: field 'model': {len(unknown)} phone model(s) not in the catalogue: "
             + ", ".join(did_you_mean(m, cat) for m in unknown)
             + " (their devices are drawn uniformly from the catalogue)")
    index = {str(name): i for i, name in enumerate(cat["phone_model"])}
    per_client = np.array([index[matched[m]] if m is not None and matched[m] is not None
                           else -1 for m in models], dtype=np.int64)
    client = (np.asarray(trace_source) if trace_source is not None
              else np.arange(n) % len(models))
    out = per_client[client]
    return out, out >= 0


def synthesise_devices(
    cfg: TracesConfig, n_devices: int, seed: int, base_dir: Path,
    trace_source: np.ndarray | None = None,
) -> DeviceTable:
    """Static device facts: phone model per device drawn from the population
    (stream ``("population",)``), RAM, usable RAM, per-backend latency, network.

    ``trace_source``: the trace client each device replays (``replay: resample_days``;
    None: ``i mod m``), for ``population: trace_models`` and ``device_capacity``."""
    n = int(n_devices)
    if n < 1:
        raise FleetsimInputError(f"fleet size: {n} (allowed: >= 1)")
    cat, cat_path = catalogue_for(cfg.catalogue, base_dir)
    by_trace = cfg.population == "trace_models"
    weights = population_weights("uniform" if by_trace else cfg.population, cat, base_dir)
    model_idx = stream(seed, "population").choice(len(cat), size=n, p=weights).astype(np.int32)
    pop_label = cfg.population
    if by_trace:
        mapped_idx, mapped = _trace_models(cfg, cat, n, Path(base_dir), trace_source)
        model_idx[mapped] = mapped_idx[mapped]
        pop_label = (f"trace_models ({int(mapped.sum())} of {n} devices from the trace's "
                     "'model' field, the rest uniform over the catalogue)")
    # Phone RAM is sold in binary gigabytes (an "8 GB" phone has 8 GiB).
    ram_by_model = np.round(cat["ram_gb"].to_numpy() * GIB).astype(np.int64)
    ram = ram_by_model[model_idx]
    usable = np.floor(ram_by_model * cfg.usable_ram_fraction).astype(np.int64)[model_idx]
    ref = {
        b: cat[f"{b}_ref_forward_s"].to_numpy(dtype=np.float64)[model_idx]
        for b in ("npu", "gpu", "cpu")
    }
    up, down, net_label = sample_network(cfg.network, n, seed, base_dir)
    if cfg.device_capacity is not None:
        from fleetsim.traces.fedscale_devices import capacity_columns

        cap_path = cfg.resolve(cfg.device_capacity, base_dir)
        refuse_special_file(cap_path, "traces.device_capacity")
        if not cap_path.exists():
            raise FleetsimInputError(
                f"traces.device_capacity: {cfg.device_capacity!r} resolves to {cap_path}, "
                "which does not exist")
        anchor = weighted_median(cat["cpu_ref_forward_s"].to_numpy(float), weights)
        cpu, link, net_label = capacity_columns(
            cap_path, n, cfg.device_capacity_flops_per_sample, anchor, trace_source)
        ref = {"npu": np.full(n, np.nan), "gpu": np.full(n, np.nan), "cpu": cpu}
        up = link.copy()
        down = np.full(n, np.inf) if cfg.network.uplink_only else link.copy()
    return DeviceTable(
        phone_model_index=model_idx,
        phone_models=list(cat["phone_model"]),
        ram_bytes=ram,
        usable_ram_bytes=usable,
        network_type_index=np.zeros(n, dtype=np.int16),
        network_types=[radio_technology(cfg.network)],
        uplink_bps=up,
        downlink_bps=down,
        ref_forward_s=ref,
        source=(
            f"catalogue: {cat_path.name} ({len(cat)} phone models); population: {pop_label}; "
            f"network: {net_label}"
        ),
    )


def build_availability(
    cfg: TracesConfig, n_devices: int, seed: int, horizon_s: float, base_dir: Path
) -> AvailabilityTrace:
    """The availability of ``n_devices`` devices: ``get_format(kind).load_with(...)`` for
    every kind (models and files alike; ``auto`` detects a file's format by content)."""
    a = cfg.availability
    path = cfg.resolve(a.path, base_dir)
    if path is not None:
        refuse_special_file(path, "traces.availability.path")
    if path is not None and a.kind not in MODEL_FORMATS and not path.exists():
        raise FleetsimInputError(
            f"traces.availability.path: {a.path!r} resolves to {path}, which does not exist"
        )
    kind = a.kind
    if kind == "auto":
        kind = (detect_format(path) or format_for_suffix(path)) if path is not None else None
        if kind is None:
            raise FleetsimInputError(
                f"traces.availability.kind: 'auto' cannot tell the format of {path} from its "
                f"content (allowed kinds: {', '.join(file_formats())})"
            )
    trace = get_format(kind).load_with(path, n_devices, seed, horizon_s, a)
    if path is not None and hasattr(trace, "starts"):
        check_median_window(path, WINDOW_COLUMNS.get(kind, "start/end times"), trace.starts,
                            trace.ends)
    if trace.num_devices != n_devices:
        raise FleetsimInputError(
            f"traces.availability.kind {kind!r}: the format returned {trace.num_devices} "
            f"devices for a fleet of {n_devices}"
        )
    trace, note = apply_replay(trace, kind, a.replay, seed)
    if note:
        print(f"fleetsim: note: {note}", file=sys.stderr)
    return trace


def build_devices(
    cfg: TracesConfig, n_devices: int, seed: int, horizon_s: float, base_dir: Path
) -> tuple[DeviceTable, AvailabilityTrace]:
    """The fleet's static facts and availability (vectorised; 1M devices in ~1 s)."""
    avail = build_availability(cfg, n_devices, seed, horizon_s, Path(base_dir))
    table = synthesise_devices(cfg, n_devices, seed, Path(base_dir),
                               getattr(avail, "replay_source", None))
    if avail.label:
        table.source += f"; availability: {avail.label}"
    return table, avail
