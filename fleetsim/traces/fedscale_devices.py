"""FedScale's device facts: ``client_device_capacity`` (speeds and bandwidths) and the
``model`` field of ``client_behave_trace`` (which phone a client is).

Both are pickled dicts keyed by client id, read only through the restricted unpickler
(:class:`fleetsim.traces.formats.fedscale.BuiltinOnlyUnpickler`: builtin data only).
Clients are numbered in :func:`~fleetsim.traces.formats.common.trace_id_order` and fleet
device ``i`` uses client ``i mod m``, as for the availability trace, so a client's speed,
bandwidth and windows stay one device's.

``client_device_capacity`` (FedScale ``benchmark/dataset/data/device_info``): client ->
``{"computation": C, "communication": B}``.  FedScale's client computes a round's
time as ``computation = 3 * batch_size * local_steps * C / 1000`` seconds ("compute_speed is
the inference latency of models (ms/sample)", backward ~2x forward: the factor 3) and
``communication = (upload_kbit + download_kbit) / B`` with model sizes in "kbits"
(``sys.getsizeof(pickle.dumps(model)) / 1024.0 * 8``: bytes / 1024 x 8, so one of FedScale's
kbit is 1,024 bits), so:

* ``C`` is milliseconds per sample for one forward (inference) of FedScale's benchmark
  model;
* ``B`` is FedScale-kbit/s (1,024 bit/s each), one rate for both directions.

The mapping onto fleetsim's device table (:func:`capacity_columns`):

* uplink = downlink = ``B * 1024`` bit/s (:data:`FEDSCALE_KBIT`);
* the CPU's ``ref_forward_s`` (seconds per BERT-base forward at batch 8 x seq 128)
  becomes ``C / 1000 * 8 * k``.  With ``traces.device_capacity_flops_per_sample`` (the
  forward FLOPs of one sample of the model C was measured on) ``k = F_ref / (8 * that)``,
  the latency model's own scaling (:mod:`fleetsim.traces.catalogue_row`).  Without it
  (FedScale does not say which model each value was measured on) the speeds keep their
  RATIOS and are anchored on the catalogue: ``k`` makes the trace's median client as fast
  as the population-weighted median CPU ``ref_forward_s`` of the scenario's catalogue
  and population.  Phones keep their catalogue RAM (the capacity file has none); the
  GPU and NPU are absent (FedScale's figure is one speed, taken as the CPU's).

``client_behave_trace``'s ``model`` (a phone model string) maps onto a catalogue phone
when equal ignoring case, spaces, hyphens and underscores
(:func:`fleetsim.traces.phone_names.name_key`); ``traces validate TRACE --catalogue CAT``
reports how many clients map and lists the unknown models with "did you mean".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.formats.common import trace_id_order
from fleetsim.traces.formats.fedscale import safe_unpickle

#: bits in one of FedScale's "kbits" (model sizes are bytes / 1024 x 8)
FEDSCALE_KBIT = 1024.0
#: samples in one reference forward (BERT-base, batch 8 x seq 128)
REFERENCE_SAMPLES = 8


def is_capacity_dict(obj: object) -> bool:
    """Whether an unpickled object looks like ``client_device_capacity``."""
    if not isinstance(obj, dict) or not obj:
        return False
    first = next(iter(obj.values()))
    return isinstance(first, dict) and "computation" in first and "communication" in first


def load_device_capacity(path: Path) -> tuple[list, np.ndarray, np.ndarray]:
    """(client ids in :func:`trace_id_order`, computation ms/sample, communication
    kbit/s), validated: both positive finite numbers for every client."""
    path = Path(path)
    obj = safe_unpickle(path)
    if not is_capacity_dict(obj):
        raise FleetsimInputError(
            f"{path}: expected FedScale's client_device_capacity, a dict client_id -> "
            "{'computation': ms per sample, 'communication': kbit/s}")
    ids = trace_id_order(obj)
    comp = np.empty(len(ids))
    comm = np.empty(len(ids))
    for i, client in enumerate(ids):
        rec = obj[client]
        for key, out in (("computation", comp), ("communication", comm)):
            value = rec.get(key) if isinstance(rec, dict) else None
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not np.isfinite(value) or value <= 0):
                raise FleetsimInputError(
                    f"{path}: client {client!r} field {key!r}: {value!r} (allowed: a number "
                    f"> 0, {'ms per sample' if key == 'computation' else 'kbit/s'})")
            out[i] = float(value)
    from fleetsim.traces.plausibility import check_link_mbps

    check_link_mbps(path, "communication", comm * FEDSCALE_KBIT / 1e6,
                    slip="bit/s written as kbit/s (the field is kbit/s)")
    return ids, comp, comm


def capacity_columns(
    path: Path, n_devices: int, flops_per_sample: float | None, anchor_ref_s: float,
    trace_source: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(CPU ref_forward_s [n], link bit/s [n], label) for ``n_devices`` fleet devices
    (device ``i`` = client ``i mod m``, or ``trace_source[i] mod m`` when given) by the
    module's mapping.  ``anchor_ref_s``: the population-weighted median CPU seconds per
    reference forward of the catalogue, used without ``flops_per_sample``."""
    from fleetsim.traces.latency import REFERENCE_FLOPS

    ids, comp, comm = load_device_capacity(path)
    per_sample_s = comp / 1000.0
    if flops_per_sample is not None:
        k = REFERENCE_FLOPS / (REFERENCE_SAMPLES * float(flops_per_sample))
        how = f"forward of {flops_per_sample:g} FLOPs/sample"
    else:
        k = float(anchor_ref_s) / (REFERENCE_SAMPLES * float(np.median(per_sample_s)))
        how = f"speed ratios anchored on the catalogue's median CPU ({anchor_ref_s:.3g} s)"
    ref = per_sample_s * REFERENCE_SAMPLES * k
    src = np.arange(int(n_devices)) if trace_source is None else np.asarray(trace_source)
    which = src % len(ids)
    label = (f"FedScale client_device_capacity {Path(path).name} ({len(ids)} clients; "
             f"computation ms/sample, communication kbit/s; {how})")
    return ref[which], comm[which] * FEDSCALE_KBIT, label


