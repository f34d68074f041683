"""The house rules, checked: the simulated side never imports torch, the numerical engine
never imports simpy (so it cannot read the clock)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


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


# ---------------------------------------------------------------- the house: floors, no circles
# Every fleetsim module's imports, found by reading the source (module level, inside
# functions and under ``if TYPE_CHECKING:`` alike), as edges module → module.  ``from a.b
# import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; importing a
# module does not count as importing its parent packages' ``__init__``.

#: The floors, low to high (docs/architecture.md): a module may import its own floor and
#: the floors below, never one above.  A module's floor is that of the longest key that
#: names it or a package above it (``"analysis.study"`` before ``"analysis"``).
FLOORS: list[set[str]] = [
    # ground: the shared vocabulary and contracts
    {"fleetsim", "workload", "numerics_api", "rng", "errors", "safe_yaml"},
    # what a run writes into (tables, event log, summary, checkpoints, atomic writes)
    {"record"},
    {"traces"},  # device facts and availability
    {"fleet"},  # the SimPy side
    {"policies"},
    {"protocols"},  # the server
    {"numerics"},  # the torch side, beside the simulated side (neither imports the other)
    {"analysis"},  # readers, metrics, statistics and figures of run directories
    {"scenario", "cost_model", "callbacks", "callback_registry", "trackers", "run_setup",
     "runner"},
    {"sweep"},
    {"analysis.study"},  # a study = a sweep + its analysis
    {"cli", "__main__"},
]


def _fleetsim_modules() -> dict[str, Path]:
    root = Path(__file__).resolve().parents[1]
    modules = {}
    for path in sorted((root / "fleetsim").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _import_graph() -> dict[str, dict[str, list[int]]]:
    """module → {imported fleetsim module → line numbers}."""
    modules = _fleetsim_modules()

    def owner(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, dict[str, list[int]]] = {}
    for module, path in modules.items():
        edges: dict[str, list[int]] = {}
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [owner(a.name) for a in node.names if a.name.split(".")[0] == "fleetsim"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                if base.split(".")[0] == "fleetsim":
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else owner(base)
                               for a in node.names]
            for target in targets:
                if target != module:
                    edges.setdefault(target, []).append(node.lineno)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def _floor(module: str) -> int:
    parts = module.split(".")[1:] or ["fleetsim"]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        for level, names in enumerate(FLOORS):
            if key in names:
                return level
    raise AssertionError(f"{module}: no floor in tests/test_layering.py FLOORS "
                         "(add it, and to docs/architecture.md)")


def test_cycle_finder_finds_a_known_cycle():
    # the finder itself can fail: a ring of three and a tail
    graph = {"a": {"b": [1]}, "b": {"c": [1]}, "c": {"a": [1]}, "d": {"a": [1]}, "e": {}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": [1]}, "b": {}}) == []


def test_no_import_cycles_between_modules():
    graph = _import_graph()
    assert "fleetsim.runner" in graph and graph["fleetsim.cli"]  # sanity: the scan sees imports
    cycles = _cycles(graph)
    detail = []
    for members in cycles:
        edges = [f"{a} → {b} (line {graph[a][b][0]})"
                 for a in members for b in sorted(graph[a]) if b in members]
        detail.append("cycle of " + ", ".join(members) + ": " + "; ".join(edges))
    assert cycles == [], "\n".join(detail)


def _upward(graph: dict[str, dict[str, list[int]]]) -> list[str]:
    return sorted(
        f"{a}:{lines[0]} imports {b} (floor {_floor(a)} → {_floor(b)})"
        for a, edges in graph.items() for b, lines in edges.items() if _floor(b) > _floor(a)
    )


def test_floor_check_finds_an_upward_import():
    assert _floor("fleetsim.analysis.study") > _floor("fleetsim.sweep.execute")
    assert _floor("fleetsim.sweep.execute") > _floor("fleetsim.runner")
    assert _floor("fleetsim.runner") > _floor("fleetsim.analysis.plots")
    assert _floor("fleetsim.traces.window_cursor") < _floor("fleetsim.fleet.fleet")
    graph = {"fleetsim.traces.base": {"fleetsim.fleet.fleet": [7]},
             "fleetsim.fleet.fleet": {"fleetsim.traces.base": [3]}}
    assert _upward(graph) == ["fleetsim.traces.base:7 imports fleetsim.fleet.fleet (floor 2 → 3)"]


def test_every_module_has_a_floor():
    for module in _fleetsim_modules():
        _floor(module)


def test_no_import_points_up_the_floors():
    upward = _upward(_import_graph())
    assert upward == [], "\n".join(upward)


# ------------------------------------------------------------------------ rooms of a size
#: No module over this many lines: a longer one holds more than one concept.
MAX_MODULE_LINES = 450

#: The modules still over the limit, each with its reason in docs/architecture.md
#: ("Module size"); a module that shrinks under the limit must leave this list.
LONG_MODULES = {
    "fleetsim/analysis/metrics.py",
}


def _long_modules() -> dict[str, int]:
    root = Path(__file__).resolve().parents[1]
    sizes = {}
    for path in sorted((root / "fleetsim").rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            sizes[path.relative_to(root).as_posix()] = lines
    return sizes


def test_no_module_over_the_line_limit():
    long = _long_modules()
    assert set(long) - LONG_MODULES == set(), f"modules over {MAX_MODULE_LINES} lines: {long}"
    # the allow-list holds only modules still over the limit, each documented
    assert LONG_MODULES - set(long) == set(), "under the limit now: drop from LONG_MODULES"
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    section = doc.split("## Module size", 1)[1].split("\n## ", 1)[0]
    for path in LONG_MODULES:
        assert f"`{path.removeprefix('fleetsim/')}`" in section, path
