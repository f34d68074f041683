"""The house rules, checked: the simulated side never imports torch, the numerical engine
never imports simpy (so it cannot read the clock)."""

from __future__ import annotations

import subprocess
import sys


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_simulated_side_never_imports_torch():
    for module in ("fleetsim.fleet.fleet", "fleetsim.protocols.registry",
                   "fleetsim.policies.registry", "fleetsim.traces", "fleetsim.record.recorder",
                   "fleetsim.record.checkpoint"):
        mods = imported_after(module)
        assert "torch" not in mods, f"{module} pulls in torch"


def test_numerics_never_imports_simpy():
    mods = imported_after("fleetsim.numerics.engine, fleetsim.numerics.models, "
                          "fleetsim.numerics.estimators, fleetsim.numerics.perturbation")
    assert "simpy" not in mods
    assert "torch" in mods  # sanity: the check can fail
