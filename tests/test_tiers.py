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


def test_listed_and_swept_cases_are_marked_slow():
    """The collection hook marks a listed test, a listed case, and a sweep's later cases."""
    from conftest import pytest_collection_modifyitems

    items = [
        _Item("test_moe.py", "test_battery_on_moe"),
        _Item("test_moe.py", "test_both_layouts_match_transformers[mixtral-fused]"),
        _Item("test_moe.py", "test_both_layouts_match_transformers[olmoe-fused]"),
        _Item("test_regions_stream.py", "test_files_give_the_in_memory_masks[core]"),
        _Item("test_regions_stream.py", "test_files_give_the_in_memory_masks[top]"),
    ]
    pytest_collection_modifyitems(None, items)
    assert [i.marks for i in items] == [["slow"], [], ["slow"], ["slow"], []]
