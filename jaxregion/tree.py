"""One way to name a parameter: its Hugging Face name.

Params, importance scores, region masks and optimizer masks are nested ``dict``/``list``
pytrees whose paths are the HF parameter names split on dots, with arrays in the HF layout
(``[out, in]`` for linear layers). ``model.layers.3.mlp.down_proj.weight`` lives at
``tree["model"]["layers"][3]["mlp"]["down_proj"]["weight"]``. Because there is no second
layout, score and region files are these trees flattened, with no transposes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import jax

PyTree = Any


def _key_str(k: Any) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    return str(k)


def path_name(path: tuple) -> str:
    """A jax key path as an HF name: ``model.layers.0.mlp.up_proj.weight``."""
    return ".".join(_key_str(k) for k in path)


def flatten(tree: PyTree) -> dict[str, Any]:
    """``{hf_name: leaf}`` in tree order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(p): leaf for p, leaf in leaves}


def unflatten(flat: Mapping[str, Any]) -> PyTree:
    """Inverse of :func:`flatten`: numeric name parts become list indices."""
    root: dict = {}
    for name, leaf in flat.items():
        parts = name.split(".")
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt: Any = leaf if last else ({} if not parts[i + 1].isdigit() else [])
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if node[idx] is None:
                    node[idx] = nxt
                node = node[idx]
            else:
                node = node.setdefault(part, nxt)
    return root


def partition(flat: Mapping[str, Any], live: Collection[str]) -> tuple[dict, dict]:
    """``({name: leaf} in live, {name: leaf} of the rest)``: the leaves a gradient is taken
    with respect to, and the constants around them."""
    return {n: flat[n] for n in live}, {n: v for n, v in flat.items() if n not in live}


def names(tree: PyTree) -> PyTree:
    """A tree like ``tree`` whose leaves are their own HF names."""
    return jax.tree_util.tree_map_with_path(lambda p, _: path_name(p), tree)


def map_named(fn: Callable[[str, Any], Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """``jax.tree.map`` that also passes each leaf's HF name first."""
    return jax.tree_util.tree_map_with_path(lambda p, x, *r: fn(path_name(p), x, *r), tree, *rest)


def get(tree: PyTree, name: str) -> Any:
    """The leaf at HF name ``name``; raises KeyError naming it if absent."""
    node = tree
    for part in name.split("."):
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise KeyError(name) from None
    return node


def replace(tree: PyTree, name: str, value: Any) -> PyTree:
    """A copy of ``tree`` with the leaf at ``name`` replaced (the rest shared, not copied)."""
    parts = name.split(".")

    def rec(node: Any, i: int) -> Any:
        if i == len(parts):
            return value
        if isinstance(node, list):
            idx = int(parts[i])
            out = list(node)
            out[idx] = rec(node[idx], i + 1)
            return out
        if parts[i] not in node:
            raise KeyError(name)
        out = dict(node)
        out[parts[i]] = rec(node[parts[i]], i + 1)
        return out

    get(tree, name)
    return rec(tree, 0)
