"""What every command does first: load a model and its tokenizer, pack corpora, evaluate.

Kept in the library (not the CLI) so scripts and the CLI share one code path and one set of
input checks. All input is validated before any output is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxregion import interventions
from jaxregion.configs import EvalConfig
from jaxregion.data.packing import load_windows
from jaxregion.data.sources import open_source, parse_lang_spec
from jaxregion.data.tokenizer import token_byte_lengths
from jaxregion.errors import UserError
from jaxregion.evaluate import EvalResult, evaluate
from jaxregion.io import hf
from jaxregion.models import ModelConfig, roles
from jaxregion.models.moe import drop_experts
from jaxregion.parallel import sharding
from jaxregion.regions import load_region, whole_experts


@dataclass
class Session:
    """A loaded model: config, params, tokenizer, mesh and where it came from."""

    model: str
    path: str
    config: ModelConfig
    params: dict
    tokenizer: object
    mesh: jax.sharding.Mesh
    _token_bytes: tuple = field(default=(), init=False, repr=False)  # () = not computed yet

    def token_bytes(self) -> np.ndarray | None:
        """UTF-8 bytes per token id (for bits per byte); None without a known tokenizer."""
        if not self._token_bytes:
            table = (
                None
                if self.tokenizer is None
                else token_byte_lengths(self.tokenizer, self.config.vocab_size)
            )
            self._token_bytes = (table,)
        return self._token_bytes[0]


def load_session(
    model: str,
    dtype: str = "float32",
    mesh: jax.sharding.Mesh | None = None,
    with_tokenizer: bool = True,
) -> Session:
    """The model at ``model`` in ``dtype``, placed on ``mesh`` by the sharding rules
    (None: a mesh with every device on ``data``)."""
    mesh = mesh if mesh is not None else sharding.make_mesh()
    ck = hf.open_checkpoint(model)
    tok = hf.load_tokenizer(ck.path) if with_tokenizer else None
    params = hf.load_params(ck, jnp.dtype(dtype), sharding.placement(ck.config, mesh))
    return Session(model, ck.path, ck.config, params, tok, mesh)


def parse_texts(specs: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``{lang: source}`` from ``LANG=SOURCE`` specs (a mapping is returned as it is)."""
    if isinstance(specs, Mapping):
        return dict(specs)
    out: dict[str, str] = {}
    for s in specs:
        lang, src = parse_lang_spec(s)
        if lang in out:
            raise UserError(f"--text {s!r}: language {lang!r} given twice")
        out[lang] = src
    return out


def check_seq_len(cfg: ModelConfig, seq_len: int) -> None:
    if seq_len > cfg.max_position_embeddings:
        raise UserError(
            f"--seq-len {seq_len}: beyond the model's maximum positions "
            f"({cfg.max_position_embeddings}, config.json max_position_embeddings)"
        )


def load_corpora(
    specs: Sequence[str] | Mapping[str, str], session: Session, seq_len: int, max_seqs: int | None
) -> dict[str, np.ndarray]:
    """``{lang: windows [n, seq_len]}`` for ``LANG=SOURCE`` specs, all checked up front."""
    texts = parse_texts(specs)
    check_seq_len(session.config, seq_len)
    out = {}
    for lang, spec in texts.items():
        src = open_source(spec)
        out[lang] = load_windows(
            src.documents(), session.tokenizer, seq_len, max_seqs, source=src.name
        )
        if int(out[lang].max()) >= session.config.vocab_size:
            raise UserError(
                f"{src.name}: token id {int(out[lang].max())} is beyond the model's "
                f"vocab_size {session.config.vocab_size}; wrong tokenizer?"
            )
    return out


DROP_EXPERT = "drop-expert"


