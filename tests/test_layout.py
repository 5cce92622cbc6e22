"""The package layout is the flow: every import runs down it, and no module graph has a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import overtrain

PACKAGE_ROOT = Path(overtrain.__file__).parent
SHARED_LEAVES = {"errors", "atomic", "process_lock", "config", "units", "precision", "provenance", "progress", "hub_files"}
STAGE_RANK = {
    "data": 1, "model": 2, "checkpoints": 3, "families": 3.5, "pretrain": 4, "tasks": 5, "probes": 6, "multimodal": 6.5,
    "results": 7, "theory": 8, "sweep": 8, "cli": 9, "__main__": 10,
}
"""A module may import the shared leaves, its own stage, and stages of lower rank; never a later one."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT).with_suffix("").parts
    return ".".join(part for part in parts if part != "__init__") or "__init__"


def _imports(path: Path) -> set[str]:
    """Every overtrain module ``path`` imports, at top level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("overtrain."):
            found.add(node.module.removeprefix("overtrain."))
            found.update(f"{node.module.removeprefix('overtrain.')}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("overtrain.") for alias in node.names if alias.name.startswith("overtrain."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
    return {name: {target for target in _imports(path) if target in modules and target != name} for name, path in modules.items()}


def _stage(module: str) -> str:
    return module.split(".")[0]


def test_imports_run_down_the_flow() -> None:
    backwards = []
    for module, targets in _graph().items():
        stage = _stage(module)
        if stage in SHARED_LEAVES or stage == "__init__":
            allowed = lambda target: _stage(target) in SHARED_LEAVES
        else:
            allowed = lambda target, stage=stage: (
                _stage(target) in SHARED_LEAVES or _stage(target) == stage or STAGE_RANK[_stage(target)] < STAGE_RANK[stage]
            )
        backwards += [f"{module} -> {target}" for target in targets if not allowed(target)]
    assert not backwards, "imports that run back up the flow:\n" + "\n".join(sorted(backwards))


def test_every_stage_is_known() -> None:
    stages = {_stage(module) for module in _graph()}
    assert stages <= set(STAGE_RANK) | SHARED_LEAVES | {"__init__"}, stages - set(STAGE_RANK) - SHARED_LEAVES


def test_module_graph_has_no_cycle() -> None:
    graph, state, cycles = _graph(), {}, []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
