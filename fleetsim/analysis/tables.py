"""Text forms of analysis tables (Markdown; the cell format report pages share), below
both ``report`` and ``discipline`` so that neither imports the other."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def format_value(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if value != 0 and (abs(value) >= 1e12 or abs(value) < 1e-3):
            return f"{value:.3e}"
        if abs(value) >= 1e4:
            # 80,290 s reads at a glance where 8.029e+04 does not (4 significant digits
            # turn a five-digit count of seconds into an exponent).
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table; missing values are shown as an em dash."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    lines = [header, rule]
    for row in frame.itertuples(index=False):
        cells = [format_value(v).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
