"""Batched text generation: greedy by default, temperature / top-p sampling on request.

Why: the paper's case studies are text the edited model writes. Prompts of different lengths
share one batch, right-padded: row ``i`` writes its ``t``-th new token at position
``len(prompt_i) + t``, so positions need no offsets and causal masking hides the padding.
Shapes are static (batch and buffer length are padded up), so one compilation serves a run.
Prefill and decode run in one jitted function over a key/value cache
(:mod:`jaxregion.models.kvcache`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import runtime, safety
from jaxregion.configs import GenerateConfig
from jaxregion.data.packing import document_tokens
from jaxregion.errors import UserError
from jaxregion.models import ModelConfig, kvcache

MIN_TEMPERATURE = 1e-6  # logits up to ~1e32 stay finite in float32 when divided by it


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: ``temperature == 0`` is greedy (argmax)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if not self.temperature >= 0:
            raise UserError(f"--temperature {self.temperature}: must be >= 0 (0 = greedy)")
        if 0 < self.temperature < MIN_TEMPERATURE:  # float32 logits / t overflow: garbage
            raise UserError(
                f"--temperature {self.temperature!r}: below {MIN_TEMPERATURE:g}, "
                "float32 logits divided by it overflow; use 0 for greedy decoding"
            )
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p {self.top_p}: must be in (0, 1]")


GREEDY = Sampling()


@dataclass(frozen=True)
class Generation:
    """The generated ids of each prompt, cut after the first EOS (which is kept)."""

    token_ids: list[list[int]]
    logits: list[np.ndarray] | None = None  # per prompt ``[len(token_ids), vocab]`` float32


def check_prompts(
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    cfg: ModelConfig,
    names: Sequence[str] | None = None,
    key: str = "--max-new-tokens",
) -> None:
    """Bad input named before anything runs: empty prompts, no room to generate."""
    if max_new_tokens <= 0:
        raise UserError(f"{key} {max_new_tokens}: must be at least 1")
    if not prompts:
        raise UserError("no prompts given; pass --prompt TEXT or --prompts FILE.jsonl")
    for i, p in enumerate(prompts):
        name = names[i] if names else f"prompt {i}"
        if len(p) == 0:
            raise UserError(f"{name}: empty prompt; give at least one token of text")
        if len(p) + max_new_tokens > cfg.max_position_embeddings:
            raise UserError(
                f"{name}: {len(p)} prompt tokens + {key} {max_new_tokens} exceed "
                f"the model's context ({cfg.max_position_embeddings}, config.json "
                "max_position_embeddings); shorten the prompt or generate fewer tokens"
            )
        orig = cfg.rope_original_max() if cfg.rope_kind == "longrope" else None
        if orig is not None and len(p) <= orig < len(p) + max_new_tokens - 1:
            raise UserError(
                f"{name}: {len(p)} prompt tokens + {key} {max_new_tokens} cross "
                f"longrope's original_max_position_embeddings ({orig}), where transformers "
                "recomputes the whole cache with the long factors; jaxregion's cache does not "
                f"yet: keep prompt + new tokens <= {orig + 1}, or start past {orig} tokens"
            )


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
        logits = (
            jnp.full_like(logits, -jnp.inf)
            .at[jnp.arange(logits.shape[0])[:, None], order]
            .set(sorted_logits)
        )
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _round_up(n: int, m: int = 16) -> int:
    return -(-n // m) * m


def _bucket(n: int, cap: int) -> int:
    """Prompt buffer width: a power of two (few compilations), at most ``cap``."""
    return min(cap, max(16, 1 << (n - 1).bit_length()))


def _run(
    params: dict,
    prompts: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    cfg: ModelConfig,
    slots: int,
    max_new: int,
    sampling: Sampling,
    eos: int | None,
    with_logits: bool,
) -> tuple[jax.Array, jax.Array | None]:
    """Prefill all prompts, then decode ``max_new`` tokens (stopping early once every row
    has produced ``eos``). Returns ids ``[b, max_new]`` and, if asked, each step's logits."""
    b = prompts.shape[0]
    dtype = jax.tree.leaves(params)[0].dtype
    cache = kvcache.init_cache(cfg, b, slots, dtype)
    # Padding is position -1: it attends to nothing, writes a slot never read (the last),
    # and does not count as sequence length (longrope picks its factors per row by length).
    idx = jnp.arange(prompts.shape[1])[None]
    positions = jnp.where(idx < lengths[:, None], idx, -1)
    logits, cache = kvcache.forward(params, cfg, prompts, positions, cache, last=lengths - 1)
    key, sub = jax.random.split(key)
    tok = choose(logits, sub, sampling)
    out = jnp.zeros((b, max_new), jnp.int32).at[:, 0].set(tok)
    seen = (
        jnp.zeros((b, max_new, logits.shape[-1]), jnp.float32).at[:, 0].set(logits)
        if with_logits
        else None
    )
    done = tok == eos if eos is not None else jnp.zeros(b, bool)

    def cond(carry):
        t, _, _, _, done, _ = carry
        return (t < max_new) & ~jnp.all(done)

    def body(carry):
        t, out, cache, key, done, seen = carry
        prev = jax.lax.dynamic_index_in_dim(out, t - 1, axis=1, keepdims=True)
        logits, cache = kvcache.forward(params, cfg, prev, (lengths + t - 1)[:, None], cache)
        logits = logits[:, 0]
        key, sub = jax.random.split(key)
        tok = choose(logits, sub, sampling)
        out = jax.lax.dynamic_update_index_in_dim(out, tok, t, axis=1)
        if with_logits:
            seen = jax.lax.dynamic_update_index_in_dim(seen, logits, t, axis=1)
        if eos is not None:
            done = done | (tok == eos)
        return t + 1, out, cache, key, done, seen

    _, out, _, _, _, seen = jax.lax.while_loop(cond, body, (1, out, cache, key, done, seen))
    return out, seen


