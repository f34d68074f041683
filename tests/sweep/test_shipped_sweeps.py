"""Every sweep file shipped under scenarios/sweeps/ expands into valid runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.sweep.config import load_sweep
from fleetsim.sweep.plan import plan_sweep

SWEEPS = sorted((Path(__file__).resolve().parents[2] / "scenarios" / "sweeps").glob("*.yaml"))


def test_there_is_a_shipped_sweep():
    assert SWEEPS


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_shipped_sweep_is_valid(path):
    sweep = load_sweep(path)
    runs = plan_sweep(sweep)
    assert len(runs) >= 2
    assert len({r.run_id for r in runs}) == len(runs)
    assert all(r.resolved_yaml for r in runs)
