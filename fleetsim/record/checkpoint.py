"""Checkpoint and exact resume of a single run.

SimPy processes are Python generators and cannot be pickled, so a checkpoint
does not freeze the interpreter; it makes the run *re-derivable*:

* the simulated side (clock, every device's state, pending events, policy
  decisions, random streams) is a deterministic function of the scenario, the
  seed and the numbers the numerics engine returned;
* so a checkpoint stores those numbers (a **journal** of every engine call's
  result, in order) plus the engine's state (trainable weights, optimiser state,
  previous gradient) at the checkpoint.

``fleetsim run --resume RUN_DIR`` rebuilds the run, replays the simulated side
with a :class:`~fleetsim.numerics.journal.JournalEngine` that answers from the journal
without computing
(and without touching θ), loads the stored engine state the moment the journal
runs out, and continues live.  The replay costs only simulated-side host time;
the result is byte-identical ``steps.parquet`` and ``events.parquet``.

**The file cannot run code.**  ``checkpoint.npz`` is a zip archive (the layout of
``numpy.savez``) of ``checkpoint.json`` (JSON: scalars, strings, lists and a few tagged
objects, see :func:`encode`) and ``a<i>.npy`` arrays read with ``allow_pickle=False``
(torch tensors are stored by :mod:`fleetsim.numerics.journal` as their bytes and dtype
name).  Reading it never imports or calls anything named inside it — the approach of
safetensors and of ``torch.load(weights_only=True)`` (CVE-2025-32434); an older
``checkpoint.pkl`` (a pickle, which *can* run code) is refused, never opened.

**A checkpoint belongs to one run.**  It records the hash of the scenario
(:func:`fleetsim.record.rundir.scenario_hash`), the absolute run directory, the SHA-256 of
every input file the scenario names (trace, catalogue, population, power table, ...) and
``checksum.sha256``: the SHA-256 of every other member.  :func:`read_checkpoint` refuses
(exit 2, one line) a file whose checksum does not match (tampered or cut short);
:func:`check_belongs` refuses one copied from another run directory, one whose scenario
hash does not match its own scenario, and :func:`check_inputs` one whose input files
changed since it was written.

Written atomically (temporary name, fsync, rename), so SIGKILL at any moment leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.numerics_api import EvalResult, StepEstimate
from fleetsim.record.atomic import atomic_path

CHECKPOINT_NAME = "checkpoint.npz"
#: The pickle checkpoints of fleetsim before format 2: refused, never unpickled.
LEGACY_CHECKPOINT_NAME = "checkpoint.pkl"
FORMAT_VERSION = 2
_META = "checkpoint.json"
_CHECKSUM = "checksum.sha256"
_FORMAT_TAG = "fleetsim-checkpoint"
# Fixed member timestamps: the same checkpoint gives the same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class Checkpoint:
    scenario_raw: dict  # the merged scenario mapping (with --set applied)
    scenario_path: str
    base_dir: str
    run_dir: str  # absolute
    committed_steps: int
    journal: list[tuple[str, Any]]
    engine_state: dict  # numpy arrays only (fleetsim.numerics.journal.portable_state)
    sim_time_s: float
    scenario_hash: str = ""  # fleetsim.record.rundir.scenario_hash of the scenario
    inputs: dict = field(default_factory=dict)  # input file (absolute) → SHA-256
    version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ encoding
# Every JSON object in checkpoint.json is one tag: {"d": [[key, value], ...]} a dict
# (any key types), {"t": [...]} a tuple, {"a": i} the array a<i>.npy, {"s": [dtype, v]} a
# numpy scalar, {"f": "nan"|"inf"|"-inf"} a non-finite float, {"StepEstimate": {...}} and
# {"EvalResult": {...}} the engine's two result types.  Lists, strings, ints, finite
# floats (written with repr: exact), booleans and null are themselves.

_DATACLASSES = {"StepEstimate": StepEstimate, "EvalResult": EvalResult}


def encode(obj: Any, arrays: list[np.ndarray]) -> Any:
    """``obj`` as JSON-able data, appending its arrays to ``arrays``.  Raises TypeError
    for anything else (a checkpoint holds data, never objects)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.generic):
        return {"s": [obj.dtype.str, encode(obj.item(), arrays)]}
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else {"f": repr(float(obj))}
    if isinstance(obj, list):
        return [encode(v, arrays) for v in obj]
    if isinstance(obj, tuple):
        return {"t": [encode(v, arrays) for v in obj]}
    if isinstance(obj, dict):
        return {"d": [[encode(k, arrays), encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be checkpointed")
        arrays.append(np.ascontiguousarray(obj))
        return {"a": len(arrays) - 1}
    for tag, cls in _DATACLASSES.items():
        if type(obj) is cls:
            values = {f.name: getattr(obj, f.name) for f in fields(cls)}
            if "handle" in values:
                values["handle"] = None  # engine-owned tensor: never stored
            return {tag: encode(values, arrays)}
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def decode(obj: Any, arrays: dict[int, np.ndarray]) -> Any:
    """Inverse of :func:`encode`.  Raises ValueError for anything :func:`encode` does
    not write."""
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, list):
        return [decode(v, arrays) for v in obj]
    if isinstance(obj, dict) and len(obj) == 1:
        (tag, value), = obj.items()
        if tag == "d":
            return {_hashable(decode(k, arrays)): decode(v, arrays) for k, v in value}
        if tag == "t":
            return tuple(decode(v, arrays) for v in value)
        if tag == "a":
            return arrays[int(value)]
        if tag == "s":
            dtype = np.dtype(str(value[0]))
            if dtype.hasobject:
                raise ValueError("object scalar")
            return dtype.type(decode(value[1], arrays))
        if tag == "f" and value in ("nan", "inf", "-inf"):
            return float(value)
        if tag in _DATACLASSES:
            kwargs = decode(value, arrays)
            cls = _DATACLASSES[tag]
            names = {f.name for f in fields(cls)}
            if not isinstance(kwargs, dict) or set(kwargs) - names:
                raise ValueError(f"bad {tag}")
            return cls(**kwargs)
    raise ValueError(f"unexpected value {str(obj)[:60]!r}")


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict, np.ndarray)):
        raise ValueError("unhashable key")
    return key