_run_jit = jax.jit(
    _run, static_argnames=("cfg", "slots", "max_new", "sampling", "eos", "with_logits")
)


def generate(
    params: dict,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    eos_token_id: int | None = None,
    batch_size: int | None = None,
    with_logits: bool = False,
) -> Generation:
    """Generate up to ``max_new_tokens`` after each prompt (token ids), ``batch_size`` rows
    at a time (default: all at once). ``with_logits`` also returns each step's float32 logits
    ``[new, vocab]`` per prompt (for tests and analyses)."""
    check_prompts(prompts, max_new_tokens, cfg)
    sampling.check()
    b = batch_size or len(prompts)
    static = dataclasses.replace(sampling, seed=0)  # what the compiled function depends on
    longest = max(map(len, prompts))
    width = _bucket(longest, cfg.max_position_embeddings)
    slots = _round_up(max(width, longest + max_new_tokens))
    ids: list[list[int]] = []
    logits: list[np.ndarray] = []
    for start in range(0, len(prompts), b):
        chunk = prompts[start : start + b]
        buf = np.zeros((b, width), np.int32)
        lengths = np.ones(b, np.int32)
        for r, p in enumerate(chunk):
            buf[r, : len(p)] = p
            lengths[r] = len(p)
        # The seed is data (no recompilation per seed); each batch draws its own stream.
        key = jax.random.fold_in(jax.random.PRNGKey(sampling.seed), start)
        out, seen = _run_jit(
            params,
            jnp.asarray(buf),
            jnp.asarray(lengths),
            key,
            cfg,
            slots,
            max_new_tokens,
            static,
            eos_token_id,
            with_logits,
        )
        out = np.asarray(out)
        for r in range(len(chunk)):
            row = out[r].tolist()
            if eos_token_id is not None and eos_token_id in row:
                row = row[: row.index(eos_token_id) + 1]
            ids.append(row)
            if with_logits:
                logits.append(np.asarray(seen[r, : len(row)]))
    return Generation(token_ids=ids, logits=logits if with_logits else None)


