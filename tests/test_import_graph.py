"""The layering between the packages, read from every import statement (module level or inside a function):

    data_modules  ->  vrp.models.paths (where a tokenizer comes from), vrp.models.constants (the shared constants)
    vrp.models    ->  nothing of the others (plain torch)
    vrp.scoring   ->  vrp.models, data_modules
    vrp.training  ->  vrp.models, vrp.scoring, data_modules       (never vrp.evaluation)
    vrp.evaluation -> vrp.models, vrp.scoring, data_modules       (never vrp.training)

The CLI (`vrp.cli`) sits on top of both; the tool entry points that build a model from a config (`vrp cache`,
`vrp ask`) reach it from inside their function only. `vrp.runs` (the run-folder layout) imports nothing of vrp.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["data_modules", "vrp.models", "vrp.scoring", "vrp.training", "vrp.evaluation"]
ALLOWED = {
    "data_modules": {"vrp.models.paths", "vrp.models.constants"},
    "vrp.models": set(),
    "vrp.scoring": {"vrp.models", "data_modules"},
    "vrp.training": {"vrp.models", "vrp.scoring", "data_modules"},
    "vrp.evaluation": {"vrp.models", "vrp.scoring", "data_modules"},
}
LAZY_CLI = {"vrp/training/cache.py", "vrp/evaluation/ask.py"}  # tools that parse a config with the CLI


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(f"{node.module}.{a.name}", id(node) in top) for a in node.names]
    return out


def _package_of(module: str) -> str | None:
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), None)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for package in PACKAGES:
        for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
            for module, _ in _imports(path):
                target = _package_of(module)
                if target and target != package:
                    shared = next(
                        (m for m in ("vrp.models.paths", "vrp.models.constants") if module.startswith(m)), None
                    )
                    graph[package].add(shared if package == "data_modules" and shared else target)
    return graph


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_the_layers_below(package):
    assert _graph()[package] <= ALLOWED[package], f"{package} imports {sorted(_graph()[package] - ALLOWED[package])}"


def test_only_the_config_tools_reach_the_cli_and_only_lazily():
    for package in ("vrp/training", "vrp/evaluation", "vrp/models", "vrp/scoring", "data_modules"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for module, top in _imports(path):
                if module.startswith("vrp.cli"):
                    assert rel in LAZY_CLI and not top, f"{rel} imports {module}"
    # the run-folder policy, which the CLI applies and the report reads, is a leaf
    assert not [m for m, _ in _imports(ROOT / "vrp" / "runs.py") if m.startswith(("vrp", "data_modules"))]
