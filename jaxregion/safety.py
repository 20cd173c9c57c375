"""Names are data, outputs never replace inputs, and the tool removes only what it made.

Three small guards every command shares:

- :func:`check_name` — a language (or setting) name becomes part of a file name, so it must
  match :data:`NAME_PATTERN` (letters, digits, ``_`` and ``-``; e.g. ``zh-Hans``, ``pt_BR``);
  :func:`inside` then proves a path stays inside the directory it was given.
- :func:`reading` / :func:`check_output` — readers of user inputs record the resolved paths
  they read while a :func:`guard` is active (the CLI activates one per command); every atomic
  write refuses a destination that resolves (symlinks followed) onto a recorded input.
  :func:`guard` also checks every declared :class:`Output` up front, before any work:
  against the inputs the command's config names (a directory protects all it holds), and
  for path problems (a directory where a file goes, a file parent, a symlink loop).
- :func:`claim` / :func:`remove_owned` — partial state (orbax accumulators, scratch
  directories) carries a marker naming the run that owns it; only matching state is removed.
  An export directory gets a marker too (:func:`check_export_dir`): the tool replaces the
  contents of a non-empty directory only when it made it (or with ``--force``).
- One writer per directory: :func:`guard` takes an advisory ``flock`` on each output
  directory (:data:`LOCK` inside it) before anything is written; a second run exits 2 at
  once naming the holder. The kernel frees the lock when the holder dies, even by SIGKILL.

The rules are summed up in docs/reference/safety.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from jaxregion.errors import UserError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
MARKER = ".jaxregion-owner"
LOCK = ".jaxregion-lock"
EXPORT_OWNER = {"made_by": "jaxregion export"}


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
        raise UserError(
            f"{where}: {what} name {excerpt(name)} is not allowed; use letters, "
            "digits, '_' and '-' (e.g. en, zh-Hans, pt_BR), at most 64 characters"
        )
    return name


def inside(root: str, path: str) -> str:
    """``path`` if it resolves inside ``root`` (symlinks followed), else a UserError."""
    r = os.path.realpath(root)
    p = os.path.realpath(path)
    if p != r and not p.startswith(r.rstrip(os.sep) + os.sep):
        raise UserError(
            f"{path}: resolves to {p}, outside the output directory {root}; refusing to write there"
        )
    return path


# --- outputs never replace inputs ----------------------------------------------------------
_INPUTS: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("inputs", default=None)
_OUTPUTS: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "outputs", default=None
)


@dataclass(frozen=True)
class Output:
    """A declared output: ``kind`` is ``file``, ``dir`` (written into, locked), ``export``
    (an HF directory whose contents are replaced: locked, and owned or ``--force``) or
    ``new`` (a directory made whole by one rename: it must not exist yet)."""

    flag: str
    path: str
    kind: str = "file"


_FORCED: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "forced", default=frozenset()
)


@contextlib.contextmanager
def guard(
    outputs: Mapping[str, str | None] | Sequence[Output] | None = None,
    inputs: Sequence[str] = (),
    force: bool = False,
    lock: bool = True,
) -> Iterator[set[str]]:
    """Within this block, every path passed to :func:`reading` is protected from writes.

    ``outputs`` (declared up front; a ``{flag: path}`` mapping means files) are checked at
    once against ``inputs`` (the paths the command's config names) and for path problems,
    and a read of an input that is also a declared output fails at once. Output directories
    are locked (``lock``) for the block. ``force``: an export may replace a directory the
    tool did not make."""
    outs = (
        [Output(f, p) for f, p in outputs.items() if p]
        if isinstance(outputs, Mapping)
        else list(outputs or ())
    )
    given = {os.path.realpath(p) for p in inputs if p and os.path.lexists(p)}
    for o in outs:
        check_declared(o, given, force)
    declared = {os.path.realpath(o.path): f"{o.flag} {o.path}" for o in outs}
    forced = frozenset(os.path.realpath(o.path) for o in outs if o.kind == "export" and force)
    token, token_out = _INPUTS.set(set(given)), _OUTPUTS.set(declared)
    token_forced = _FORCED.set(forced)
    try:
        with contextlib.ExitStack() as stack:
            held: set[str] = set()
            for o in outs:
                if o.kind in ("dir", "export") and lock and os.path.realpath(o.path) not in held:
                    held.add(os.path.realpath(o.path))
                    stack.enter_context(locked(o.path, o.flag))
            yield _INPUTS.get()  # type: ignore[misc]
    finally:
        _INPUTS.reset(token)
        _OUTPUTS.reset(token_out)
        _FORCED.reset(token_forced)


def _within(p: str, q: str) -> bool:
    return p == q or p.startswith(q.rstrip(os.sep) + os.sep)


def check_path(path: str, where: str, want_dir: bool) -> None:
    """UserError for an output path that cannot be what it must: a symlink loop, a parent
    that is a file, a directory where a file goes (or the reverse)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        why = "a symlink loop" if e.errno == errno.ELOOP else (e.strerror or str(e))
        raise UserError(f"{where}: cannot write there ({why}); give another path") from None
    if st is None and os.path.islink(path):
        raise UserError(f"{where}: a dangling symlink (to {os.readlink(path)}); give another path")
    if st is not None:
        if want_dir and not stat.S_ISDIR(st.st_mode):
            raise UserError(f"{where}: exists and is not a directory")
        if not want_dir and stat.S_ISDIR(st.st_mode):
            raise UserError(f"{where}: is a directory; give a file path")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{where}: cannot write there ({parent} is not a directory)")


def check_declared(o: Output, inputs: set[str], force: bool = False) -> None:
    """An output checked before any work: its path, then the inputs it would replace."""
    where = f"{o.flag} {o.path}"
    if o.kind == "new" and os.path.lexists(o.path):
        raise UserError(
            f"{where}: already exists; remove it or choose a new directory (it is written "
            "whole, by one rename, never into)"
        )
    check_path(o.path, where, o.kind != "file")
    p = os.path.realpath(o.path)
    for q in sorted(inputs):
        if (
            p == q
            or (o.kind == "file" and os.path.lexists(p) and _within(p, q))
            or (o.kind == "export" and _within(q, p))
        ):
            raise UserError(
                f"{where}: is an input of this command ({q}); refusing to "
                "overwrite it. Write the output somewhere else"
            )
    if o.kind == "export" and not force:
        check_export_dir(o.path, where)


def check_export_dir(directory: str, where: str | None = None) -> None:
    """UserError unless ``directory`` is new, empty (but for a lock), made by this tool (its
    marker) or approved with ``--force``: an export replaces what is there."""
    if not os.path.isdir(directory) or os.path.realpath(directory) in _FORCED.get():
        return
    there = sorted(set(os.listdir(directory)) - {LOCK})
    if not there or owner_of(directory) == EXPORT_OWNER:
        return
    raise UserError(
        f"{where or directory}: holds files jaxregion did not make ({there[0]}"
        f"{', ...' if len(there) > 1 else ''}); an export replaces them. Give an "
        "empty or new directory, or --force to replace its contents"
    )


# --- one writer per directory --------------------------------------------------------------
def _holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            h = json.load(f)
        return f"pid {h['pid']}, started {h['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


@contextlib.contextmanager
def locked(directory: str, flag: str = "") -> Iterator[None]:
    """Hold an exclusive advisory lock on ``directory`` (created if needed; removed again
    when it is left empty): a second holder gets a UserError naming the first."""
    made = _makedirs(directory)
    path = os.path.join(directory, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"{flag + ' ' if flag else ''}{directory}: in use by another "
                f"jaxregion run ({_holder(path)}); wait for it to end or use "
                "another directory"
            ) from None
        try:  # the file may have been removed by a holder that just ended: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv[1:8],
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        for d in made:  # directories this call made, if nothing else was written there
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _makedirs(directory: str) -> list[str]:
    """``os.makedirs``; the directories it made, deepest first."""
    made, d = [], os.path.abspath(directory)
    while not os.path.lexists(d):
        made.append(d)
        d = os.path.dirname(d)
    os.makedirs(directory, exist_ok=True)
    return made


def reading(*paths: str) -> None:
    """Record input files (or directories, protected as a whole) of the running command.

    A FIFO, socket or device is refused here, before it is opened: reading one may block
    forever (a pipe without a writer) or never end."""
    for p in paths:
        if p:
            check_regular(p)
    seen = _INPUTS.get()
    if seen is None:
        return
    for p in paths:
        if p:
            r = os.path.realpath(p)
            declared = _OUTPUTS.get() or {}
            if r in declared:
                raise UserError(
                    f"{declared[r]}: is also an input of this command ({p}); "
                    "refusing to overwrite it. Write the output somewhere else"
                )
            seen.add(r)


def check_regular(path: str) -> None:
    """UserError unless ``path`` is a regular file or a directory (or does not exist)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # the reader reports a missing or unreadable file itself
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        what = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        )
        raise UserError(
            f"{path}: is {what}, not a regular file; write the data to a file and pass that"
        )


def check_text(text: str, where: str) -> str:
    """``text`` if it is valid Unicode text; a lone surrogate (from bytes that are not
    UTF-8 in a command-line argument, or a ``\\ud800`` escape in JSON) is a UserError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(
            f"{where}: not valid UTF-8 text (character {e.start}: "
            f"{text[e.start]!r}, a lone surrogate); fix the encoding"
        ) from None
    return text


def check_argv(argv: Sequence[str]) -> None:
    """Every command-line argument is valid text; the error names the argument (and its
    flag), never echoes the undecodable bytes."""
    for i, a in enumerate(argv):
        flag = argv[i - 1] if i and argv[i - 1].startswith("-") and not a.startswith("-") else None
        check_text(a, f"{flag} (argument {i + 1})" if flag else f"argument {i + 1}")


def check_output(path: str) -> None:
    """UserError when ``path`` (resolved) is an input of the running command, or lies inside
    an input directory that is protected as a whole."""
    seen = _INPUTS.get()
    if not seen:
        return
    p = os.path.realpath(path)
    for q in seen:
        if p == q or (
            os.path.isdir(q) and p.startswith(q.rstrip(os.sep) + os.sep) and os.path.exists(p)
        ):
            raise UserError(
                f"{path}: is an input of this command ({q}); refusing to overwrite "
                "it. Write the output somewhere else"
            )


# --- ownership of partial state ------------------------------------------------------------
def claim(directory: str, owner: dict[str, str]) -> None:
    """Create ``directory`` (if needed) and mark it as made by ``owner``."""
    os.makedirs(directory, exist_ok=True)
    # written here, not through jaxregion.io.atomic (which imports this module): temp file + rename
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