def behave_models(path: Path) -> list[str | None]:
    """Each client's ``model`` in :func:`trace_id_order` (None where absent)."""
    obj = safe_unpickle(Path(path))
    if not isinstance(obj, dict):
        raise FleetsimInputError(f"{path}: expected a dict client_id -> trace record")
    out: list[str | None] = []
    for client in trace_id_order(obj):
        rec = obj[client]
        model = rec.get("model") if isinstance(rec, dict) else None
        out.append(str(model).strip() if model is not None and str(model).strip() else None)
    return out


def fedscale_model_report(path: Path, catalogue_path: Path) -> dict[str, object]:
    """Counts of clients whose ``model`` maps onto a catalogue phone; unknown models are
    listed in one warning line with "did you mean"."""
    from fleetsim.traces.files import refuse_special_file
    from fleetsim.traces.phone_names import did_you_mean, match_names
    from fleetsim.traces.plausibility import warn
    from fleetsim.traces.tables import load_catalogue

    cat = load_catalogue(refuse_special_file(Path(catalogue_path), "--catalogue"))
    models = behave_models(path)
    named = [m for m in models if m is not None]
    matched = match_names(named, cat, loose=True)
    unknown = [m for m, hit in matched.items() if hit is None]
    mapped = sum(1 for m in named if matched[m] is not None)
    if unknown:
        warn(f"{path}: field 'model': {len(unknown)} phone model(s) not in the catalogue "
             f"{Path(catalogue_path).name}: "
             + ", ".join(did_you_mean(m, cat) for m in unknown)
             + " (their clients keep the population's phones)")
    return {
        "catalogue": Path(catalogue_path).name,
        "clients_with_model": len(named),
        "clients_mapped_to_catalogue": mapped,
        "unknown_phone_models": len(unknown),
    }


def capacity_report(path: Path) -> dict[str, object]:
    """Summary figures of a ``client_device_capacity`` file for ``traces validate``."""
    _, comp, comm = load_device_capacity(path)
    return {
        "format": "fedscale_capacity",
        "clients": int(len(comp)),
        "median_computation_ms_per_sample": float(np.median(comp)),
        "median_communication_kbps": float(np.median(comm)),
        "computation_range_ms": f"{comp.min():g}-{comp.max():g}",
    }


def capacity_frame(path: Path) -> pd.DataFrame:
    """client, computation_ms_per_sample, communication_kbps (for inspection)."""
    ids, comp, comm = load_device_capacity(path)
    return pd.DataFrame({"client": [str(c) for c in ids], "computation_ms_per_sample": comp,
                         "communication_kbps": comm})