# ------------------------------------------------------------------ files


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    return info


def _checksum(members: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in members:
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_NAME


def write_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``RUN_DIR/checkpoint.npz`` atomically; returns the path."""
    arrays: list[np.ndarray] = []
    meta = {
        "format": _FORMAT_TAG,
        **{f.name: encode(getattr(ckpt, f.name), arrays) for f in fields(Checkpoint)},
    }
    members = [(_META, json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8"))]
    for i, array in enumerate(arrays):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, array, allow_pickle=False)
        members.append((f"a{i}.npy", buf.getvalue()))
    path = checkpoint_path(run_dir)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name, data in members:
            zf.writestr(_member(name), data)
        zf.writestr(_member(_CHECKSUM), _checksum(members) + "\n")
    return path


def read_checkpoint(run_dir: Path) -> Checkpoint:
    """The checkpoint of ``run_dir``.  Raises FleetsimInputError (one line) when there is
    none, when it is not a fleetsim checkpoint of this format or when its checksum does
    not match its contents.  Nothing in the file is executed."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        legacy = Path(run_dir) / LEGACY_CHECKPOINT_NAME
        if legacy.exists():
            raise FleetsimInputError(
                f"--resume {run_dir}: {LEGACY_CHECKPOINT_NAME} is a pickle of an older "
                "fleetsim and is never loaded (a pickle can run code); run the scenario again"
            )
        raise FleetsimInputError(
            f"--resume {run_dir}: no {CHECKPOINT_NAME} there (no checkpoint.pkl of an older "
            "fleetsim either); set output.checkpoint_every_minutes or "
            "output.checkpoint_every_steps to write checkpoints"
        )
    bad = f"--resume {run_dir}: {path.name} is not a fleetsim checkpoint"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if _META not in names or _CHECKSUM not in names or len(set(names)) != len(names):
                raise FleetsimInputError(bad)
            # Stored members only (what write_checkpoint writes): a member never expands
            # beyond its bytes in the file, so a zip bomb cannot exhaust memory.
            if any(info.compress_type != zipfile.ZIP_STORED for info in zf.infolist()):
                raise FleetsimInputError(bad)
            members = [(name, zf.read(name)) for name in names if name != _CHECKSUM]
            stored = zf.read(_CHECKSUM).decode("ascii", "replace").strip()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError):
        raise FleetsimInputError(bad) from None
    if _checksum(members) != stored:
        raise FleetsimInputError(
            f"--resume {run_dir}: {path.name} does not match its checksum (changed or cut "
            "short since fleetsim wrote it); refusing to resume from it"
        )
    data = dict(members)
    try:
        meta = json.loads(data.pop(_META).decode("utf-8"))
        arrays = {}
        for name, raw in data.items():
            if not (name.startswith("a") and name.endswith(".npy") and name[1:-4].isdigit()):
                raise ValueError(name)
            arrays[int(name[1:-4])] = np.lib.format.read_array(
                io.BytesIO(raw), allow_pickle=False
            )
        if not isinstance(meta, dict) or meta.pop("format", None) != _FORMAT_TAG:
            raise ValueError("format")
        values = {k: decode(v, arrays) for k, v in meta.items()}
        if values.get("version") != FORMAT_VERSION:
            raise ValueError("version")
        ckpt = Checkpoint(**values)
    except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError, RecursionError):
        raise FleetsimInputError(bad) from None
    if not isinstance(ckpt.scenario_raw, dict) or not isinstance(ckpt.journal, list):
        raise FleetsimInputError(bad)
    return ckpt


