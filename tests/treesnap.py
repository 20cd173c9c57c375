"""Snapshot a directory tree (every path, its kind, mode and bytes) to prove a command left
it alone: ``snapshot(root) == snapshot(root)`` before and after, inputs included."""

from __future__ import annotations

import hashlib
import os
import stat


def snapshot(root: str, skip: str | None = None) -> dict[str, tuple]:
    """``{path: (kind, mode, content)}`` under ``root`` (symlinks not followed); ``skip``
    (a directory, e.g. the command's declared output) is left out. ``content`` is the
    sha256 of a file's bytes, a symlink's target, or None for a directory."""
    out: dict[str, tuple] = {}
    skip_r = os.path.realpath(skip) if skip else None

    def skipped(p: str) -> bool:
        r = os.path.realpath(p) if not os.path.islink(p) else os.path.abspath(p)
        return skip_r is not None and (r == skip_r or r.startswith(skip_r + os.sep))

    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if not skipped(os.path.join(d, x))]
        for x in dirs:
            p = os.path.join(d, x)
            out[p] = ("dir", stat.S_IMODE(os.lstat(p).st_mode), None)
        for f in files:
            p = os.path.join(d, f)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[p] = ("link", 0, os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    out[p] = (
                        "file",
                        stat.S_IMODE(st.st_mode),
                        hashlib.sha256(fh.read()).hexdigest(),
                    )
            else:
                out[p] = ("other", stat.S_IMODE(st.st_mode), None)
    return out


def diff(before: dict, after: dict) -> list[str]:
    """Paths added, removed or changed (for assertion messages)."""
    keys = sorted(set(before) | set(after))
    return [
        f"{'+' if k not in before else '-' if k not in after else '~'} {k}"
        for k in keys
        if before.get(k) != after.get(k)
    ]
