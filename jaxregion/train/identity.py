"""A run's identity guards its checkpoints.

``CKPT_DIR/identity.json`` records what defines a training run: the model (shape fingerprint
and a digest of the starting weights), the data (sources, windows digest, seed, batch),
the frozen region (a digest of its mask) and the optimizer settings, and the step count. A
resume whose identity differs is refused with one line naming the first differing field;
the checkpoints stay as they are. ``restart=True`` sets the old run aside (moved, never
deleted) under ``CKPT_DIR/previous/`` and starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import jax
import numpy as np

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.io.atomic import write_json
from jaxregion.parallel.distributed import fetch

IDENTITY = "identity.json"
PREVIOUS = "previous"
# what a ckpt-dir holds for one run: moved together by a restart
RUN_STATE = ("steps", "corrupt", "metrics.jsonl", IDENTITY, "run.json", "base")
OPTIMIZER_FIELDS = (
    "batch_size",
    "seq_len",
    "lr",
    "warmup",
    "schedule",
    "weight_decay",
    "clip",
    "grad_accum",
    "dtype",
    "b1",
    "b2",
    "seed",
    "min_lr_ratio",
    "freeze_norms",
    "replay_ratio",
    "ewc_lambda",
)


def digest_tree(tree: Any) -> str:
    """sha256 of a pytree's names, shapes, dtypes and bytes (fetched leaf by leaf)."""
    h = hashlib.sha256()
    for name, x in sorted(T.flatten(tree).items()):
        a = np.ascontiguousarray(fetch(x) if isinstance(x, jax.Array) else np.asarray(x))
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()[:16]


def digest_windows(windows: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for lang, w in sorted(windows.items()):
        a = np.ascontiguousarray(w)
        h.update(f"{lang}:{a.dtype}:{a.shape};".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()[:16]


def run_identity(
    cfg: Any, windows: dict[str, np.ndarray], model: str, freeze: str | None
) -> dict[str, Any]:
    """The identity of a run: ``{"model", "data", "freeze", "optimizer.*", "steps"}``."""
    opt = {k: getattr(cfg, k) for k in OPTIMIZER_FIELDS}
    return {
        "model": model,
        "data": digest_windows(windows),
        "freeze": freeze or "none",
        **{f"optimizer.{k}": v for k, v in opt.items()},
        "steps": int(cfg.steps),
    }


def _read(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path}: unreadable ({str(e)[:120]}); use a new --ckpt-dir, or "
            "--restart to set the old run aside"
        ) from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a run identity; use a new --ckpt-dir, or --restart")
    return d


def _what(key: str) -> str:
    return {
        "model": "model weights",
        "data": "training data (sources, seq_len, max_seqs)",
        "freeze": "frozen region",
    }.get(key, key)


def check(
    ckpt_dir: str, ident: dict[str, Any], saved_steps: list[int], restart: bool = False
) -> None:
    """Compare ``ident`` with the ckpt-dir's recorded identity; record it when new.

    Raises a UserError naming the first differing field (the ckpt-dir unchanged) unless
    ``restart``, which moves the old run's state to ``CKPT_DIR/previous/<time>/``."""
    path = os.path.join(ckpt_dir, IDENTITY)
    old = _read(path)
    if restart and (old is not None or saved_steps):
        set_aside(ckpt_dir)
        old, saved_steps = None, []
    if old is None:
        if saved_steps:
            raise UserError(
                f"--ckpt-dir {ckpt_dir} holds checkpoints (steps "
                f"{', '.join(map(str, saved_steps))}) but no {IDENTITY}, so this "
                "run cannot prove it is the same; use a new --ckpt-dir, or "
                "--restart to set them aside"
            )
        if jax.process_index() == 0:
            write_json(path, ident)
        return
    if saved_steps and ident["steps"] < saved_steps[-1]:
        raise UserError(
            f"--steps {ident['steps']} is below the saved step {saved_steps[-1]} in "
            f"{ckpt_dir}; give --steps {old.get('steps')} to resume, a new "
            "--ckpt-dir, or --restart"
        )
    for key, want in ident.items():
        have = old.get(key)
        if have != json.loads(json.dumps(want)):
            raise UserError(
                f"--ckpt-dir {ckpt_dir} holds a run with a different {_what(key)} ({key}: "
                f"saved {have!r}, now {want!r}); resume with the same settings, use a new "
                "--ckpt-dir, or pass --restart to set the old run aside"
            )


def set_aside(ckpt_dir: str) -> str:
    """Move the run state of ``ckpt_dir`` into ``previous/<time>/``; returns that folder."""
    dest = os.path.join(ckpt_dir, PREVIOUS, time.strftime("%Y%m%d-%H%M%S"))
    n = 0
    while os.path.exists(dest + (f"-{n}" if n else "")):
        n += 1
    dest += f"-{n}" if n else ""
    if jax.process_index() == 0:
        os.makedirs(dest)
        for name in RUN_STATE:
            src = os.path.join(ckpt_dir, name)
            if os.path.lexists(src):
                os.replace(src, os.path.join(dest, name))
    return dest
