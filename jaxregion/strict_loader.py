"""Frozen dataclass configs: the one place a command's options are declared and checked.

A config is a frozen dataclass whose fields carry their help text and their checks in
metadata (:func:`option`). The same field list gives the command-line flags
(:mod:`jaxregion.cli.options`) and the YAML keys (:func:`from_dict`, :func:`load_yaml`);
every value, from a flag or from a file, goes through :func:`convert`, so a flag and a key
are checked by the same code and errors name the flag, or the file and the key.

Types are strict: a YAML ``true`` is not an int, ``"5"`` is not an int, integers beyond
64 bits and non-finite floats are rejected, and unknown keys are errors.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import yaml

from jaxregion import safety
from jaxregion.errors import UserError

T = TypeVar("T")

INT_MAX = 2**63 - 1
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

# Metadata keys understood by option(); anything else is a typo.
_META = {
    "help",
    "flag",
    "metavar",
    "positional",
    "choices",
    "gt",
    "ge",
    "lt",
    "le",
    "allow_inf",
    "sep",
    "coerce",
    "group",
    "check",
    "name",
}


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # noqa: A002 (argparse's name)
    factory: Callable[[], Any] | None = None,
    **meta: Any,
) -> Any:
    """A dataclass field with its help text and checks.

    ``meta`` keys: ``flag`` (another flag spelling, e.g. ``"--json"``; ``False`` for a
    YAML-only key), ``metavar``, ``positional`` (a positional argument), ``choices``,
    ``gt``/``ge``/``lt``/``le`` (bounds, applied to each element of a tuple), ``allow_inf``
    (floats are finite unless this is set), ``sep`` (a tuple given as one comma-separated
    flag instead of a repeated one), ``coerce`` (a function applied to a YAML value before
    its type check, e.g. to accept a mapping where a list is stored), ``check`` (a function
    ``check(value, where)`` run after the type and bound checks on every non-None value (each
    element of a tuple, each value of a mapping), raising UserError starting with ``where``;
    it must have no side effects, as it may run more than once),
    ``name`` (``"language"`` or ``"setting"``: each string, or each key of a mapping, must be
    a valid name, :func:`jaxregion.safety.check_name`, as names become file names),
    ``group`` (help section)."""
    bad = set(meta) - _META
    if bad:
        raise TypeError(f"option(): unknown metadata {sorted(bad)}")
    md = {"help": help, **meta}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields (``from __future__`` annotations)."""
    return typing.get_type_hints(cls)


def strip_optional(tp: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)) and len(args) == 1:
            return args[0], True
    return tp, False


