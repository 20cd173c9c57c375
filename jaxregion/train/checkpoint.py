"""Training checkpoints: orbax, async, atomic, resumable on any device count.

Layout of a ``--ckpt-dir``::

    run.json        how the run was started (model, flags, data) -- written once
    base/           config.json + tokenizer files of the model being trained (for export)
    metrics.jsonl   one JSON line per logged step (the forgetting curves)
    steps/<N>/      orbax checkpoints: items ``params``, ``opt_state``, ``meta`` (JSON)

Orbax writes each step into a temporary directory and renames it when complete, so a crash
never leaves a step that looks whole. A step that is whole but unreadable (disk damage, a
truncated file) is moved to ``corrupt/`` on resume and the previous step is used instead.
Restoring uses the *target* abstract tree (shapes, dtypes, shardings of this process's mesh),
so a checkpoint written on N devices restores on M.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxregion.errors import UserError

logger = logging.getLogger(__name__)

STEPS = "steps"


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """``ShapeDtypeStruct`` leaves with ``sharding``: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def step_dirs(ckpt_dir: str) -> list[int]:
    """Finalized steps on disk (orbax's temporary directories excluded), ascending."""
    root = os.path.join(ckpt_dir, STEPS)
    if not os.path.isdir(root):
        return []
    return sorted(int(n) for n in os.listdir(root) if n.isdigit())


@dataclass
class Restored:
    step: int
    params: Any
    opt_state: Any
    meta: dict


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` for (params, opt_state, meta)."""

    def __init__(self, ckpt_dir: str, keep: int = 3, async_save: bool = True):
        self.root = os.path.abspath(os.path.join(ckpt_dir, STEPS))
        self.keep = keep
        # cleanup: a save cut short by a crash leaves a ``N.orbax-checkpoint-tmp`` dir
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(
            self.root, options=opts, item_names=("params", "opt_state", "meta")
        )

    def save(self, step: int, params: Any, opt_state: Any, meta: dict) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def restore(self, step: int, abstract_params: Any, abstract_opt: Any | None) -> Restored:
        items = dict(params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore())
        if abstract_opt is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return Restored(
            step,
            out["params"],
            out.get("opt_state") if abstract_opt is not None else None,
            dict(out["meta"]),
        )


def _leaves(tree: Any) -> list[tuple[tuple[int, ...], str]]:
    return sorted((tuple(x.shape), str(np.dtype(x.dtype))) for x in jax.tree.leaves(tree))


def matches_saved(step_dir: str, targets: dict[str, Any]) -> bool | None:
    """Whether the arrays saved in ``step_dir`` (read from orbax's metadata only) have the
    shapes and dtypes of ``targets`` (``{item: abstract tree or None}``); None when the
    metadata itself is unreadable (the step is damaged)."""
    try:
        for item, target in targets.items():
            if target is None:
                continue
            md = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir) / item)
            tree = getattr(md, "tree", md)
            if _leaves(tree) != _leaves(target):
                return False
    except Exception:  # noqa: BLE001 - any failure to read metadata means damage
        return None
    return True


def restore_latest(
    ckpt_dir: str,
    abstract_params: Any,
    abstract_opt: Any | None,
    keep: int = 3,
    step: int | None = None,
    quarantine: bool = True,
) -> Restored | None:
    """The newest readable checkpoint (or ``step``), or None when there is none.

    A step that fails to restore because its own files are damaged is reported on stderr
    and, with ``quarantine``, moved to ``CKPT_DIR/corrupt/`` (kept for inspection, out of the
    way of new saves); the previous step is tried next. A whole step whose tree differs from
    this run's is never moved: that is a UserError. If every step fails, raises UserError."""
    steps = step_dirs(ckpt_dir)
    if step is not None:
        if step not in steps:
            raise UserError(
                f"--step {step}: no checkpoint of that step in {ckpt_dir}; have "
                f"{', '.join(map(str, steps)) or 'none'}"
            )
        steps = [step]
    if not steps:
        return None
    failed = []
    for s in reversed(steps):
        ck = Checkpointer(ckpt_dir, keep=keep, async_save=False)
        try:
            return ck.restore(s, abstract_params, abstract_opt)
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            step_dir = os.path.join(ckpt_dir, STEPS, str(s))
            if (
                matches_saved(step_dir, {"params": abstract_params, "opt_state": abstract_opt})
                is False
            ):  # whole files, another tree: this run differs, the step is fine
                raise UserError(
                    f"checkpoint step {s} in {ckpt_dir} holds parameters or "
                    "optimizer state of other shapes than this run; use a new "
                    "--ckpt-dir, or --restart to set the old run aside"
                ) from None
            failed.append(s)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            msg = f"checkpoint step {s} in {ckpt_dir} is unreadable ({reason})"
            if quarantine:
                dest = os.path.join(ckpt_dir, "corrupt", f"{s}.{int(time.time())}")
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.move(os.path.join(ckpt_dir, STEPS, str(s)), dest)
                msg += f"; moved it to {dest}"
            others = [x for x in steps if x < s]
            msg += f"; falling back to step {others[-1]}" if others else ""
            logger.warning("jaxregion: warning: %s", msg)
        finally:
            ck.manager.close()
    raise UserError(
        f"{ckpt_dir}: no readable checkpoint (steps {failed} all failed to "
        "restore); use a new --ckpt-dir or remove the damaged steps"
    )
