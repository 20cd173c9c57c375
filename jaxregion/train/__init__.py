"""Training: continued pre-training with frozen regions, pretraining from scratch.

- :mod:`~jaxregion.train.sampler`: the step-indexed deterministic data order.
- :mod:`~jaxregion.train.checkpoint`: orbax checkpoints, corrupt-step fallback, any-mesh restore.
- :mod:`~jaxregion.train.loop`: :class:`TrainConfig`, the jit-compiled step, :func:`train`.
- :mod:`~jaxregion.train.run`: the command-level drivers (ckpt-dir setup, export, pretrain).
"""

from jaxregion.configs import SCHEDULES
from jaxregion.train.checkpoint import Checkpointer, restore_latest, step_dirs
from jaxregion.train.loop import (
    TrainConfig,
    TrainResult,
    freeze_mask_for,
    lr_schedule,
    make_optimizer,
    make_train_step,
    train,
)
from jaxregion.train.sampler import Sampler

__all__ = [
    "SCHEDULES", "Checkpointer", "Sampler", "TrainConfig", "TrainResult", "freeze_mask_for",
    "lr_schedule", "make_optimizer", "make_train_step", "restore_latest", "step_dirs", "train",
]
