"""The layers of the package: every module belongs to one, and imports only its own layer or
lower ones (function-level imports included). The library never imports ``cli``. The schema
(``configs``) imports only the ground layer at module level (so ``--help`` stays light and
the library can take its config dataclasses); its validators may call the library's parsers
through deferred imports: the schema imports the library, never the reverse."""

from __future__ import annotations

import ast
import os

from test_structure import ROOT, import_graph

SCHEMA = "jaxregion.configs"


def top_level_imports(module: str) -> set[str]:
    """The jaxregion modules ``module`` imports in its body (not inside functions)."""
    path = os.path.join(os.path.dirname(ROOT), *module.split(".")) + ".py"
    out = set()
    for node in ast.parse(open(path, encoding="utf-8").read()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxregion"):
            out |= {
                f"{node.module}.{a.name}"
                if f"{node.module}.{a.name}" in import_graph()
                else node.module
                for a in node.names
            }
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("jaxregion")}
    return out


# (layer, module prefixes) from the bottom up; a module takes the longest matching prefix
# ("x$": exactly x, e.g. a package's __init__; "x.": only what is under x)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "ground",
        (
            "jaxregion$",
            "jaxregion.errors",
            "jaxregion.safety",
            "jaxregion.tree",
            "jaxregion.names",
            "jaxregion.strict_loader",
            "jaxregion.io$",
            "jaxregion.io.atomic",
            "jaxregion.parallel$",
            "jaxregion.analysis$",
        ),
    ),
    ("schema", (SCHEMA,)),
    ("models", ("jaxregion.models",)),
    ("parallel", ("jaxregion.parallel.sharding", "jaxregion.parallel.distributed")),
    (
        "files",
        (
            "jaxregion.io.hub",
            "jaxregion.io.safetensors_io",
            "jaxregion.io.gguf_file",
            "jaxregion.data",
        ),
    ),
    ("checkpoints", ("jaxregion.io.hf", "jaxregion.io.gguf_import")),
    (
        "instrument",
        (
            "jaxregion.evaluate",
            "jaxregion.importance",
            "jaxregion.regions",
            "jaxregion.interventions",
            "jaxregion.freeze",
            "jaxregion.generate",
            "jaxregion.runtime",
            "jaxregion.lm_eval",
            "jaxregion.train",
            "jaxregion.parallel.plan",
        ),
    ),
    ("analysis", ("jaxregion.analysis.", "jaxregion.scorefiles", "jaxregion.report")),
    ("cli", ("jaxregion.cli",)),
]
NAMES = [name for name, _ in LAYERS]


def layer_of(module: str) -> str | None:
    best, layer = -1, None
    for name, prefixes in LAYERS:
        for p in prefixes:
            if p.endswith("$"):
                hit = module == p[:-1]
            elif p.endswith("."):
                hit = module.startswith(p)
            else:
                hit = module == p or module.startswith(p + ".")
            if hit and len(p) > best:
                best, layer = len(p), name
    return layer


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in import_graph() if layer_of(m) is None)
    assert not missing, f"add these modules to a layer in tests/test_layering.py: {missing}"


def test_no_layer_imports_a_higher_one() -> None:
    up = []
    for mod, targets in sorted(import_graph().items()):
        if mod == SCHEMA:  # its validators' deferred imports go to the library (see above)
            targets = top_level_imports(mod)
        for t in sorted(targets):
            a, b = layer_of(mod), layer_of(t)
            if a and b and NAMES.index(b) > NAMES.index(a):
                up.append(f"{mod} ({a}) imports {t} ({b})")
    assert not up, "imports that go up a layer:\n" + "\n".join(up)


def test_library_never_imports_cli_and_schema_imports_only_ground() -> None:
    g = import_graph()
    assert not [
        m
        for m, ts in g.items()
        if not m.startswith("jaxregion.cli") and any(t.startswith("jaxregion.cli") for t in ts)
    ]
    assert {layer_of(t) for t in top_level_imports(SCHEMA)} <= {"ground"}, g[SCHEMA]


def test_name_lists_come_from_names_not_the_schema() -> None:
    """The vocabularies (region kinds, estimators, ...) are the library's: it takes them from
    ``jaxregion.names``. (Its config dataclasses still come from ``configs``.)"""
    import ast
    import os

    import jaxregion
    from jaxregion import names

    lists = {n for n in dir(names) if n.isupper()}
    root = os.path.dirname(jaxregion.__file__)
    bad = []
    for d, _, files in os.walk(root):
        if os.path.relpath(d, root).startswith("cli"):
            continue
        for f in files:
            if not f.endswith(".py") or f == "configs.py":
                continue
            tree = ast.parse(open(os.path.join(d, f), encoding="utf-8").read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == "jaxregion.configs":
                    bad += [f"{f}: {a.name}" for a in node.names if a.name in lists]
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "configs"
                    and node.attr in lists
                ):
                    bad.append(f"{f}: configs.{node.attr}")
    assert not bad, bad
