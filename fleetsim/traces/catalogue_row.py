"""A catalogue row from a latency measured on your own phone and your own model
(``fleetsim traces catalogue --from-latency``).

The catalogue's unit (``<backend>_ref_forward_s``): seconds for ONE forward pass of
BERT-base at batch 8 x sequence length 128 (:data:`fleetsim.traces.latency.REFERENCE_FLOPS`
FLOPs).  A forward measured on another model, batch and sequence length converts with the
latency model's own scaling law (:mod:`fleetsim.traces.latency`), inverted::

    F(job)          = batch * seq_len * flops_per_token(model, seq_len)
    flops_per_token = 2 * N_body + 4 * n_layers * seq_len * attn_width
    ref_forward_s   = measured_s * F(BERT-base, 8, 128) / F(job)

so that :func:`fleetsim.traces.latency.unit_seconds` gives back ``measured_s`` for one
inference of that model at that batch and sequence length on the new row (a round trip,
tested in ``tests/traces/test_units.py``).  The model is a built-in name
(:data:`KNOWN_CONFIGS`), a Hugging Face ``config.json`` (or a folder holding one), or its
forward FLOPs per token given directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.latency import (
    REFERENCE_BATCH,
    REFERENCE_FLOPS,
    REFERENCE_SEQ_LEN,
    facts_from_hf_config,
)
from fleetsim.workload import BACKENDS

#: Architectures by name (the published ``config.json`` fields the latency model reads):
#: BERT-base (Devlin et al. 2019), DistilBERT (Sanh et al. 2019), all-MiniLM-L6-v2
#: (sentence-transformers), SmolLM2-135M (HuggingFaceTB).
KNOWN_CONFIGS: dict[str, dict] = {
    "bert-base": {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
                  "intermediate_size": 3072, "num_attention_heads": 12, "vocab_size": 30522,
                  "max_position_embeddings": 512},
    "distilbert": {"model_type": "distilbert", "dim": 768, "n_layers": 6,
                   "hidden_dim": 3072, "n_heads": 12, "vocab_size": 30522,
                   "max_position_embeddings": 512},
    "all-minilm-l6-v2": {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
                         "intermediate_size": 1536, "num_attention_heads": 12,
                         "vocab_size": 30522, "max_position_embeddings": 512},
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
                     "intermediate_size": 1536, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "vocab_size": 49152,
                     "tie_word_embeddings": True},
}
#: latency columns in the shipped catalogue's order
CATALOGUE_ORDER = ("cpu", "gpu", "npu")
ALIASES = {"bert-base-uncased": "bert-base", "distilbert-base-uncased": "distilbert"}


def model_config(model: str, base_dir: Path | None = None) -> tuple[str, dict]:
    """(name, config dict) for a built-in name or a ``config.json`` path / folder.
    Raises FleetsimInputError naming the allowed values."""
    key = ALIASES.get(model.strip().lower(), model.strip().lower())
    if key in KNOWN_CONFIGS:
        return key, KNOWN_CONFIGS[key]
    p = Path(model).expanduser()
    if base_dir is not None and not p.is_absolute():
        p = Path(base_dir) / p
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FleetsimInputError(
            f"--model: {model!r} is neither a known model ({', '.join(KNOWN_CONFIGS)}) nor a "
            "config.json file or a folder holding one (or give --flops-per-token)"
        )
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FleetsimInputError(f"{p}: not a readable JSON config ({exc})") from None
    if not isinstance(cfg, dict):
        raise FleetsimInputError(f"{p}: expected a JSON object (a Hugging Face config.json)")
    return p.parent.name if p.name == "config.json" else p.stem, cfg


def job_flops(
    batch: int, seq_len: int, model: str | None = None, flops_per_token: float | None = None,
    base_dir: Path | None = None,
) -> tuple[str, float]:
    """(model name, forward FLOPs of one batch) by the latency model's formula."""
    if batch < 1 or seq_len < 1:
        raise FleetsimInputError(
            f"--batch {batch} / --seq-len {seq_len}: both must be integers >= 1")
    if (model is None) == (flops_per_token is None):
        raise FleetsimInputError(
            "traces catalogue: give exactly one of --model (a known name or a config.json) "
            "and --flops-per-token")
    if flops_per_token is not None:
        if not (math.isfinite(flops_per_token) and flops_per_token > 0):
            raise FleetsimInputError(
                f"--flops-per-token: {flops_per_token!r} (allowed: a number > 0)")
        return f"{flops_per_token:g} FLOPs/token", float(flops_per_token) * batch * seq_len
    name, cfg = model_config(str(model), base_dir)
    facts = facts_from_hf_config(cfg, name, batch, seq_len, trainable_params=0)
    return name, float(facts.flops_per_token) * batch * seq_len


