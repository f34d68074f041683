"""Shipped tables (``device_traces/``) and validated loading of user tables.

Every loader raises :class:`fleetsim.errors.FleetsimInputError` with a message
naming the file, the column (and row) and the allowed values.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.files import refuse_special_file
from fleetsim.workload import BACKENDS

#: repository folder holding the shipped tables
DATA_DIR = Path(__file__).resolve().parents[2] / "device_traces"
CATALOGUES = {"default": DATA_DIR / "catalogue" / "phones.csv"}
POPULATIONS = {
    "flash_1000": DATA_DIR / "population" / "flash_1000.csv",
    "market_share_2024": DATA_DIR / "population" / "market_share_2024.csv",
}
BUILTIN_POPULATIONS = ("flash_1000", "market_share_2024", "uniform", "paper_fwdllm",
                       "trace_models")
NETWORK_TABLES = {
    "hsdpa_3g": DATA_DIR / "network" / "hsdpa_3g.csv",
    "5g_mmwave": DATA_DIR / "network" / "5g_mmwave.csv",
    "flash_wifi": DATA_DIR / "network" / "flash_wifi.csv",
}
AVAILABILITY_QUANTILES = DATA_DIR / "availability" / "flash_1000_totals_quantiles.csv"
AVAILABILITY_CALIBRATION = DATA_DIR / "availability" / "flash_1000_calibration.json"
PAPER_PHONE = "FwdLLM paper profile"


TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".txt": "csv",
                  ".tsv": "tsv"}
#: bytes read to tell a table's format from its content
SNIFF_BYTES = 4096


def sniff_table(path: Path) -> str | None:
    """'parquet', 'tsv' or 'csv' from the first bytes of ``path`` (no suffix needed), or
    None when it does not look like a table: Parquet by its ``PAR1`` magic; text whose
    first line holds a tab (TSV) or a comma (CSV) and no NUL byte."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError:
        return None
    if head.startswith(b"PAR1"):
        return "parquet"
    if not head or b"\0" in head:
        return None
    try:
        first = head.decode("utf-8").splitlines()[0]
    except (UnicodeDecodeError, IndexError):
        return None
    if first.lstrip().startswith(("{", "[")):
        return None
    if "\t" in first:
        return "tsv"
    if "," in first:
        return "csv"
    return None


def read_table(path: Path) -> pd.DataFrame:
    """CSV, TSV or Parquet into a DataFrame; clear errors for missing/empty/unreadable files.

    The format comes from the suffix (``.csv``/``.txt``, ``.tsv``, ``.parquet``/``.pq``),
    or, for any other suffix or none, from the content (:func:`sniff_table`)."""
    path = refuse_special_file(Path(path))
    if not path.exists():
        raise FleetsimInputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise FleetsimInputError(f"{path}: file is empty")
    kind = TABLE_SUFFIXES.get(path.suffix.lower()) or sniff_table(path)
    try:
        if kind == "parquet":
            df = pd.read_parquet(path)
        elif kind in ("csv", "tsv"):
            sep = "\t" if kind == "tsv" else ","
            _refuse_extra_fields(path, sep)
            # index_col=False: never turn the first column into an index (pandas does so,
            # silently shifting every column, when rows carry one field more than the header)
            df = pd.read_csv(path, sep=sep, index_col=False)
        else:
            raise FleetsimInputError(
                f"{path}: neither the suffix {path.suffix!r} nor the content tells a table "
                "format (allowed: .csv, .tsv, .parquet, or CSV/TSV text / Parquet content)"
            )
    except FleetsimInputError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for a broken file
        raise FleetsimInputError(f"{path}: cannot be read as a table ({exc})") from None
    if len(df) == 0:
        raise FleetsimInputError(f"{path}: table has a header but no rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _refuse_extra_fields(path: Path, sep: str) -> None:
    """A row with more fields than the header has no column for its extra values: refuse
    it, naming the line (pandas would shift the columns or drop the values)."""
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle, delimiter=sep)
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            if len(row) > len(header) and any(field.strip() for field in row[len(header):]):
                raise FleetsimInputError(
                    f"{path}: line {reader.line_num}: {len(row)} fields but the header has "
                    f"{len(header)} ({', '.join(h.strip() for h in header)}); allowed: one "
                    "value per header column")


