"""Training: continued pre-training with frozen regions, pretraining from scratch.

- :mod:`~jaxregion.train.sampler`: the step-indexed deterministic data order.
- :mod:`~jaxregion.train.checkpoint`: orbax checkpoints, corrupt-step fallback, any-mesh restore.
- :mod:`~jaxregion.train.penalties`: the EWC loss term (Fisher diagonal from importance).
- :mod:`~jaxregion.train.loop`: :class:`TrainConfig`, the jit-compiled step, :func:`train`.
- :mod:`~jaxregion.train.run`: the command-level drivers (ckpt-dir setup, export, pretrain).
"""

from jaxregion.names import SCHEDULES
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
from jaxregion.train.penalties import EWC, ewc_penalty, fisher_from_scores, make_ewc
from jaxregion.train.sampler import ReplaySampler, Sampler, replay_slots

__all__ = [
    "EWC",
    "SCHEDULES",
    "Checkpointer",
    "ReplaySampler",
    "Sampler",
    "TrainConfig",
    "TrainResult",
    "ewc_penalty",
    "fisher_from_scores",
    "freeze_mask_for",
    "lr_schedule",
    "make_ewc",
    "make_optimizer",
    "make_train_step",
    "replay_slots",
    "restore_latest",
    "step_dirs",
    "train",
]
