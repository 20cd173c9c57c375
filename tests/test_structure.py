"""The shape of the package: no import cycles (function-level imports included)."""

from __future__ import annotations

import ast
import functools
import os

import jaxregion

ROOT = os.path.dirname(jaxregion.__file__)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(ROOT))[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of jaxregion it imports}``, every import statement counted
    (module top, functions, TYPE_CHECKING blocks alike). ``from pkg import sub`` counts as an
    import of ``pkg.sub`` when that is a module, else of ``pkg``. Importing ``a.b.c`` also
    imports the packages ``a.b`` and ``a`` (their ``__init__`` runs first), unless the importer
    lives inside them. (Parsed once per session; each call gets its own copy.)"""
    return {m: set(ts) for m, ts in _import_graph().items()}


@functools.cache
def _import_graph() -> dict[str, set[str]]:
    files = {}
    for d, _, names in os.walk(ROOT):
        for n in names:
            if n.endswith(".py"):
                files[_module_name(os.path.join(d, n))] = os.path.join(d, n)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.endswith("__init__.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parts = mod.split(".")[
                        : len(mod.split(".")) - node.level + (1 if is_pkg else 0)
                    ]
                    base = ".".join(parts + ([base] if base else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                while t and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
                    t = t.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_graph_sees_function_level_imports() -> None:
    g = import_graph()
    # jaxregion.cli.eval_cmd imports runtime inside its handler (deferred for --help speed)
    assert "jaxregion.runtime" in g["jaxregion.cli.eval_cmd"]
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_help_imports_no_jax() -> None:
    """``jaxregion CMD --help`` must start fast (< 1 s; timed in scripts/bench_cli_startup.py):
    building every command's parser imports neither jax nor the library that needs it."""
    import subprocess
    import sys

    code = (
        "import sys; from jaxregion.cli.main import build_parser; build_parser(); "
        "heavy = [m for m in ('jax', 'flax', 'optax', 'orbax', 'transformers', "
        "'matplotlib') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"building the parser imported {out}"
