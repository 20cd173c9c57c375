"""Command-level drivers shared by the CLI, ``forgetting`` and scripts.

:func:`run_train` is ``jaxregion train`` (``pretrain`` is :mod:`jaxregion.train.pretrain`);
:func:`prepare_ckpt_dir` checks and initialises a ckpt-dir (never touching existing
checkpoints); :func:`export_checkpoint` writes any saved step as an HF directory;
:func:`init_params` and :func:`llama_config` build a model from scratch for ``pretrain``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp

from jaxregion import models, runtime
from jaxregion import tree as T
from jaxregion.configs import FinetuneConfig, TrainConfig, TrainRunConfig
from jaxregion.errors import UserError
from jaxregion.io import gguf_import, hf
from jaxregion.io.atomic import write_json
from jaxregion.models import ModelConfig, abstract_params, from_hf_dict
from jaxregion.parallel import sharding
from jaxregion.regions import load_region
from jaxregion.regions.region import fingerprint
from jaxregion.strict_loader import replace_fields
from jaxregion.train import identity
from jaxregion.train.checkpoint import abstract_like, restore_latest
from jaxregion.train.loop import TrainResult, train

logger = logging.getLogger(__name__)

BASE = "base"
RUN_JSON = "run.json"


def check_writable(ckpt_dir: str) -> None:
    """UserError unless ``ckpt_dir`` exists (or can be made) and accepts files."""
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=ckpt_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(
            f"--ckpt-dir {ckpt_dir}: cannot write there ({e.strerror or e}); "
            "choose a writable directory"
        ) from None


def weights_digest(model_path: str, sample: int = 1 << 20) -> str:
    """A cheap digest of a checkpoint's weights: per weight file its name, size, header and
    three ``sample``-byte blocks (start, middle, end). Other weights of the same shapes give
    another digest; reading stays a few MiB however large the model."""
    h = hashlib.sha256()
    paths = (
        [model_path]
        if gguf_import.is_gguf(model_path)
        else sorted({f.path for f in hf.weight_files(model_path).values()})
    )
    for path in paths:
        size = os.path.getsize(path)
        h.update(f"{os.path.basename(path)}:{size};".encode())
        with open(path, "rb") as fh:
            for off in (0, max(0, size // 2 - sample // 2), max(0, size - sample)):
                fh.seek(off)
                h.update(fh.read(sample))
    return h.hexdigest()[:16]


def prepare_ckpt_dir(
    ckpt_dir: str, model_path: str, cfg: ModelConfig, run_info: dict, restart: bool = False
) -> None:
    """Check ``ckpt_dir`` belongs to this model (or is new) and record base config + tokenizer.

    Validates before writing anything: a ckpt-dir of another model raises UserError and is
    left as it was. ``restart`` first moves an existing run aside (``previous/``)."""
    if (
        restart
        and os.path.isdir(ckpt_dir)
        and any(os.path.lexists(os.path.join(ckpt_dir, n)) for n in identity.RUN_STATE)
    ):
        check_writable(ckpt_dir)
        logger.info(
            "jaxregion: --restart: moved the previous run to %s", identity.set_aside(ckpt_dir)
        )
    fp = fingerprint({k: list(v.shape) for k, v in T.flatten(abstract_params(cfg)).items()})
    run_path = os.path.join(ckpt_dir, RUN_JSON)
    if os.path.isfile(run_path):
        try:
            with open(run_path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{run_path}: unreadable ({e}); use a new --ckpt-dir") from None
        if old.get("model_fingerprint") not in (None, fp):
            raise UserError(
                f"--ckpt-dir {ckpt_dir} holds a run of another model "
                f"({old.get('model')}); use a new --ckpt-dir"
            )
        check_writable(ckpt_dir)
        return
    check_writable(ckpt_dir)
    base = os.path.join(ckpt_dir, BASE)
    os.makedirs(base, exist_ok=True)
    write_json(os.path.join(base, "config.json"), dict(cfg.hf_config))
    hf.copy_tokenizer(model_path, base)
    write_json(
        run_path, {**run_info, "model": os.path.abspath(model_path), "model_fingerprint": fp}
    )


def base_config(ckpt_dir: str) -> ModelConfig:
    base = os.path.join(ckpt_dir, BASE)
    if not os.path.isfile(os.path.join(base, "config.json")):
        raise UserError(
            f"--ckpt-dir {ckpt_dir}: no {BASE}/config.json; is it a jaxregion training directory?"
        )
    return hf.load_config(base)


def export_checkpoint(
    ckpt_dir: str,
    out_dir: str,
    step: int | None = None,
    dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> int:
    """Write step ``step`` (default: latest readable) of ``ckpt_dir`` as an HF directory."""
    if not os.path.isdir(ckpt_dir):
        raise UserError(f"--ckpt-dir {ckpt_dir}: no such directory")
    cfg = base_config(ckpt_dir)
    mesh = mesh or sharding.make_mesh()
    target = abstract_like(abstract_params(cfg), sharding.replicated(mesh))
    got = restore_latest(ckpt_dir, target, None, step=step, quarantine=False)
    if got is None:
        raise UserError(f"--ckpt-dir {ckpt_dir}: holds no checkpoint yet")
    hf.export(got.params, cfg, out_dir, tokenizer_from=os.path.join(ckpt_dir, BASE), dtype=dtype)
    return got.step


# --- from scratch --------------------------------------------------------------------------
def llama_config(
    vocab_size: int,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    tie_embeddings: bool = False,
    rope_theta: float = 10000.0,
) -> dict:
    """config.json for a Llama model, written by transformers' ``LlamaConfig`` (no torch)."""
    from transformers import LlamaConfig  # deferred: ~1.2 s to import, only pretrain needs it

    if hidden_size % num_heads:
        raise UserError(f"--hidden-size {hidden_size} is not a multiple of --heads {num_heads}")
    kv = num_kv_heads or num_heads
    if num_heads % kv:
        raise UserError(f"--heads {num_heads} is not a multiple of --kv-heads {kv}")
    c = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_positions,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=tie_embeddings,
        rope_theta=rope_theta,
    )
    d = c.to_dict()
    d["architectures"] = ["LlamaForCausalLM"]
    return d


