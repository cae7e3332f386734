"""The package's architecture, checked: commands on top, layers that import downward only,
modules of a readable size, and tests that mirror the packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "study"
TESTS = Path(__file__).resolve().parent
# Bottom to top: a layer imports only the layers before it (and itself).
LAYERS = ("core", "config", "tracking", "training", "search", "reporting", "execution")
COMMANDS = ("train", "sweep", "worker", "report", "reproduce")
MAX_LINES = 300
# Modules allowed past MAX_LINES, and why.
LONG_MODULES = {
    "search/asha.py": "ASHA's rules in one place: the ladder, promotions, configurations, brackets",
    "reporting/live.py": "one class: the live display, its plain-line twin and the ETA",
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_of(module: str) -> str | None:
    """`study.search.asha` -> "search"; a command or the package itself -> None (the top)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def imported_modules(path: Path) -> set[str]:
    """Every `study` module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "study":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "study"}
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_import_downward_only(path):
    importer = layer_of(module_name(path))
    if importer is None:
        return  # the commands and study/__init__.py may use every layer
    for module in imported_modules(path):
        imported = layer_of(module)
        assert imported is not None, f"{module_name(path)} imports the command {module}"
        assert LAYERS.index(imported) <= LAYERS.index(importer), (
            f"{module_name(path)} ({importer}) imports {module} ({imported}), a layer above it"
        )


def test_the_package_holds_the_commands_and_the_layers_only():
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == set(COMMANDS)
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders == set(LAYERS)


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_are_thin(command):
    """A command parses, calls one layer's entry point and exits; its logic lives below."""
    tree = ast.parse((PACKAGE / f"{command}.py").read_text())
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert len(functions) <= 3, functions
    assert len((PACKAGE / f"{command}.py").read_text().splitlines()) <= 120


def test_modules_are_short_or_say_why():
    long = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in modules()
        if len(path.read_text().splitlines()) > MAX_LINES
    }
    assert set(long) <= set(LONG_MODULES), long


def test_every_layer_module_has_a_test_module_or_is_covered_by_its_package_tests():
    """Tests mirror the packages: tests/<layer>/ exists for every layer, and the promises that
    cross layers live in tests/e2e/."""
    for layer in LAYERS:
        assert (TESTS / layer).is_dir(), f"tests/{layer}/ is missing"
        assert list((TESTS / layer).glob("test_*.py")), f"tests/{layer}/ holds no test module"
    assert (TESTS / "e2e" / "test_readme.py").is_file()