# --- conversion ----------------------------------------------------------------------------
def _scalar(value: Any, tp: Any, where: str, meta: Mapping[str, Any]) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {safety.excerpt(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {safety.excerpt(value)}")
        if abs(value) > INT_MAX:
            raise UserError(f"{where}: {value} is out of range (at most 2**63-1 in size)")
        return int(value)
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)  # PyYAML reads 3e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {safety.excerpt(value)}")
        if isinstance(value, int) and abs(value) > INT_MAX:
            raise UserError(f"{where}: {value} is out of range")
        out = float(value)
        if math.isnan(out) or (math.isinf(out) and not meta.get("allow_inf")):
            raise UserError(f"{where}: {value!r} is not a finite number")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {safety.excerpt(value)}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UserError(f"{where}: expected {tp.__name__}, got {safety.excerpt(value)}")
    return value


def _bounds(value: Any, where: str, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise UserError(
            f"{where}: {safety.excerpt(value)} is not one of {', '.join(map(str, meta['choices']))}"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for key, ok, text in (
        ("gt", lambda a, b: a > b, "greater than"),
        ("ge", lambda a, b: a >= b, "at least"),
        ("lt", lambda a, b: a < b, "less than"),
        ("le", lambda a, b: a <= b, "at most"),
    ):
        if key in meta and not ok(value, meta[key]):
            if key == "gt" and meta[key] == 0:
                raise UserError(f"{where}: must be positive")
            raise UserError(f"{where}: must be {text} {meta[key]}")


def convert(value: Any, tp: Any, where: str, meta: Mapping[str, Any] | None = None) -> Any:
    """``value`` checked against type ``tp`` and the field's checks ``meta``."""
    meta = meta or {}
    if meta.get("coerce") is not None:
        value = meta["coerce"](value)
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
                return convert(value, a, where, {**meta, "coerce": None})
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: bad value {safety.excerpt(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # built in code: re-check its fields
            check(value, where, sep=".")
            return value
        return from_dict(tp, value, where, sep=".")
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {safety.excerpt(value)}")
        inner = args[0] if args else Any
        return tuple(
            convert(v, inner, f"{where}[{i}]", {**meta, "coerce": None})
            for i, v in enumerate(value)
        )
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {safety.excerpt(value)}")
        kt, vt = args if args else (Any, Any)
        if meta.get("name"):  # the keys are names (languages): data, never paths
            for k in value:
                safety.check_name(k, where, meta["name"])
        return {
            convert(k, kt, where): convert(
                v, vt, f"{where}.{k}", {**meta, "coerce": None, "name": None}
            )
            for k, v in value.items()
        }
    out = _scalar(value, tp, where, meta)
    if meta.get("name") and out is not None:
        safety.check_name(out, where, meta["name"])
    _bounds(out, where, meta)
    if meta.get("check") is not None and out is not None:
        meta["check"](out, where)
    return out


def convert_field(cls: type, name: str, value: Any, where: str) -> Any:
    """``value`` for field ``name`` of dataclass ``cls``, checked; errors start with ``where``."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return convert(value, field_types(cls)[name], where, f.metadata)


def build(
    cls: type[T], values: Mapping[str, Any], missing: Callable[[str], str] | None = None
) -> T:
    """``cls(**values)`` (already converted), after checking that required fields are there,
    then its ``validate()`` (cross-field checks) if it has one."""
    for f in dataclasses.fields(cls):
        if f.init and is_required(f) and f.name not in values:
            raise UserError(missing(f.name) if missing else f"required key {f.name!r} is missing")
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def check(obj: Any, where: str = "", sep: str = ": ") -> None:
    """Re-check a config built in code (not parsed) against its fields' metadata; errors
    name ``where`` and the field, joined by ``sep`` (``"."`` in a nested section)."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        convert(
            getattr(obj, f.name),
            hints[f.name],
            f"{where}{sep}{f.name}" if where else f.name,
            {**f.metadata, "coerce": None},
        )


def from_dict(cls: type[T], data: Any, where: str, sep: str = ": ") -> T:
    """Build dataclass ``cls`` from a mapping; ``where`` prefixes error messages, joined to
    a key by ``sep`` (``"."`` inside a nested section: ``f.yaml: dims.layer``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = {
        str(k).replace("-", "_") if str(k).replace("-", "_") in fields else k: v
        for k, v in data.items()
    }
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise UserError(
            f"{where}: unknown key {safety.excerpt(unknown[0])}; known keys: {', '.join(fields)}"
        )
    values = {k: convert_field(cls, k, v, f"{where}{sep}{k}") for k, v in data.items()}
    try:
        return build(cls, values, lambda n: f"required key {n!r} is missing")
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def replace_fields(obj: Any, cls: type[T], **changes: Any) -> T:
    """A ``cls`` from the same-named fields of ``obj`` (a config that extends ``cls``)."""
    kw = {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if f.init}
    kw.update(changes)
    return cls(**kw)


# --- files ---------------------------------------------------------------------------------
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
                kids = (
                    [c for kv in n.value for c in kv]
                    if isinstance(n, yaml.MappingNode)
                    else n.value
                    if isinstance(n, yaml.SequenceNode)
                    else []
                )
                sizes[id(n)] = min(1 + sum(size(c) for c in kids), MAX_NODES + 1)
            return sizes[id(n)]

        if size(node) > MAX_NODES:
            raise yaml.YAMLError(
                f"the document expands to more than {MAX_NODES} values "
                "(nested aliases?); write the values out"
            )
        return super().construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A key given twice in one mapping is an error, never "the last one wins"."""
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: PyYAML reports it itself
                    continue
        return super().construct_mapping(node, deep=deep)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of a YAML file gives one key twice (lines are 1-based)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(
            f"key {safety.excerpt(key)} is given twice, on lines {first} and {second}; keep one"
        )


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
    except DuplicateKeyError as e:
        raise UserError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0][:200]})") from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML (nested too deeply)") from None


def read_mapping(path: str) -> dict:
    """The YAML mapping at ``path`` (an empty file is ``{}``)."""
    d = read_yaml(path)
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a mapping of keys to values, got {type(d).__name__}")
    return d


def load_yaml(cls: type[T], path: str) -> T:
    """``cls`` from the YAML file at ``path``; relative paths inside stay as written."""
    return from_dict(cls, read_mapping(path), path)


def lang_specs(value: Any) -> Any:
    """``coerce`` for ``{lang: source}`` fields: also accept ``["lang=source", ...]``."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        out: dict[str, str] = {}
        for v in value:
            lang, eq, src = v.partition("=")
            if not eq or not lang.strip() or not src.strip():
                raise UserError(f"{v!r}: expected LANG=SOURCE, e.g. ar=data/ar.txt")
            if lang.strip() in out:
                raise UserError(f"{v!r}: language {lang.strip()!r} given twice")
            out[lang.strip()] = src.strip()
        return out
    return value
