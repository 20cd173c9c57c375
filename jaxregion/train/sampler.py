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
        return {"seed": self.seed, "step": int(step), "batch_size": self.batch_size,
                "langs": self.langs, "windows": [int(len(w)) for w in self.windows]}
