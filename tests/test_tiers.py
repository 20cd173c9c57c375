"""The fast tier's table (``tests/tiers.py``) names tests that exist, and marks them slow."""

from __future__ import annotations

import ast
import os

import pytest
import tiers

HERE = os.path.dirname(os.path.abspath(__file__))


def _functions(file: str) -> set[str]:
    tree = ast.parse(open(os.path.join(HERE, file), encoding="utf-8").read())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("entry", [*tiers.SLOW, *tiers.FAMILY_SWEEPS])
def test_entry_names_a_test(entry):
    file, name = entry.split("::")
    assert os.path.isfile(os.path.join(HERE, file)), entry
    assert name.split("[")[0] in _functions(file), entry


class _Item:
    def __init__(self, file: str, name: str):
        self.path = os.path.join(HERE, file)
        self.name, self.originalname = name, name.split("[")[0]
        self.marks: list = []

    def add_marker(self, mark) -> None:
        self.marks.append(mark.name)


def test_listed_and_swept_cases_are_marked_slow(monkeypatch):
    """The collection hook marks a listed test, a listed case, and a sweep's later cases."""
    from conftest import pytest_collection_modifyitems

    monkeypatch.setattr(tiers, "SLOW", ("a.py::whole", "a.py::part[x]"))
    monkeypatch.setattr(tiers, "FAMILY_SWEEPS", ("b.py::sweep",))
    items = [
        _Item("a.py", "whole[x]"),
        _Item("a.py", "whole[y]"),
        _Item("a.py", "part[x]"),
        _Item("a.py", "part[y]"),
        _Item("b.py", "sweep[llama]"),
        _Item("b.py", "sweep[gpt2]"),
        _Item("b.py", "other"),
    ]
    pytest_collection_modifyitems(None, items)
    assert [bool(i.marks) for i in items] == [True, True, True, False, False, True, False]
