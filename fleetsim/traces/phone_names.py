"""Phone model names of a population or a trace checked against a catalogue
(``fleetsim traces validate FILE --catalogue CATALOGUE``).

Matching: a population's name matches a catalogue phone when equal after stripping
surrounding spaces (as runs read it, :func:`fleetsim.traces.tables.load_population`); a
trace's device model string (FedScale's ``model``) also when equal after :func:`name_key`
(case, spaces, hyphens and underscores ignored: ``"galaxy-s24"`` is ``"Galaxy S24"``), or
when it is an Android ``Build.MODEL`` code that ``device_traces/catalogue/model_aliases.csv``
(FLASH's ``real2benchmark.json``: ``CPH1823`` -> ``Oppo F9``) names a catalogue phone for.
Every
unknown name is listed in ONE error line, each with up to two close catalogue names
(:func:`difflib.get_close_matches`, cutoff 0.6) as "did you mean".
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fleetsim.errors import FleetsimInputError


def name_key(name: str) -> str:
    """Lower case, spaces / hyphens / underscores removed (the matching key)."""
    return re.sub(r"[\s\-_]+", "", str(name)).lower()


#: Build.MODEL code -> catalogue phone name (FLASH real2benchmark.json, see module doc)
MODEL_ALIASES = Path(__file__).resolve().parents[2] / "device_traces" / "catalogue" / \
    "model_aliases.csv"


def build_model_aliases() -> dict[str, str]:
    """:func:`name_key` of each Build.MODEL code -> catalogue phone name."""
    if not MODEL_ALIASES.exists():
        return {}
    df = pd.read_csv(MODEL_ALIASES, dtype=str)
    return {name_key(code): str(name) for code, name in zip(df["build_model"], df["phone_model"])}


def match_names(
    names: Iterable[str], catalogue: pd.DataFrame, loose: bool = False
) -> dict[str, str | None]:
    """Each distinct name -> the catalogue's ``phone_model`` it matches, or None
    (``loose``: compared by :func:`name_key`, then through the Build.MODEL aliases;
    else stripped names exactly)."""
    key = name_key if loose else (lambda n: str(n).strip())
    index = {key(n): str(n) for n in catalogue["phone_model"]}
    if loose:
        present = set(index.values())
        for code, phone in build_model_aliases().items():
            if phone in present:
                index.setdefault(code, phone)
    return {str(n): index.get(key(n)) for n in dict.fromkeys(map(str, names))}


def did_you_mean(name: str, catalogue: pd.DataFrame) -> str:
    """``'Pixle 7' (did you mean 'Pixel 7'?)`` or ``'Foo' (no close catalogue name)``."""
    names = [str(n) for n in catalogue["phone_model"]]
    keys = {name_key(n): n for n in names}
    close = difflib.get_close_matches(name_key(name), list(keys), n=2, cutoff=0.6)
    if not close:
        return f"{name!r} (no close catalogue name)"
    return f"{name!r} (did you mean {' or '.join(repr(keys[c]) for c in close)}?)"


def unknown_names_error(
    path: Path, column: str, unknown: list[str], catalogue: pd.DataFrame, catalogue_path: Path
) -> FleetsimInputError:
    """One line: every unknown name, each with its did-you-mean."""
    listed = ", ".join(did_you_mean(n, catalogue) for n in unknown)
    plural = "s" if len(unknown) > 1 else ""
    return FleetsimInputError(
        f"{path}: {column}: {len(unknown)} unknown phone model{plural} {listed}, not in the "
        f"catalogue {Path(catalogue_path).name} (allowed: the catalogue's {len(catalogue)} "
        "phone models)"
    )


def check_population(
    path: Path, catalogue: pd.DataFrame, catalogue_path: Path
) -> dict[str, object]:
    """Validate a population (``phone_model,weight``) against ``catalogue``: raises ONE
    FleetsimInputError listing every unknown name; else the counts for the summary."""
    from fleetsim.traces.tables import numeric_column, read_table, require_columns

    df = read_table(path)
    require_columns(df, path, ("phone_model", "weight"))
    weights = numeric_column(df, path, "weight", non_negative=True)
    names = df["phone_model"].astype(str).str.strip()
    matched = match_names(names, catalogue)
    unknown = [n for n, m in matched.items() if m is None]
    if unknown:
        raise unknown_names_error(path, "column 'phone_model'", unknown, catalogue,
                                  catalogue_path)
    if weights.sum() <= 0:
        raise FleetsimInputError(f"{path}: column 'weight': weights sum to zero (need > 0)")
    return {
        "catalogue": Path(catalogue_path).name,
        "rows": int(len(df)),
        "phone_models": int(len(matched)),
        "known_phone_models": f"{len(matched)}/{len(matched)}",
        "catalogue_phone_models_used": f"{len(set(matched.values()))}/{len(catalogue)}",
    }