def init_params(cfg: ModelConfig, seed: int = 0, std: float = 0.02) -> dict:
    """HF-style init: weights ~ normal(0, std), biases 0, norm weights 1 (0 for (1+w) norms)."""
    key = jax.random.PRNGKey(seed)
    flat = T.flatten(abstract_params(cfg))
    roles = models.roles(cfg)
    out = {}
    for i, (name, sds) in enumerate(flat.items()):
        r = roles[name]
        if r.kind == "norm":
            fill = 0.0 if cfg.norm_plus_one else 1.0
            out[name] = (
                jnp.full(sds.shape, fill, jnp.float32)
                if r.attr == "weight"
                else jnp.zeros(sds.shape, jnp.float32)
            )
        elif r.kind == "bias":
            out[name] = jnp.zeros(sds.shape, jnp.float32)
        else:
            out[name] = std * jax.random.normal(jax.random.fold_in(key, i), sds.shape, jnp.float32)
    return T.unflatten(out)


def make_scratch_model(out_dir: str, tokenizer_dir: str, seed: int = 0, **arch: Any) -> str:
    """An HF directory with a randomly initialised Llama and the given tokenizer."""
    tok = hf.load_tokenizer(tokenizer_dir)
    vocab = len(tok)
    d = llama_config(
        vocab,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **arch,
    )
    cfg = from_hf_dict(d, "LlamaConfig")
    params = init_params(cfg, seed)
    hf.export(params, cfg, out_dir, tokenizer_from=tokenizer_dir)
    written, want = len(hf.open_checkpoint(out_dir).files), len(T.flatten(params))
    if written != want:
        raise RuntimeError(f"{out_dir}: the export holds {written} tensors, the model {want}")
    return out_dir


# --- the commands ---------------------------------------------------------------------------
def _run(
    cfg: TrainRunConfig,
    command: str,
    model: str,
    freeze: str | None,
    mesh: jax.sharding.Mesh,
    progress: bool,
) -> TrainResult:
    """Train ``model`` on ``cfg``'s texts (all input checked before anything is written)."""
    tcfg = replace_fields(cfg, TrainConfig)
    session = runtime.load_session(model, "float32", mesh)
    region = load_region(freeze, template=session.params) if freeze else None
    windows = runtime.load_corpora(cfg.text, session, cfg.seq_len, cfg.max_seqs)
    evals = (
        runtime.load_corpora(cfg.eval, session, cfg.seq_len, cfg.eval_max_seqs) if cfg.eval else {}
    )
    info = {
        "command": command,
        "texts": [f"{k}={v}" for k, v in cfg.text.items()],
        "evals": [f"{k}={v}" for k, v in cfg.eval.items()],
        "freeze": freeze,
        "freeze_norms": cfg.freeze_norms,
    }
    prepare_ckpt_dir(cfg.ckpt_dir, session.path, session.config, info, restart=cfg.restart)
    res = train(
        session.params,
        session.config,
        windows,
        tcfg,
        cfg.ckpt_dir,
        region=region,
        evals=evals,
        mesh=session.mesh,
        progress=progress,
        run_info=info,
        model_id=weights_digest(session.path),
    )
    if cfg.export and not res.interrupted:
        hf.export(res.params, session.config, cfg.export, tokenizer_from=session.path)
    return res


def run_train(cfg: FinetuneConfig, mesh: jax.sharding.Mesh, progress: bool = True) -> TrainResult:
    """``jaxregion train``: continued pre-training of ``cfg.model``, ``cfg.freeze`` frozen;
    resumes from ``cfg.ckpt_dir``; writes ``cfg.export`` at the end."""
    return _run(cfg, "train", cfg.model, cfg.freeze, mesh, progress)
