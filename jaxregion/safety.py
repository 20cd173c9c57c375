"""Names are data, outputs never replace inputs, and the tool removes only what it made.

Three small guards every command shares:

- :func:`check_name` — a language (or setting) name becomes part of a file name, so it must
  match :data:`NAME_PATTERN` (letters, digits, ``_`` and ``-``; e.g. ``zh-Hans``, ``pt_BR``);
  :func:`inside` then proves a path stays inside the directory it was given.
- :func:`reading` / :func:`check_output` — readers of user inputs record the resolved paths
  they read while a :func:`guard` is active (the CLI activates one per command); every atomic
  write refuses a destination that resolves (symlinks followed) onto a recorded input.
- :func:`claim` / :func:`remove_owned` — partial state (orbax accumulators, scratch
  directories) carries a marker naming the run that owns it; only matching state is removed.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping

from jaxregion.errors import UserError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
MARKER = ".jaxregion-owner"


def excerpt(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages stay one short line even
    for huge or deeply nested values (a YAML alias bomb, a 1 GB string)."""
    if isinstance(value, (str, bytes)):
        r = repr(value[: limit + 1])
    elif isinstance(value, (list, tuple, dict, set)):
        r = f"<{type(value).__name__} of {len(value)} items>"
    else:
        r = repr(value)
    r = r.replace("\n", "\\n")
    return r if len(r) <= limit else r[: limit - 3] + "..."


def check_name(name: object, where: str, what: str = "language") -> str:
    """``name`` if it is a valid language/setting name, else a UserError naming ``where``.

    Names become file names (``OUT/LANG.safetensors``), so a name is data, never a path."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(f"{where}: {what} name {excerpt(name)} is not allowed; use letters, "
                        "digits, '_' and '-' (e.g. en, zh-Hans, pt_BR), at most 64 characters")
    return name


def inside(root: str, path: str) -> str:
    """``path`` if it resolves inside ``root`` (symlinks followed), else a UserError."""
    r = os.path.realpath(root)
    p = os.path.realpath(path)
    if p != r and not p.startswith(r.rstrip(os.sep) + os.sep):
        raise UserError(f"{path}: resolves to {p}, outside the output directory {root}; "
                        "refusing to write there")
    return path


# --- outputs never replace inputs ----------------------------------------------------------
_INPUTS: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("inputs", default=None)
_OUTPUTS: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("outputs",
                                                                                 default=None)


@contextlib.contextmanager
def guard(outputs: Mapping[str, str | None] | None = None) -> Iterator[set[str]]:
    """Within this block, every path passed to :func:`reading` is protected from writes.

    ``outputs`` (``{flag: path}``, declared up front) lets a read of an input that is also a
    declared output fail at once, before any computation."""
    declared = {os.path.realpath(p): f"{flag} {p}" for flag, p in (outputs or {}).items() if p}
    token, token_out = _INPUTS.set(set()), _OUTPUTS.set(declared)
    try:
        yield _INPUTS.get()  # type: ignore[misc]
    finally:
        _INPUTS.reset(token)
        _OUTPUTS.reset(token_out)


def reading(*paths: str) -> None:
    """Record input files (or directories, protected as a whole) of the running command."""
    seen = _INPUTS.get()
    if seen is None:
        return
    for p in paths:
        if p:
            r = os.path.realpath(p)
            declared = _OUTPUTS.get() or {}
            if r in declared:
                raise UserError(f"{declared[r]}: is also an input of this command ({p}); "
                                "refusing to overwrite it. Write the output somewhere else")
            seen.add(r)


def check_output(path: str) -> None:
    """UserError when ``path`` (resolved) is an input of the running command, or lies inside
    an input directory that is protected as a whole."""
    seen = _INPUTS.get()
    if not seen:
        return
    p = os.path.realpath(path)
    for q in seen:
        if p == q or (os.path.isdir(q) and p.startswith(q.rstrip(os.sep) + os.sep)
                      and os.path.exists(p)):
            raise UserError(f"{path}: is an input of this command ({q}); refusing to overwrite "
                            "it. Write the output somewhere else")


# --- ownership of partial state ------------------------------------------------------------
def claim(directory: str, owner: dict[str, str]) -> None:
    """Create ``directory`` (if needed) and mark it as made by ``owner``."""
    os.makedirs(directory, exist_ok=True)
    # written here, not through jaxregion.io (which imports this module): temp file + rename
    fd, tmp = tempfile.mkstemp(prefix=".marker-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(owner, f, sort_keys=True)
        os.replace(tmp, os.path.join(directory, MARKER))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def owner_of(directory: str) -> dict | None:
    """The marker of ``directory``, or None when it has none (or an unreadable one)."""
    try:
        with open(os.path.join(directory, MARKER), encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def remove_owned(directory: str, owner: dict[str, str] | None = None) -> bool:
    """Remove ``directory`` when its marker matches ``owner`` (any marker when ``owner`` is
    None: the tool made it). A directory without a matching marker is left alone: False."""
    if not os.path.isdir(directory) or os.path.islink(directory):
        return False
    mark = owner_of(directory)
    if mark is None or (owner is not None and mark != owner):
        return False
    shutil.rmtree(directory)
    return True
