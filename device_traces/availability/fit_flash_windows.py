"""Fit the ``diurnal_windows`` model on the measured FLASH charging windows.

Reads ``../shared/device_data/flash_ready_windows/ready_strict.json`` (relative to the repo
root; ``--data`` to change), cleans it as ``kind: flash_windows`` does (gaps <= 60 s merged;
the observed span: whole local days with at least half the busiest day's online hours),
fits :func:`fleetsim.traces.diurnal_windows.fit_windows_model` on all kept users and writes
``device_traces/availability/flash_windows_fit.json``: the parameters, the fit statistics
against the same users, a two-fold check (fit on a seeded half of the users, compared with the
other half; and the two halves compared with each other, the sampling-noise floor), and the
source of every number.  Run from the repo root::

    .venv/bin/python device_traces/availability/fit_flash_windows.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

from fleetsim.traces.formats.diurnal_windows import (
    FIT_FILE,
    fit_statistics,
    fit_windows_model,
    measured_hourly_share,
)
from fleetsim.traces.formats.flash_windows import read_flash_windows

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "device_data" / "flash_ready_windows" / "ready_strict.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=FIT_FILE)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    m = read_flash_windows(args.data)
    params = fit_windows_model(m)
    in_sample = fit_statistics(params, m, seed=args.seed)
    perm = np.random.default_rng(args.seed).permutation(m.num_users)
    half_a, half_b = m.select(np.sort(perm[: m.num_users // 2])), m.select(
        np.sort(perm[m.num_users // 2 :])
    )
    held_out = fit_statistics(fit_windows_model(half_a), half_b, seed=args.seed)
    noise = {
        "ks_window_length": float(stats.ks_2samp(half_a.lengths_s, half_b.lengths_s).statistic),
        "hourly_share_max_abs_error": float(
            np.abs(measured_hourly_share(half_a) - measured_hourly_share(half_b)).max()
        ),
    }
    out = {
        "source": {
            "file": "../shared/device_data/flash_ready_windows/ready_strict.json (FLASH ready "
            "intervals, 2/3 of the users; see its SOURCE.md)",
            "cleaning": {"merge_gap_s": m.merge_gap_s, **m.quirks},
            "users_kept": m.num_users,
            "windows": int(len(m.start)),
            "span": f"{m.span_days} observed local days from {m.span_start_s:g} s (days "
            "whose online hours are at least half the busiest day's; online hours by day "
            + ", ".join(f"{d}: {h:.0f}" for d, h in sorted(m.day_coverage_h.items())) + ")",
            "method": "fleetsim.traces.diurnal_windows.fit_windows_model (maximum likelihood: "
            "zero-truncated negative binomial of windows per user over the observed span; "
            "24-bin start hour shares; 3-component log-normal mixture of lengths, weights per "
            "3-hour block)",
            "script": "device_traces/availability/fit_flash_windows.py",
        },
        "params": params,
        "fit_in_sample": in_sample,
        "fit_held_out_half": held_out,
        "halves_compared": noise,
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({"in_sample": in_sample, "held_out_half": held_out, "halves": noise},
                     indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
