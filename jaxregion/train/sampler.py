"""A step-indexed, checkpoint-free data order: the batch of step ``s`` is a pure function of
``(seed, s)``, so resuming at step ``s`` needs nothing but ``s``.

Languages are interleaved round-robin in the order given: global example ``g = s * B + j``
comes from language ``g % L`` and is that language's example number ``k = g // L``. Each
language walks through a fresh seeded permutation of its windows every epoch
(``epoch = k // n_lang``), so languages of different sizes simply cycle at their own pace.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxregion.errors import UserError


class Sampler:
    """``batch(step) -> int32 [batch_size, seq_len]``; deterministic and stateless."""

    def __init__(self, windows: Mapping[str, np.ndarray], batch_size: int, seed: int = 0):
        if not windows:
            raise UserError("no training text: pass at least one --text LANG=SOURCE")
        if batch_size <= 0:
            raise UserError(f"--batch-size {batch_size}: must be positive")
        self.langs = list(windows)
        self.windows = [np.asarray(windows[lang], dtype=np.int32) for lang in self.langs]
        lens = {w.shape[1] for w in self.windows}
        if len(lens) != 1:
            raise UserError(f"training windows have different lengths {sorted(lens)}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, li: int, epoch: int) -> np.ndarray:
        key = (li, epoch)
        p = self._perm_cache.get(key)
        if p is None:
            rng = np.random.default_rng([self.seed, li, epoch])
            p = rng.permutation(len(self.windows[li]))
            if len(self._perm_cache) > 4 * len(self.langs):
                self._perm_cache.clear()
            self._perm_cache[key] = p
        return p

    def indices(self, step: int) -> list[tuple[int, int]]:
        """``[(language index, window index)]`` of the batch at ``step``."""
        n_l = len(self.langs)
        out = []
        for j in range(self.batch_size):
            g = step * self.batch_size + j
            li, k = g % n_l, g // n_l
            n = len(self.windows[li])
            out.append((li, int(self._perm(li, k // n)[k % n])))
        return out

    def batch(self, step: int) -> np.ndarray:
        return np.stack([self.windows[li][wi] for li, wi in self.indices(step)])

    def state(self, step: int) -> dict:
        """What a checkpoint records about the input pipeline (for checking on resume)."""
        return {
            "seed": self.seed,
            "step": int(step),
            "batch_size": self.batch_size,
            "langs": self.langs,
            "windows": [int(len(w)) for w in self.windows],
        }


#: The replayed stream's seed is the run's seed plus this (an independent permutation stream).
SOURCE_SEED_OFFSET = 7919


def replay_slots(batch_size: int, n_replay: int) -> np.ndarray:
    """Bool ``[batch_size]``: which batch positions hold replayed windows, spread evenly
    (position j is a replay slot when floor((j+1) r / B) > floor(j r / B)), so every
    gradient-accumulation micro-batch gets its share too."""
    j = np.arange(batch_size)
    return (j + 1) * n_replay // batch_size > j * n_replay // batch_size


class ReplaySampler:
    """Data replay on the same token budget: of every batch of ``batch_size`` windows,
    exactly ``ratio * batch_size`` (which must be a whole number) are source-language
    windows and the rest target windows. Both parts are :class:`Sampler` streams (the
    source one on its own seed stream), so the batch of step ``s`` is still a pure function
    of ``(seed, s)`` and resuming needs nothing but ``s``."""

    def __init__(
        self,
        target: Mapping[str, np.ndarray],
        source: Mapping[str, np.ndarray],
        batch_size: int,
        ratio: float,
        seed: int = 0,
    ):
        n_rep = round(ratio * batch_size)
        if not (0.0 < ratio < 1.0) or abs(ratio * batch_size - n_rep) > 1e-9 or n_rep == 0:
            raise UserError(
                f"replay ratio {ratio} of batch size {batch_size} is not a whole "
                "number of windows in (0, batch size); choose a ratio such that "
                "ratio * batch_size is an integer (e.g. 0.25 with batch 8)"
            )
        if not source:
            raise UserError("replay ratio > 0 needs source-language windows to replay")
        self.target = Sampler(target, batch_size - n_rep, seed)
        self.source = Sampler(source, n_rep, int(seed) + SOURCE_SEED_OFFSET)
        if self.target.windows[0].shape[1] != self.source.windows[0].shape[1]:
            raise UserError("replay windows and training windows have different lengths")
        self.batch_size = int(batch_size)
        self.n_replay = n_rep
        self.ratio = float(ratio)
        self.seed = int(seed)
        self.langs = self.target.langs
        self.windows = self.target.windows
        self.slots = replay_slots(batch_size, n_rep)

    def batch(self, step: int) -> np.ndarray:
        out = np.empty((self.batch_size, self.windows[0].shape[1]), np.int32)
        out[~self.slots] = self.target.batch(step)
        out[self.slots] = self.source.batch(step)
        return out

    def state(self, step: int) -> dict:
        st = self.target.state(step)
        st["batch_size"] = self.batch_size
        st["replay"] = {
            "ratio": self.ratio,
            "n": self.n_replay,
            "langs": self.source.langs,
            "windows": [int(len(w)) for w in self.source.windows],
        }
        return st