def require_columns(df: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FleetsimInputError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(required: {', '.join(columns)}; found: {', '.join(map(str, df.columns))})"
        )


def numeric_column(
    df: pd.DataFrame,
    path: Path,
    column: str,
    *,
    positive: bool = False,
    non_negative: bool = False,
    allow_nan: bool = False,
) -> np.ndarray:
    """Column as float64, with the first offending row named in the error."""
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad_text = np.isnan(values) & raw.notna().to_numpy()
    if bad_text.any():
        i = int(np.nonzero(bad_text)[0][0])
        raise FleetsimInputError(
            f"{path}: column {column!r} row {i + 1}: {raw.iloc[i]!r} is not a number"
        )
    if not allow_nan and np.isnan(values).any():
        i = int(np.nonzero(np.isnan(values))[0][0])
        raise FleetsimInputError(f"{path}: column {column!r} row {i + 1}: value is missing")
    finite = ~np.isnan(values)
    if np.isinf(values[finite]).any():
        i = int(np.nonzero(np.isinf(values))[0][0])
        raise FleetsimInputError(f"{path}: column {column!r} row {i + 1}: value is infinite")
    if positive and (values[finite] <= 0).any():
        i = int(np.nonzero(finite & (values <= 0))[0][0])
        raise FleetsimInputError(
            f"{path}: column {column!r} row {i + 1}: {values[i]:g} is not allowed "
            "(allowed: numbers > 0)"
        )
    if non_negative and (values[finite] < 0).any():
        i = int(np.nonzero(finite & (values < 0))[0][0])
        raise FleetsimInputError(
            f"{path}: column {column!r} row {i + 1}: {values[i]:g} is not allowed "
            "(allowed: numbers >= 0)"
        )
    return values


# ---------------------------------------------------------------- catalogue

CATALOGUE_REQUIRED = ("phone_model", "ram_gb", "cpu_ref_forward_s")
CATALOGUE_BACKENDS = BACKENDS


def load_catalogue(path: Path) -> pd.DataFrame:
    """Validated catalogue: one row per phone model, latency columns per backend
    (seconds per reference forward, NaN = backend absent), ``ram_gb``.

    The unit of ``<backend>_ref_forward_s``: seconds for ONE forward pass of BERT-base
    (110M parameters, 12 layers, width 768) at batch 8 x sequence length 128 on that
    phone and backend (:data:`fleetsim.traces.latency.REFERENCE_FLOPS`); a latency
    measured on another model converts with :mod:`fleetsim.traces.catalogue_row`.  A
    value over 60 s gets a warning naming the likely unit slip
    (:mod:`fleetsim.traces.plausibility`)."""
    path = Path(path)
    df = read_table(path)
    require_columns(df, path, CATALOGUE_REQUIRED)
    names = df["phone_model"].astype(str).str.strip()
    if (names == "").any() or df["phone_model"].isna().any():
        i = int(np.nonzero(((names == "") | df["phone_model"].isna()).to_numpy())[0][0])
        raise FleetsimInputError(f"{path}: column 'phone_model' row {i + 1}: name is empty")
    dup = names[names.duplicated()]
    if len(dup):
        raise FleetsimInputError(
            f"{path}: column 'phone_model': {dup.iloc[0]!r} appears more than once"
        )
    out = pd.DataFrame({"phone_model": names})
    out["ram_gb"] = numeric_column(df, path, "ram_gb", positive=True)
    out["cpu_ref_forward_s"] = numeric_column(df, path, "cpu_ref_forward_s", positive=True)
    for b in ("gpu", "npu"):
        col = f"{b}_ref_forward_s"
        out[col] = (
            numeric_column(df, path, col, positive=True, allow_nan=True)
            if col in df.columns
            else np.nan
        )
    from fleetsim.traces.plausibility import check_forward_seconds

    for b in ("cpu", "gpu", "npu"):
        check_forward_seconds(path, f"{b}_ref_forward_s", out[f"{b}_ref_forward_s"])
    for extra in ("vendor", "soc", "year", "latency_method", "source"):
        out[extra] = df[extra].to_numpy() if extra in df.columns else ""
    return out.reset_index(drop=True)


