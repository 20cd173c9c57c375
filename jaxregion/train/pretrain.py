"""Pretraining a small Llama from scratch: the one path behind ``jaxregion pretrain``, the
forgetting experiment's self-contained configs and the demo.

:func:`ensure_tokenizer` trains a byte-level BPE when none is given; :func:`pretrain` makes a
seeded random init (once, in ``ckpt_dir/init``), trains it with :func:`~jaxregion.train.train`
(resumable from ``ckpt_dir``) and exports the result as an HF directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice

import jax

from jaxregion import runtime
from jaxregion.configs import PretrainConfig, TrainConfig
from jaxregion.data.sources import open_source
from jaxregion.data.tokenizer import train_bpe
from jaxregion.io import hf
from jaxregion.strict_loader import replace_fields
from jaxregion.train.loop import TrainResult, train
from jaxregion.train.run import check_writable, make_scratch_model, prepare_ckpt_dir

logger = logging.getLogger(__name__)

INIT = "init"


@dataclass(frozen=True)
class Arch:
    """The architecture of a from-scratch Llama (vocab comes from the tokenizer)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    max_positions: int = 512
    init_seed: int = 0


def ensure_tokenizer(
    texts: Mapping[str, str], out_dir: str, vocab_size: int, docs_per_lang: int = 2000
) -> str:
    """A BPE tokenizer trained on the first ``docs_per_lang`` documents of each source
    (``{lang: source spec}``), made once in ``out_dir``."""
    if not os.path.isfile(os.path.join(out_dir, "tokenizer.json")):
        logger.info(
            "jaxregion: training a BPE tokenizer (vocab %d) on %s", vocab_size, sorted(texts)
        )
        docs = {
            lang: list(islice(open_source(src).documents(), docs_per_lang))
            for lang, src in texts.items()
        }
        train_bpe(docs, vocab_size, out_dir)
    return out_dir


def pretrain(
    texts: Mapping[str, str],
    tokenizer_dir: str,
    arch: Arch,
    cfg: TrainConfig,
    ckpt_dir: str,
    out: str,
    *,
    max_seqs: int | None = None,
    evals: Mapping[str, str] | None = None,
    eval_max_seqs: int | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    restart: bool = False,
) -> TrainResult:
    """Train a fresh Llama on ``texts`` (``{lang: source}``) and export it to ``out``.

    Resumes from ``ckpt_dir``; an interrupted run returns with ``interrupted`` set and
    exports nothing."""
    init = os.path.join(ckpt_dir, INIT)
    if not os.path.isfile(os.path.join(init, "model.safetensors")):
        make_scratch_model(
            init,
            tokenizer_dir,
            seed=arch.init_seed,
            hidden_size=arch.hidden_size,
            num_layers=arch.num_layers,
            num_heads=arch.num_heads,
            num_kv_heads=arch.num_kv_heads,
            intermediate_size=arch.intermediate_size,
            max_positions=arch.max_positions,
        )
    session = runtime.load_session(init, "float32", mesh)
    windows = runtime.load_corpora(
        [f"{k}={v}" for k, v in texts.items()], session, cfg.seq_len, max_seqs
    )
    ev = (
        runtime.load_corpora(
            [f"{k}={v}" for k, v in evals.items()], session, cfg.seq_len, eval_max_seqs
        )
        if evals
        else {}
    )
    info = {"command": "pretrain", "texts": dict(texts), "evals": dict(evals or {})}
    prepare_ckpt_dir(ckpt_dir, session.path, session.config, info, restart=restart)
    res = train(
        session.params,
        session.config,
        windows,
        cfg,
        ckpt_dir,
        evals=ev,
        mesh=session.mesh,
        progress=progress,
        run_info=info,
    )
    if not res.interrupted:
        hf.export(res.params, session.config, out, tokenizer_from=init)
    return res


def run_pretrain(
    cfg: PretrainConfig, mesh: jax.sharding.Mesh, progress: bool = True
) -> TrainResult:
    """``jaxregion pretrain``: a random-init Llama (kept in ``ckpt_dir/init``) trained on
    ``cfg``'s texts and exported to ``cfg.out``."""
    check_writable(cfg.ckpt_dir)
    arch = Arch(
        hidden_size=cfg.hidden_size,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        num_kv_heads=cfg.kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_positions=cfg.max_positions,
        init_seed=cfg.init_seed,
    )
    return pretrain(
        cfg.text,
        cfg.tokenizer,
        arch,
        replace_fields(cfg, TrainConfig),
        cfg.ckpt_dir,
        cfg.out,
        max_seqs=cfg.max_seqs,
        evals=cfg.eval,
        eval_max_seqs=cfg.eval_max_seqs,
        progress=progress,
        mesh=mesh,
        restart=cfg.restart,
    )
