"""Perplexity and bits per byte under the packing contract, through one jit-compiled,
batch-sharded function."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np

from jaxregion.errors import UserError
from jaxregion.models import ModelConfig, weighted_nll_sum
from jaxregion.parallel import sharding


@dataclass(frozen=True)
class EvalResult:
    loss: float
    perplexity: float
    tokens: int  # predicted positions
    windows: int
    bytes: int | None = None  # UTF-8 bytes of the predicted tokens (see scored_bytes)
    bits_per_byte: float | None = None


def scored_bytes(windows: np.ndarray, token_bytes: np.ndarray) -> int:
    """UTF-8 bytes of the predicted tokens: window positions ``1..seq_len-1``.

    ``token_bytes`` is :func:`jaxregion.data.tokenizer.token_byte_lengths`. Position 0 of a
    window is context only, so its bytes are not counted, just as its token is not scored.
    """
    return int(token_bytes[windows[:, 1:]].sum())


def bits_per_byte(loss: float, tokens: int, n_bytes: int) -> float:
    """Total NLL in bits over the bytes it predicts: ``loss * tokens / (ln 2 * bytes)``."""
    return loss * tokens / (math.log(2) * n_bytes)


_nll_sum = jax.jit(weighted_nll_sum, static_argnames=("cfg", "remat"))


def padded_batches(windows: np.ndarray, batch_size: int, multiple: int = 1):
    """Fixed-shape batches (one compilation): the last is zero-padded with weight 0."""
    b = -(-batch_size // multiple) * multiple
    for start in range(0, len(windows), b):
        chunk = windows[start : start + b]
        weights = np.zeros(b, np.float32)
        weights[: len(chunk)] = 1.0
        if len(chunk) < b:
            chunk = np.concatenate(
                [chunk, np.zeros((b - len(chunk), windows.shape[1]), windows.dtype)]
            )
        yield chunk, weights


def evaluate(
    params: dict,
    cfg: ModelConfig,
    windows: np.ndarray,
    batch_size: int = 8,
    mesh: jax.sharding.Mesh | None = None,
    progress: Callable[[int], None] | None = None,
    token_bytes: np.ndarray | None = None,
) -> EvalResult:
    """Mean next-token loss over all windows (``[n, seq_len]`` int) and its perplexity; with
    ``token_bytes`` (bytes per token id) also bits per byte."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise UserError(f"batch size {batch_size!r}: must be a positive integer")
    mesh = mesh or sharding.make_mesh()
    total = 0.0
    for batch, weights in padded_batches(windows, batch_size, sharding.batch_multiple(mesh)):
        s = _nll_sum(
            params, sharding.put_batch(batch, mesh), sharding.put_batch(weights, mesh), cfg
        )
        total += float(s)
        if progress:
            progress(int(weights.sum()))
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    loss = total / tokens
    ppl = math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf
    if not math.isfinite(ppl):
        raise UserError(
            f"the loss is {loss} (perplexity {ppl}): the model computes non-finite "
            "or overflowing values; check config.json (e.g. rms_norm_eps) and the "
            "weights or the intervention applied"
        )
    n_bytes = None if token_bytes is None else scored_bytes(windows, token_bytes)
    bpb = bits_per_byte(loss, tokens, n_bytes) if n_bytes else None
    return EvalResult(
        loss=loss,
        perplexity=ppl,
        tokens=tokens,
        windows=int(windows.shape[0]),
        bytes=n_bytes,
        bits_per_byte=bpb,
    )