@lru_cache(maxsize=8)
def _cached_catalogue(path: str, mtime: float) -> pd.DataFrame:
    return load_catalogue(Path(path))


def catalogue_for(name_or_path: str, base_dir: Path) -> tuple[pd.DataFrame, Path]:
    path = CATALOGUES.get(name_or_path)
    if path is None:
        p = Path(name_or_path).expanduser()
        path = p if p.is_absolute() else Path(base_dir) / p
        if not path.exists():
            raise FleetsimInputError(
                f"traces.catalogue: {name_or_path!r} is neither a built-in catalogue "
                f"({', '.join(CATALOGUES)}) nor an existing file ({path})"
            )
    return _cached_catalogue(str(path), path.stat().st_mtime).copy(), path


# --------------------------------------------------------------- population


def unknown_phone_error(path: Path, name: str, catalogue: pd.DataFrame, row: int) -> str:
    close = difflib.get_close_matches(name, list(catalogue["phone_model"]), n=3)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return (
        f"{path}: column 'phone_model' row {row}: unknown phone model {name!r} "
        f"(allowed: the catalogue's {len(catalogue)} phone models{hint})"
    )


def load_population(path: Path, catalogue: pd.DataFrame) -> np.ndarray:
    """Weights aligned to catalogue rows from a CSV ``phone_model,weight``."""
    path = Path(path)
    df = read_table(path)
    require_columns(df, path, ("phone_model", "weight"))
    weights = numeric_column(df, path, "weight", non_negative=True)
    index = {n: i for i, n in enumerate(catalogue["phone_model"])}
    out = np.zeros(len(catalogue))
    for row, (name, w) in enumerate(zip(df["phone_model"].astype(str).str.strip(), weights)):
        if name not in index:
            raise FleetsimInputError(unknown_phone_error(path, name, catalogue, row + 1))
        out[index[name]] += w
    if out.sum() <= 0:
        raise FleetsimInputError(f"{path}: column 'weight': weights sum to zero (need > 0)")
    return out / out.sum()


def population_weights(name_or_path: str, catalogue: pd.DataFrame, base_dir: Path) -> np.ndarray:
    """Normalised weight per catalogue row for a built-in population or a CSV path."""
    if name_or_path == "uniform":
        real = (catalogue["phone_model"] != PAPER_PHONE).to_numpy(dtype=float)
        return real / real.sum()
    if name_or_path == "paper_fwdllm":
        hit = (catalogue["phone_model"] == PAPER_PHONE).to_numpy(dtype=float)
        if hit.sum() == 0:
            raise FleetsimInputError(
                f"traces.population: 'paper_fwdllm' needs the phone model {PAPER_PHONE!r} "
                "in the catalogue"
            )
        return hit / hit.sum()
    path = POPULATIONS.get(name_or_path)
    if path is None:
        p = Path(name_or_path).expanduser()
        path = p if p.is_absolute() else Path(base_dir) / p
        if not path.exists():
            raise FleetsimInputError(
                f"traces.population: {name_or_path!r} is neither a built-in population "
                f"({', '.join(BUILTIN_POPULATIONS)}) nor an existing file ({path})"
            )
    return load_population(path, catalogue)
