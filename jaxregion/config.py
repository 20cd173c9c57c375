"""Frozen dataclass configs loaded from YAML, strictly: unknown keys and bad types are errors
that name the file and the key."""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import types
import typing
from typing import Any, TypeVar

import yaml

from jaxregion import safety
from jaxregion.errors import UserError

T = TypeVar("T")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: bad value {safety.excerpt(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {safety.excerpt(value)}")
        inner = args[0] if args else Any
        return tuple(_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {safety.excerpt(value)}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, where): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise UserError(f"{where}: expected true/false, got {safety.excerpt(value)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UserError(f"{where}: expected {tp.__name__}, got {safety.excerpt(value)}")
    return value


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping; ``where`` prefixes error messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key {safety.excerpt(unknown[0])}; "
                        f"known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}: {name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{where}: required key {name!r} is missing")
    return cls(**kwargs)


MAX_YAML_BYTES = 1 << 20
MAX_NODES = 100_000  # values after alias expansion; far above any hand-written config


class _BudgetLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand to more than
    :data:`MAX_NODES` values: nested aliases ("billion laughs") grow exponentially, and
    everything that walks the result (validation, error messages) would too."""

    def construct_document(self, node: Any) -> Any:
        sizes: dict[int, int] = {}

        def size(n: Any) -> int:  # expanded size, each shared node computed once
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a cycle counts as small here; construction handles it
                kids = [c for kv in n.value for c in kv] if isinstance(n, yaml.MappingNode) \
                    else n.value if isinstance(n, yaml.SequenceNode) else []
                sizes[id(n)] = min(1 + sum(size(c) for c in kids), MAX_NODES + 1)
            return sizes[id(n)]

        if size(node) > MAX_NODES:
            raise yaml.YAMLError(f"the document expands to more than {MAX_NODES} values "
                                 "(nested aliases?); write the values out")
        return super().construct_document(node)


def read_yaml(path: str) -> Any:
    """The parsed YAML at ``path``, or a UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such config file")
    safety.reading(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_YAML_BYTES + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{path}: larger than {MAX_YAML_BYTES} bytes; a config file is small")
    try:
        return yaml.load(text, Loader=_BudgetLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0][:200]})") from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML (nested too deeply)") from None


def load_yaml(cls: type[T], path: str) -> T:
    """``cls`` from the YAML file at ``path``; relative paths inside stay as written."""
    return from_dict(cls, read_yaml(path), path)
