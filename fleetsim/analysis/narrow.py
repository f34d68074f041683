"""What ``fleetsim compare`` prints: the comparison table of
:func:`fleetsim.analysis.report.comparison_table` (one wide row per group, as
``comparison.csv`` holds it) as a narrow text table with the targets as rows, or as JSON
with the same numbers.

Narrow table: one row per group and target accuracy: the group's run count and mean final
accuracy with its 95 % interval (on the group's first row only), the target, the median
simulated hours to it with its 95 % interval (Kaplan–Meier, runs that never reached it
censored; ∞ = not reached) and how many runs reached it.  Without targets (systems-only
runs) one row per group: runs, simulated hours, committed steps.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import pandas as pd

_TTA_MEDIAN = re.compile(r"^tta_(.+)_median_h$")


def read_comparison(path: Path) -> pd.DataFrame:
    """``comparison.csv`` as written (pandas reads floats back exactly)."""
    return pd.read_csv(path)


def targets_of(table: pd.DataFrame) -> list[str]:
    """The target accuracies of the table's ``tta_<target>_median_h`` columns, as written."""
    return [m.group(1) for c in table.columns if (m := _TTA_MEDIAN.match(str(c)))]


def _number(value: Any, digits: int = 4) -> str:
    """``digits`` significant digits; — for missing, ∞ for not reached / unbounded."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    value = float(value)
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}g}"


def _with_interval(mean: Any, low: Any, high: Any, digits: int = 4) -> str:
    text = _number(mean, digits)
    if text in ("—", "∞") or _number(low, digits) == "—":
        return text
    return f"{text} ({_number(low, digits)}–{_number(high, digits)})"


def narrow_comparison(table: pd.DataFrame, by: Optional[str] = None) -> str:
    """The comparison as a narrow text table (targets as rows; see the module docstring);
    column widths fit the longest cell, two spaces apart."""
    key = by if by is not None else "run"
    targets = targets_of(table)
    accuracy = "final_accuracy" in table.columns
    rows: list[list[str]] = []
    if targets:
        header = [key, "runs", "final accuracy (95% CI)" if accuracy else "final accuracy",
                  "target", "hours to target (95% CI)", "reached"]
    else:
        header = [key, "runs", "simulated h", "steps"]
    for _, r in table.iterrows():
        acc = (_with_interval(r["final_accuracy"], r.get("final_accuracy_ci_low"),
                              r.get("final_accuracy_ci_high")) if accuracy else "—")
        if not targets:
            rows.append([_cell(r[key]), str(int(r["runs"])), _number(r["simulated_hours"]),
                         _number(r["steps"])])
            continue
        for i, target in enumerate(targets):
            name = f"tta_{target}"
            first = i == 0
            rows.append([
                _cell(r[key]) if first else "", str(int(r["runs"])) if first else "",
                acc if first else "", target,
                _with_interval(r[f"{name}_median_h"], r[f"{name}_ci_low_h"],
                               r[f"{name}_ci_high_h"]),
                str(r[f"{name}_reached"]),
            ])
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header, *rows])


def _cell(value: Any) -> str:
    return _number(value) if isinstance(value, float) else str(value)


def _plain(value: Any) -> Any:
    """A JSON value: NaN -> null, ±infinity -> "inf"/"-inf" (strict JSON has neither)."""
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def comparison_json(table: pd.DataFrame, by: Optional[str],
                    files: Mapping[str, Path]) -> str:
    """``{"by", "targets", "groups": [one object per row of comparison.csv, its columns
    and numbers], "files"}`` as strict JSON (NaN as null, infinity as "inf")."""
    groups = [{str(k): _plain(v) for k, v in row.items()}
              for row in table.to_dict(orient="records")]
    doc = {"by": by if by is not None else "run", "targets": [float(t) for t in targets_of(table)],
           "groups": groups, "files": {k: str(v) for k, v in files.items()}}
    return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False)