def check_belongs(ckpt: Checkpoint, run_dir: Path, scenario_hash: str) -> None:
    """Refuse a checkpoint written for another run directory, or whose scenario is not
    the one it was written with (``scenario_hash``: the hash of ``ckpt.scenario_raw``
    as validated now)."""
    here = Path(run_dir).resolve()
    if Path(ckpt.run_dir) != here:
        raise FleetsimInputError(
            f"--resume {run_dir}: {CHECKPOINT_NAME} belongs to the run directory "
            f"{ckpt.run_dir}, not {here}; a checkpoint resumes only the run that wrote it"
        )
    if ckpt.scenario_hash != scenario_hash:
        raise FleetsimInputError(
            f"--resume {run_dir}: {CHECKPOINT_NAME} records scenario {ckpt.scenario_hash[:12]} "
            f"but holds scenario {scenario_hash[:12]}; refusing to resume from it"
        )


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_digests(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of each input file (absolute path → hex), for :func:`check_inputs`."""
    return {str(Path(p).resolve()): file_digest(Path(p)) for p in sorted(set(paths))}


def check_inputs(ckpt: Checkpoint, run_dir: Path) -> None:
    """Refuse to resume when an input file the run read changed (or vanished) since the
    checkpoint: the replay would rebuild another fleet."""
    for name, digest in sorted(ckpt.inputs.items()):
        path = Path(name)
        try:
            now = file_digest(path)
        except OSError:
            raise FleetsimInputError(
                f"--resume {run_dir}: input file {path} the run read is gone or unreadable "
                "since the checkpoint; refusing to resume"
            ) from None
        if now != digest:
            raise FleetsimInputError(
                f"--resume {run_dir}: input file {path} changed since the checkpoint "
                f"(SHA-256 {digest[:12]} then, {now[:12]} now); refusing to resume"
            )
