"""The layering between the packages, read from every import statement (module level or inside a function):

    lab            ->  vrp.tools and below, data_modules: the synthetic world, stage 0, probe / ablate / evidence
    vrp.cli        ->  anything below: the `vrp` entry point, dispatching to the commands
    vrp.tools      ->  vrp.training, vrp.evaluation, vrp.models, vrp.scoring, data_modules, vrp.runs
                       (the commands: fit / validate / test / predict, cache, track, export, ask, lmms-task)
    vrp.training   ->  vrp.models, vrp.scoring, data_modules       (never vrp.evaluation)
    vrp.evaluation ->  vrp.models, vrp.scoring, data_modules, vrp.runs   (never vrp.training)
    vrp.scoring    ->  vrp.models, data_modules
    vrp.models     ->  nothing of the others (plain torch)
    data_modules   ->  vrp.models.paths (where a tokenizer comes from), vrp.models.constants (the shared constants)
    vrp.runs       ->  nothing of vrp (the run-folder layout)

Nothing imports a package above its own: no layer below `vrp.cli` imports it, none below `vrp.tools` imports a
command, so there is no import circle; and nothing in the library (`vrp`, `data_modules`) imports the lab.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "data_modules",
    "vrp.runs",
    "vrp.models",
    "vrp.scoring",
    "vrp.training",
    "vrp.evaluation",
    "vrp.tools",
    "vrp.cli",
]
BELOW_TOOLS = {"vrp.models", "vrp.scoring", "vrp.training", "vrp.evaluation", "data_modules", "vrp.runs"}
ALLOWED = {
    "data_modules": {"vrp.models.paths", "vrp.models.constants"},
    "vrp.runs": set(),
    "vrp.models": set(),
    "vrp.scoring": {"vrp.models", "data_modules"},
    "vrp.training": {"vrp.models", "vrp.scoring", "data_modules"},
    "vrp.evaluation": {"vrp.models", "vrp.scoring", "data_modules", "vrp.runs"},
    "vrp.tools": BELOW_TOOLS,
    "vrp.cli": BELOW_TOOLS | {"vrp.tools"},
    "lab": BELOW_TOOLS | {"vrp.tools"},
}


def _imports(path: Path) -> list[str]:
    """Every module (or ``module.name``) imported in ``path``, at module level or inside a function."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def _package_of(module: str) -> str | None:
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), None)


def _files(package: str) -> list[Path]:
    path = ROOT / package.replace(".", "/")
    return [path.with_suffix(".py")] if path.with_suffix(".py").is_file() else sorted(path.rglob("*.py"))


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {p: set() for p in [*PACKAGES, "lab"]}
    for package in graph:
        for path in _files(package):
            for module in _imports(path):
                target = _package_of(module)
                if target and target != package:
                    shared = next(
                        (m for m in ("vrp.models.paths", "vrp.models.constants") if module.startswith(m)), None
                    )
                    graph[package].add(shared if package == "data_modules" and shared else target)
    return graph


@pytest.mark.parametrize("package", [*PACKAGES, "lab"])
def test_package_imports_only_the_layers_below(package):
    graph = _graph()
    assert graph[package] <= ALLOWED[package], f"{package} imports {sorted(graph[package] - ALLOWED[package])}"


@pytest.mark.parametrize(
    "library",
    [
        "vrp",
        "data_modules",
    ],
)
def test_the_library_imports_nothing_of_the_lab(library):
    found = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _files(library)
        for module in _imports(path)
        if module == "lab" or module.startswith("lab.")
    ]
    assert not found, f"{library} imports the lab: {found}"


def test_every_vrp_module_is_in_a_layer():
    """A new module or package under vrp/ gets a place in the layering before it can import anything."""
    known = {p.split(".")[1] for p in PACKAGES if p.startswith("vrp.")}
    found = {p.stem for p in (ROOT / "vrp").iterdir() if (p.suffix == ".py" or p.is_dir()) and p.stem != "__pycache__"}
    assert found - {"__init__", "__main__"} == known


def test_the_tool_commands_are_in_the_tools_layer():
    from vrp.cli import TOOLS

    assert all(module.startswith("vrp.tools.") for module in TOOLS.values())
    assert all((ROOT / (module.replace(".", "/") + ".py")).is_file() for module in TOOLS.values())