def reference_forward_seconds(measured_s: float, job_forward_flops: float) -> float:
    """Seconds per reference forward (BERT-base 8 x 128) for a forward of
    ``job_forward_flops`` FLOPs measured at ``measured_s`` seconds."""
    if not (math.isfinite(measured_s) and measured_s > 0):
        raise FleetsimInputError(f"--from-latency: {measured_s!r} (allowed: seconds > 0)")
    return float(measured_s) * REFERENCE_FLOPS / float(job_forward_flops)


@dataclass(frozen=True)
class Measurement:
    backend: str
    seconds: float


def parse_latency(text: str) -> Measurement:
    """``SECONDS`` (the CPU) or ``BACKEND=SECONDS`` (cpu, gpu, npu)."""
    backend, _, value = text.rpartition("=")
    backend = backend.strip().lower() or "cpu"
    if backend not in BACKENDS:
        raise FleetsimInputError(
            f"--from-latency {text}: backend {backend!r} (allowed: {', '.join(BACKENDS)}; "
            "e.g. --from-latency npu=0.12)")
    try:
        seconds = float(value)
    except ValueError:
        raise FleetsimInputError(
            f"--from-latency {text}: {value!r} is not a number of seconds "
            "(allowed: SECONDS or BACKEND=SECONDS)") from None
    return Measurement(backend, seconds)


def catalogue_row(
    phone_model: str,
    ram_gb: float,
    measurements: list[Measurement],
    batch: int,
    seq_len: int,
    model: str | None = None,
    flops_per_token: float | None = None,
    base_dir: Path | None = None,
) -> pd.DataFrame:
    """One catalogue row (the columns :func:`fleetsim.traces.tables.load_catalogue`
    reads) from forwards measured on ``model`` at ``batch`` x ``seq_len``.

    Raises FleetsimInputError for a missing CPU figure (every catalogue row has one), a
    backend given twice, or bad numbers.  A converted value over 60 s warns
    (:mod:`fleetsim.traces.plausibility`: milliseconds written as seconds)."""
    from fleetsim.traces.plausibility import MAX_FORWARD_S, warn

    if not phone_model.strip():
        raise FleetsimInputError("--phone: the phone model's name is empty")
    if not (math.isfinite(ram_gb) and ram_gb > 0):
        raise FleetsimInputError(f"--ram-gb: {ram_gb!r} (allowed: GB > 0)")
    seen = [m.backend for m in measurements]
    dup = {b for b in seen if seen.count(b) > 1}
    if dup:
        raise FleetsimInputError(
            f"--from-latency: backend {sorted(dup)[0]!r} given twice (allowed: once each)")
    if "cpu" not in seen:
        raise FleetsimInputError(
            "--from-latency: a catalogue row needs the CPU's latency (allowed: SECONDS or "
            "cpu=SECONDS, plus gpu=SECONDS / npu=SECONDS where measured)")
    name, flops = job_flops(batch, seq_len, model, flops_per_token, base_dir)
    row: dict[str, object] = {"phone_model": phone_model.strip(), "ram_gb": float(ram_gb)}
    for b in CATALOGUE_ORDER:
        hit = [m for m in measurements if m.backend == b]
        row[f"{b}_ref_forward_s"] = (
            reference_forward_seconds(hit[0].seconds, flops) if hit else float("nan"))
    for m in measurements:
        if m.seconds > MAX_FORWARD_S:
            warn(f"--from-latency {m.backend}={m.seconds:g}: {m.seconds:g} s for one forward "
                 f"of {name} at batch {batch} x seq {seq_len} is over {MAX_FORWARD_S:g} s; "
                 f"likely unit slip: milliseconds written as seconds ({m.seconds:g} ms = "
                 f"{m.seconds / 1000:g} s)")
    row["latency_method"] = ";".join(f"{m.backend}=measured" for m in measurements)
    row["source"] = (
        "converted by fleetsim traces catalogue --from-latency: "
        + "; ".join(f"{m.backend} {m.seconds:g} s" for m in measurements)
        + f" for one forward of {name} at batch {batch} x seq {seq_len}, times "
        f"F(BERT-base, {REFERENCE_BATCH} x {REFERENCE_SEQ_LEN}) / F({name}, {batch} x "
        f"{seq_len}) = {REFERENCE_FLOPS:.4g} / {flops:.4g}"
    )
    return pd.DataFrame([row])


def append_row(path: Path, row: pd.DataFrame) -> None:
    """Write ``row`` as a new catalogue file, or append it to an existing catalogue
    (its columns kept; a phone model already present is refused)."""
    from fleetsim.record.atomic import write_text
    from fleetsim.traces.tables import load_catalogue, read_table

    path = Path(path)
    if path.exists():
        load_catalogue(path)  # the file must be a valid catalogue already
        old = read_table(path)
        name = str(row["phone_model"].iloc[0])
        if name in set(old["phone_model"].astype(str).str.strip()):
            raise FleetsimInputError(
                f"{path}: column 'phone_model': {name!r} is already in the catalogue "
                "(allowed: a new phone model name)")
        df = pd.concat([old, row], ignore_index=True)
    else:
        df = row
    write_text(path, df.to_csv(index=False))
