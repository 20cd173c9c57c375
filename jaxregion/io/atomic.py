"""Atomic file writes: a crash never leaves a half-written result that looks whole.

Every write goes through :func:`atomic_path`, which also refuses to replace an input of the
running command (:mod:`jaxregion.safety`), gives the file the mode the umask allows (not
mkstemp's 0600), and turns a failed write (disk full, read-only file system) into one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from jaxregion import safety
from jaxregion.errors import UserError


def _umask() -> int:
    old = os.umask(0o22)
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    safety.check_output(path)
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if type(e).__name__ == "SafetensorError":  # safetensors' write errors are no OSError
            raise UserError(
                f"{path}: cannot write ({str(e)[:200]}); free disk space or choose "
                "another output path"
            ) from None
        raise


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def dumps(obj: Any) -> str:
    """Strict JSON: a NaN or infinity is a bug upstream, never a result (``allow_nan=False``)."""
    try:
        return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as e:
        raise UserError(
            f"a result is not a finite number ({e}); the computation diverged — "
            "check the model's config.json and the inputs"
        ) from None


def write_json(path: str, obj: Any) -> None:
    write_text(path, dumps(obj))
