"""Batched text generation: greedy by default, temperature / top-p sampling on request.

Why: the paper's case studies are text the edited model writes. Prompts of different lengths
share one batch, right-padded: row ``i`` writes its ``t``-th new token at position
``len(prompt_i) + t``, so positions need no offsets and causal masking hides the padding.
Shapes are static (batch and buffer length are padded up), so one compilation serves a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion.errors import UserError
from jaxregion.models import ModelConfig, apply


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: ``temperature == 0`` is greedy (argmax)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if not self.temperature >= 0:
            raise UserError(f"--temperature {self.temperature}: must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p {self.top_p}: must be in (0, 1]")


@dataclass(frozen=True)
class Generation:
    """The generated ids of each prompt, cut after the first EOS (which is kept)."""

    token_ids: list[list[int]]


def check_prompts(prompts: Sequence[Sequence[int]], max_new_tokens: int, cfg: ModelConfig,
                  names: Sequence[str] | None = None) -> None:
    """Bad input named before anything runs: empty prompts, no room to generate."""
    if max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    if not prompts:
        raise UserError("no prompts given; pass --prompt TEXT or --prompts FILE.jsonl")
    for i, p in enumerate(prompts):
        name = names[i] if names else f"prompt {i}"
        if len(p) == 0:
            raise UserError(f"{name}: empty prompt; give at least one token of text")
        if len(p) + max_new_tokens > cfg.max_position_embeddings:
            raise UserError(
                f"{name}: {len(p)} prompt tokens + --max-new-tokens {max_new_tokens} exceed "
                f"the model's context ({cfg.max_position_embeddings}, config.json "
                "max_position_embeddings); shorten the prompt or generate fewer tokens")


def choose(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    """Next token ``[batch]`` from float32 logits ``[batch, vocab]``."""
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_p < 1:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
        sorted_logits = jnp.where(before < sampling.top_p, sorted_logits, -jnp.inf)
        logits = jnp.full_like(logits, -jnp.inf).at[
            jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _bucket(n: int, cap: int) -> int:
    return min(cap, max(16, 1 << (n - 1).bit_length()))


def _generate_uncached(params: dict, buf: jax.Array, lengths: jax.Array, cfg: ModelConfig,
                       max_new: int, sampling: Sampling) -> jax.Array:
    """Each step recomputes the whole buffer: the reference the KV cache must equal."""
    rows = jnp.arange(buf.shape[0])

    def step(t, carry):
        buf, key = carry
        key, sub = jax.random.split(key)
        logits = apply(params, buf, cfg)[rows, lengths - 1 + t].astype(jnp.float32)
        return buf.at[rows, lengths + t].set(choose(logits, sub, sampling)), key

    key = jax.random.PRNGKey(sampling.seed)
    return jax.lax.fori_loop(0, max_new, step, (buf, key))[0]


_generate_uncached_jit = jax.jit(_generate_uncached,
                                 static_argnames=("cfg", "max_new", "sampling"))


def generate(params: dict, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
             max_new_tokens: int, sampling: Sampling = Sampling(),
             eos_token_id: int | None = None, batch_size: int | None = None) -> Generation:
    """Generate ``max_new_tokens`` after each prompt (token ids), in batches of ``batch_size``."""
    check_prompts(prompts, max_new_tokens, cfg)
    sampling.check()
    b = batch_size or len(prompts)
    width = _bucket(max(map(len, prompts)) + max_new_tokens, cfg.max_position_embeddings)
    out: list[list[int]] = []
    for start in range(0, len(prompts), b):
        chunk = prompts[start:start + b]
        buf = np.zeros((b, width), np.int32)
        lengths = np.ones(b, np.int32)
        for r, p in enumerate(chunk):
            buf[r, :len(p)] = p
            lengths[r] = len(p)
        res = np.asarray(_generate_uncached_jit(params, jnp.asarray(buf), jnp.asarray(lengths),
                                                cfg, max_new_tokens, sampling))
        for r, p in enumerate(chunk):
            ids = res[r, len(p):len(p) + max_new_tokens].tolist()
            if eos_token_id is not None and eos_token_id in ids:
                ids = ids[:ids.index(eos_token_id) + 1]
            out.append(ids)
    return Generation(token_ids=out)
