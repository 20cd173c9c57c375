"""The Source protocol, the shared base class and small helpers for every source."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from jaxregion.errors import UserError
from jaxregion.safety import check_text

SCHEMES = ("tfds", "hf", "synthetic", "file")
OPTIONS = ("doc_sep", "field", "data_dir")
_CHUNK = 1 << 20
_SPLIT_NAMES = {"train", "test", "validation", "valid", "dev", "eval", "all"}


@runtime_checkable
class Source(Protocol):
    """Anything with a ``name`` and a fresh document iterator per call."""

    @property
    def name(self) -> str: ...

    def documents(self) -> Iterator[str]: ...


class _Base:
    """Shared behaviour: a source that yields nothing is an error, not a silent no-op."""

    name: str

    def documents(self) -> Iterator[str]:
        n = 0
        for doc in self._iter():
            n += 1
            yield doc
        if n == 0:
            raise UserError(
                f"{self.name}: no documents found; check the source is not empty "
                "and the field/split are right"
            )

    def _iter(self) -> Iterator[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _datasets(name: str):
    """The optional ``datasets`` package, or a UserError saying how to get it."""
    try:  # an optional dependency (pip install 'jaxregion[hf]'), ~1.5 s to import
        import datasets
    except ImportError:
        raise UserError(
            f"{name}: hf: sources need the `datasets` package; pip install 'jaxregion[hf]'"
        ) from None
    return datasets


def _missing_field(name: str, field: str, keys, where: str = "") -> UserError:
    return UserError(
        f"{name}: field {field!r} not found{where}; available keys: "
        f"{', '.join(map(str, keys)) or '(none)'}; pass field=KEY"
    )


def _as_text(name: str, field: str, value, where: str = "") -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{name}: field {field!r}{where} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise UserError(
            f"{name}: field {field!r}{where} holds {type(value).__name__}, not "
            "text; pick a text field"
        )
    return check_text(value, f"{name}: field {field!r}{where}")


def _split_colons(s: str) -> list[str]:
    """Split on ':' outside [...] so TFDS/HF slices like ``train[:1000]`` survive."""
    parts, depth, cur = [], 0, []
    for ch in s:
        depth += (ch == "[") - (ch == "]")
        if ch == ":" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _field_of(name: str, record, field: str, where: str):
    """``record[field]``; a dotted field walks nested feature dicts."""
    value = record
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            keys = value.keys() if isinstance(value, dict) else []
            raise _missing_field(name, field, keys, where)
        value = value[key]
    return value


def _chain(first, rest):
    yield first
    yield from rest
