"""Device facts and availability of N devices (:func:`build_devices`), vectorised (no
per-device loop); the SimPy ``Fleet`` is built from them in :mod:`fleetsim.fleet`."""

from __future__ import annotations

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
from fleetsim.traces.tables import catalogue_for, population_weights

GIB = 2**30
#: the time fields of each file format, named in the median-window warning
WINDOW_COLUMNS = {"intervals": "'start_s', 'end_s'", "fedscale": "'active', 'inactive'",
                  "flash_windows": "[start_s, end_s]", "empirical": "[start_s, end_s]"}


def synthesise_devices(cfg: TracesConfig, n_devices: int, seed: int, base_dir: Path) -> DeviceTable:
    """Static device facts: phone model per device drawn from the population
    (stream ``("population",)``), RAM, usable RAM, per-backend latency, network."""
    n = int(n_devices)
    if n < 1:
        raise FleetsimInputError(f"fleet size: {n} (allowed: >= 1)")
    cat, cat_path = catalogue_for(cfg.catalogue, base_dir)
    weights = population_weights(cfg.population, cat, base_dir)
    model_idx = stream(seed, "population").choice(len(cat), size=n, p=weights).astype(np.int32)
    # Phone RAM is sold in binary gigabytes (an "8 GB" phone has 8 GiB).
    ram_by_model = np.round(cat["ram_gb"].to_numpy() * GIB).astype(np.int64)
    ram = ram_by_model[model_idx]
    usable = np.floor(ram_by_model * cfg.usable_ram_fraction).astype(np.int64)[model_idx]
    ref = {
        b: cat[f"{b}_ref_forward_s"].to_numpy(dtype=np.float64)[model_idx]
        for b in ("npu", "gpu", "cpu")
    }
    up, down, net_label = sample_network(cfg.network, n, seed, base_dir)
    pop_label = cfg.population
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
    return trace


def build_devices(
    cfg: TracesConfig, n_devices: int, seed: int, horizon_s: float, base_dir: Path
) -> tuple[DeviceTable, AvailabilityTrace]:
    """The fleet's static facts and availability (vectorised; 1M devices in ~1 s)."""
    table = synthesise_devices(cfg, n_devices, seed, Path(base_dir))
    avail = build_availability(cfg, n_devices, seed, horizon_s, Path(base_dir))
    if avail.label:
        table.source += f"; availability: {avail.label}"
    return table, avail
