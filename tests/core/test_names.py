"""Every stored name has one home: no module but study/core/names.py spells an attribute, a
tag or a default URI of the study store or the tracking store itself."""

from __future__ import annotations

import ast
from pathlib import Path

from study.core import names

PACKAGE = Path(names.__file__).resolve().parents[1]
# Metric names are Keras' as much as ours ("val_accuracy" is what Keras logs), and bare words
# ("baseline", "config") are too common to be told apart from other strings: both are left out.
STORED = {
    value
    for key, value in vars(names).items()
    if key.endswith(("_ATTR", "_TAG", "_URI", "_PREFIX")) and set(str(value)) & set("._:")
}


def literals(path: Path) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_stored_names_are_spelled_in_names_only():
    assert "optuna.trial.state" in STORED and "data.digest" in STORED  # the check checks something
    spelled_elsewhere = {
        str(path.relative_to(PACKAGE)): sorted(literals(path) & STORED)
        for path in PACKAGE.rglob("*.py")
        if path.name != "names.py" and literals(path) & STORED
    }
    assert spelled_elsewhere == {}


def test_names_are_unique():
    stored = [v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)]
    duplicates = {value for value in stored if stored.count(value) > 1}
    assert duplicates <= {"error", "rung"}, duplicates  # a column named like the tag it shows