def check_texts(texts: Sequence[str], names: Sequence[str] | None = None) -> None:
    """No prompt may be empty (or only whitespace): there is nothing to continue."""
    for i, t in enumerate(texts):
        if not t.strip():
            raise UserError(f"{names[i] if names else f'prompt {i}'}: empty prompt; give some text")


def encode_prompts(
    texts: Sequence[str], tokenizer, names: Sequence[str] | None = None
) -> list[list[int]]:
    """Prompt ids as the packing contract spells a document: ``[BOS] + tokens`` (just the
    tokens when the tokenizer has no BOS); each prompt on its own."""
    check_texts(texts, names)
    return [next(document_tokens([t], tokenizer)) for t in texts]


def completions(
    params: dict,
    cfg: ModelConfig,
    tokenizer,
    texts: Sequence[str],
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    batch_size: int | None = None,
    names: Sequence[str] | None = None,
) -> list[dict]:
    """``[{prompt, completion, token_ids}]``: what the model writes after each prompt text
    (EOS ends a completion and is not part of its text)."""
    ids = encode_prompts(texts, tokenizer, names)
    check_prompts(ids, max_new_tokens, cfg, names)
    gen = generate(
        params,
        cfg,
        ids,
        max_new_tokens,
        sampling,
        eos_token_id=getattr(tokenizer, "eos_token_id", None),
        batch_size=batch_size,
    )
    return [
        {"prompt": t, "completion": tokenizer.decode(g, skip_special_tokens=True), "token_ids": g}
        for t, g in zip(texts, gen.token_ids)
    ]


def read_prompts(path: str) -> list[tuple[str, str]]:
    """``[(name for errors, text)]`` from a JSONL file: one JSON string, or object with a
    ``"prompt"`` string, a line."""
    safety.reading(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
            text = obj.get("prompt") if isinstance(obj, dict) else obj
            if not isinstance(text, str):
                raise UserError(
                    f'{path}:{n}: expected a string or an object with a "prompt" string'
                )
            out.append((f"{path}:{n}", safety.check_text(text, f"{path}:{n}")))
    return out


def run_generate(cfg: GenerateConfig, mesh: jax.sharding.Mesh | None = None) -> list[dict]:
    """``jaxregion generate``: one row per prompt (``prompt``, ``completion``,
    ``token_ids``; with an edit also ``edited``), every prompt checked before the model
    runs."""
    named = read_prompts(cfg.prompts) if cfg.prompts else []
    named += [(f"--prompt {i + 1}", t) for i, t in enumerate(cfg.prompt)]
    if not named:
        raise UserError(
            f"{cfg.prompts}: holds no prompt; pass --prompt TEXT or a non-empty "
            "--prompts FILE.jsonl"
        )
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.seed)
    sampling.check()
    names, texts = [n for n, _ in named], [t for _, t in named]
    check_texts(texts, names)
    session = runtime.load_session(cfg.model, cfg.dtype, mesh)
    check_prompts(
        encode_prompts(texts, session.tokenizer, names), cfg.max_new_tokens, session.config, names
    )
    edited_cfg, params = runtime.edit_model(
        session, cfg.region, cfg.region_op, cfg.perturb, cfg.seed
    )

    def write(p: dict, c: ModelConfig) -> list[dict]:
        return completions(
            p, c, session.tokenizer, texts, cfg.max_new_tokens, sampling, cfg.batch_size, names
        )

    rows = write(session.params, session.config)
    if cfg.region or cfg.perturb or edited_cfg != session.config:
        for row, e in zip(rows, write(params, edited_cfg), strict=True):
            row["edited"] = {"completion": e["completion"], "token_ids": e["token_ids"]}
    return rows