def _drop_pairs(op: str) -> list[tuple[int, int]] | None:
    """``drop-expert`` -> []; ``drop-expert:L.E,L.E`` -> those pairs; None for other ops."""
    kind, sep, arg = op.strip().partition(":")
    if kind != DROP_EXPERT:
        return None
    pairs = []
    for item in arg.split(",") if sep else []:
        layer, dot, e = item.strip().partition(".")
        if not (dot and layer.isdigit() and e.isdigit()):
            raise UserError(
                f"region op {op!r}: {item!r} is not LAYER.EXPERT (e.g. drop-expert:0.3,1.5)"
            )
        pairs.append((int(layer), int(e)))
    return pairs


def edit_model(
    session: Session,
    region: str | None = None,
    region_op: str = "zero",
    perturbs: Sequence[str] = (),
    seed: int = 0,
) -> tuple[ModelConfig, dict]:
    """The config and params with a region file's op and single-entry perturbations applied
    (all validated). ``drop-expert`` (the region's whole experts, or ``drop-expert:L.E,...``)
    changes only the config: the routers renormalise over the experts they keep."""
    cfg, params = session.config, session.params
    pairs = _drop_pairs(region_op)
    if pairs is not None:
        if region:
            pairs += whole_experts(load_region(region, template=params), roles(cfg))
        if cfg.is_moe and not pairs:
            raise UserError(
                "--region-op drop-expert: no expert to drop; give --region FILE "
                "holding whole experts (--granularity expert) or "
                "drop-expert:LAYER.EXPERT,..."
            )
        cfg = drop_experts(cfg, pairs)
    elif region:
        interventions.parse_region_op(region_op)
        reg = load_region(region, template=params)
        params = interventions.region_op(params, reg, region_op, seed=seed)
    for spec in perturbs:
        params = interventions.apply_perturb(params, spec)
    return cfg, params


def edit_params(
    session: Session,
    region: str | None = None,
    region_op: str = "zero",
    perturbs: Sequence[str] = (),
    seed: int = 0,
) -> dict:
    """Params with a region file's op and single-entry perturbations applied (all validated);
    :func:`edit_model` for the ops that change the config too."""
    cfg, params = edit_model(session, region, region_op, perturbs, seed)
    if cfg != session.config:
        raise UserError(
            f"--region-op {region_op} changes the routing; this command edits params only"
        )
    return params


def evaluate_corpora(
    session: Session,
    corpora: dict[str, np.ndarray],
    batch_size: int,
    params: dict | None = None,
    desc: str = "eval",
    config: ModelConfig | None = None,
) -> dict[str, EvalResult]:
    params = session.params if params is None else params
    config = session.config if config is None else config
    token_bytes = session.token_bytes()
    total = sum(len(w) for w in corpora.values())
    results = {}
    with tqdm(total=total, desc=desc, unit="win", disable=None, leave=False) as bar:
        for lang, windows in corpora.items():
            bar.set_postfix_str(lang)
            results[lang] = evaluate(
                params,
                config,
                windows,
                batch_size,
                session.mesh,
                progress=bar.update,
                token_bytes=token_bytes,
            )
    return results


def run_eval(cfg: EvalConfig, mesh: jax.sharding.Mesh) -> dict:
    """``jaxregion eval``: perplexity, loss, tokens and bits per byte per language, as
    strict-JSON data."""
    session = load_session(cfg.model, cfg.dtype, mesh)
    model_cfg, params = edit_model(session, cfg.region, cfg.region_op, cfg.perturb, cfg.seed)
    corpora = load_corpora(cfg.text, session, cfg.seq_len, cfg.max_seqs)
    results = evaluate_corpora(session, corpora, cfg.batch_size, params=params, config=model_cfg)
    return {
        "model": cfg.model,
        "seq_len": cfg.seq_len,
        "dtype": cfg.dtype,
        "region": cfg.region,
        "region_op": cfg.region_op if cfg.region else None,
        "perturb": list(cfg.perturb),
        "perplexity": {k: r.perplexity for k, r in results.items()},
        "loss": {k: r.loss for k, r in results.items()},
        "tokens": {k: r.tokens for k, r in results.items()},
        "windows": {k: r.windows for k, r in results.items()},
        "bits_per_byte": {k: r.bits_per_byte for k, r in results.items()},
        "bytes": {k: r.bytes for k, r in results.items()},
    }
