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


def _numerics_imports(package: str) -> list[str]:
    """Every ``import fleetsim.numerics…`` / ``from fleetsim.numerics… import`` in a package,
    at any depth of the code (lazy imports inside functions count too)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "fleetsim" / package
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}:{node.lineno} {n}" for n in names
                      if n == "fleetsim.numerics" or n.startswith("fleetsim.numerics.")]
    return found


def test_packages_below_the_server_import_nothing_from_numerics():
    # Shared vocabulary (ModelFacts, backends, job kinds) lives in fleetsim.workload, the
    # server–numerics contract in fleetsim.numerics_api.
    for package in ("fleet", "traces", "record", "policies", "protocols"):
        assert _numerics_imports(package) == [], package
