"""Every command's options, one frozen dataclass each, and the small name registries they use.

This module is the single source of the command-line flags and the YAML keys: the CLI
(:mod:`jaxregion.cli.options`) generates both from these fields, and the library functions
take these objects. It imports nothing heavy (no jax), so ``jaxregion CMD --help`` stays fast;
the modules that do the work import their config from here.

Field metadata (:func:`jaxregion.strict_loader.option`) holds the help text and the checks (bounds,
choices, finiteness) applied to a value whether it comes from a flag or a YAML key.
Cross-field checks live in each class's ``validate()``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jaxregion.errors import UserError
from jaxregion.names import (
    COMPUTE_DTYPES,
    DATA_FREE,
    DEFAULT_DIMS_TARGETS,
    DEFAULT_INCLUDE,
    ESTIMATORS,
    EXPORT_DTYPES,
    FORGETTING_BASELINES,
    FORGETTING_X_AXES,
    GRANULARITIES,
    LANG_KINDS,
    PLAN_TASKS,
    REGION_KINDS,
    SCHEDULES,
    SCOPES,
)
from jaxregion.strict_loader import check, lang_specs, option, replace_fields

EXPERT_RANKS = ("importance", "routing")  # how --granularity expert ranks whole experts

_TEXT_HELP = "a language and its corpus; repeat for several languages (YAML: {lang: source})"


def _texts(help: str = _TEXT_HELP, **kw) -> Mapping[str, str]:  # noqa: A002
    return option(help=help, metavar="LANG=SOURCE", coerce=lang_specs, name="language", **kw)


FLOAT32_MAX = 3.4028234663852886e38  # the compute dtypes' range (float32, bfloat16)


def _float32(value: float, where: str) -> None:
    """``check`` of a number used in float32 arithmetic: it must stay finite there."""
    if abs(value) > FLOAT32_MAX:
        raise UserError(
            f"{where}: {value!r} is inf in float32 (largest finite "
            f"{FLOAT32_MAX:.4g}); give a smaller value"
        )


_EDIT_VALUE = re.compile(r"[:*=+]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")


def _edit_value(value: str, where: str) -> None:
    """``check`` of a region op (``scale:F``, ``set:V``) or a perturbation
    (``NAME[IDX]*V``): its number must be finite in float32, so it is refused when the flag
    or key is read (the grammar is checked where the edit is parsed, in interventions)."""
    m = _EDIT_VALUE.search(value.strip())
    try:
        v = float(m.group(1)) if m else math.nan
    except ValueError:
        return
    if math.isfinite(v):
        _float32(v, where)


def _fraction(value: float, where: str) -> None:
    """``check`` of a region size given as a fraction in (0, 1)."""
    if not 0.0 < value < 1.0:
        raise UserError(
            f"{where}: {value!r} is outside (0, 1); give a fraction such as 0.01 for 1%"
        )


def _prompt_text(value: str, where: str) -> None:
    """``check`` of a prompt: some text to continue."""
    if not value.strip():
        raise UserError(f"{where}: empty prompt; give some text to continue")


# --- every command -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LaunchConfig:
    """How the process runs: devices, processes, output. Every command takes these."""

    mesh: str | None = option(
        None,
        metavar="SPEC",
        group="run",
        help="device mesh, e.g. data=1,fsdp=4,tensor=2 or "
        "configs/mesh_fsdp.yaml (default: all devices on data)",
    )
    coordinator: str | None = option(
        None,
        metavar="HOST:PORT",
        group="run",
        help="address of process 0 for a multi-process run (else "
        "$JAXREGION_COORDINATOR; TPU pods and SLURM are "
        "detected)",
    )
    num_processes: int | None = option(
        None,
        gt=0,
        metavar="N",
        group="run",
        help="number of processes (else $JAXREGION_NUM_PROCESSES)",
    )
    process_id: int | None = option(
        None,
        ge=0,
        metavar="I",
        group="run",
        help="this process's rank, 0..N-1 (else $JAXREGION_PROCESS_ID)",
    )
    progress: bool = option(True, group="run", help="progress bars on stderr")
    debug: bool = option(False, group="run", help="show tracebacks on errors")
    force: bool = option(
        False,
        group="run",
        help="let an export replace the contents of a non-empty directory "
        "that jaxregion did not make",
    )


# --- model + corpora -----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ModelChoice:
    """The model a command loads and the dtype of its params and compute."""

    model: str = option(help="local HF checkpoint directory, a GGUF file, or a hub id org/name")
    dtype: str = option("float32", choices=COMPUTE_DTYPES, help="param and compute dtype")


@dataclass(frozen=True, kw_only=True)
class CorpusConfig(ModelChoice):
    """A model and token windows of one or more languages (the packing contract)."""

    text: Mapping[str, str] = _texts()
    seq_len: int = option(512, gt=0, help="window length in tokens")
    max_seqs: int | None = option(None, gt=0, metavar="N", help="keep the first N windows")
    batch_size: int = option(8, gt=0, help="windows per step, over all devices")


@dataclass(frozen=True, kw_only=True)
class RegionEdit:
    """The edit ``eval``, ``generate`` and ``tasks`` apply: a region file and what to do to
    it, and single-entry perturbations (one definition of the three flags)."""

    region: str | None = option(
        None, metavar="FILE", help="a region file (.safetensors) to intervene on"
    )
    region_op: str = option(
        "zero",
        check=_edit_value,
        help="what to do to the region: zero, scale:F, noise:S "
        "(relative std), set:V, or drop-expert (MoE: remove "
        "the region's whole experts from their routers; "
        "drop-expert:L.E,... names them)",
    )
    perturb: tuple[str, ...] = option(
        (),
        metavar="SPEC",
        check=_edit_value,
        help="edit single entries, e.g. "
        "'model.layers.1.mlp.down_proj.weight[:,2100]*4' "
        "(ops * = +); repeatable",
    )


@dataclass(frozen=True, kw_only=True)
class EvalConfig(RegionEdit, CorpusConfig):
    """``jaxregion eval``: perplexity per language, optionally with a region edited."""

    seed: int = option(0, help="seed for noise:S")
    json_out: str | None = option(
        None, flag="--json", metavar="FILE", help="write results JSON here"
    )


@dataclass(frozen=True, kw_only=True)
class ExpertsConfig(CorpusConfig):
    """``jaxregion experts``: which experts each language's tokens are routed to."""

    out: str = option(
        "experts_out",
        metavar="DIR",
        help="output folder: experts.json, experts.md, routing_LANG.png",
    )
    top: int = option(
        20, gt=0, metavar="N", help="rows of the most-language-specific-experts table"
    )


@dataclass(frozen=True, kw_only=True)
class ImportanceConfig(CorpusConfig):
    """``jaxregion importance``: one score file per language, resumable."""

    estimator: str = option(
        "taylor",
        choices=ESTIMATORS,
        help="taylor (θ⊙∇L, signed), taylor-abs, fisher, wanda (linear "
        "weights only, others 0), magnitude (|θ|, no data)",
    )
    save_every: int = option(
        1000, gt=0, metavar="W", help="checkpoint the accumulation every W windows"
    )
    remat: bool = option(
        True,
        help="backpropagate layer by layer, recomputing each layer's activations, so one "
        "layer's activations and gradients are alive at a time (off: faster, more memory)",
    )
    out: str = option(metavar="DIR", help="output directory of LANG.safetensors")
    snapshots: tuple[int, ...] = option(
        (),
        sep=",",
        gt=0,
        metavar="N1,N2",
        help="also write the scores of the first N1, N2, ... "
        "windows, from the same pass, to "
        "OUT/snapshots/N/LANG.safetensors",
    )
    until_stable: float | None = option(
        None,
        gt=0.0,
        le=1.0,
        metavar="J",
        help="double the windows (from one batch, up to "
        "--max-seqs) until the top-1% regions at n and 2n "
        "windows agree with Jaccard >= J, in (0, 1]",
    )
    include: str | None = option(
        DEFAULT_INCLUDE,
        metavar="REGEX",
        help="regex of HF names to score (default :layers: the "
        "transformer layers' parameters); only these are "
        "differentiated, the rest are stored as 0",
    )
    exclude: str | None = option(None, metavar="REGEX", help="regex of HF names not to score")

    def validate(self) -> None:
        check(self)
        if self.snapshots and self.until_stable is not None:
            raise UserError("--snapshots and --until-stable do not combine; use one")
        if self.snapshots and self.max_seqs is not None and max(self.snapshots) > self.max_seqs:
            raise UserError(
                f"--snapshots {max(self.snapshots)} is beyond --max-seqs "
                f"{self.max_seqs}; give counts up to {self.max_seqs}"
            )
        if (self.snapshots or self.until_stable is not None) and self.estimator in DATA_FREE:
            raise UserError(
                f"--snapshots/--until-stable count windows; {self.estimator} reads none"
            )


# --- regions -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """``jaxregion regions KIND``: a region from importance files (or shapes, for random)."""

    kind: str = option(choices=REGION_KINDS, flag=False, help="the region kind")
    importance: str | None = option(
        None,
        metavar="DIR",
        help="directory of LANG.safetensors importance files (all kinds but random need it)",
    )
    langs: tuple[str, ...] | None = option(
        None,
        sep=",",
        metavar="A,B",
        name="language",
        help="languages to use (default: every file in DIR)",
    )
    lang: str | None = option(
        None,
        name="language",
        help="the language of a monolingual, bottom-monolingual or top region",
    )
    ratio: float = option(0.01, gt=0.0, le=1.0, help="fraction of elements, in (0, 1]")
    scope: str = option("per-tensor", choices=SCOPES, help="where k is counted")
    granularity: str = option(
        "element",
        choices=GRANULARITIES,
        help="unit of selection: element, row / column (exactly ratio of "
        "each tensor's output / input features; --model gives the "
        "family's axes), tensor, layer, expert (whole routed experts "
        "of an MoE with their router rows; --scope per-layer or "
        "global)",
    )
    expert_rank: str = option(
        "importance",
        choices=EXPERT_RANKS,
        help="rank whole experts by summed |score| (importance) or by "
        "the languages' top-k routing share in --routing (routing)",
    )
    routing: str | None = option(
        None, metavar="FILE", help="experts.json of `jaxregion experts` (--expert-rank routing)"
    )
    include: str | None = option(
        DEFAULT_INCLUDE,
        metavar="REGEX",
        help="regex of HF names to select from (default :layers: the "
        "transformer layers' parameters, per the family table)",
    )
    exclude: str | None = option(None, metavar="REGEX", help="regex of HF names to leave out")
    seed: int = option(0, help="random seed (random only)")
    model: str | None = option(
        None, metavar="DIR", help="HF checkpoint whose shapes the region must match (headers only)"
    )
    out: str = option(metavar="FILE", help="region file to write (.safetensors)")

    def validate(self) -> None:
        check(self)
        if self.langs is not None:
            if not self.langs:
                raise UserError("--langs names no language")
            if len(set(self.langs)) != len(self.langs):
                raise UserError(f"--langs {','.join(self.langs)}: names a language twice")
        if self.kind in LANG_KINDS and self.lang is None:
            raise UserError(f"a {self.kind} region needs --lang")
        if self.kind not in LANG_KINDS and self.lang is not None:
            raise UserError(f"--lang is for {', '.join(LANG_KINDS)} regions, not {self.kind}")
        if self.granularity in ("row", "column") and self.scope != "per-tensor":
            raise UserError(
                f"--granularity {self.granularity} takes k {self.granularity}s in "
                "each tensor; use --scope per-tensor"
            )
        if self.expert_rank == "routing":
            if self.granularity != "expert" or self.routing is None or self.model is None:
                raise UserError(
                    "--expert-rank routing needs --granularity expert, --routing "
                    "FILE (experts.json) and --model DIR"
                )
        elif self.routing is not None:
            raise UserError("--routing is read only with --expert-rank routing")
        if self.kind != "random" and self.importance is None and self.expert_rank != "routing":
            raise UserError(f"a {self.kind} region needs --importance DIR")
        if self.importance is None and self.model is None:
            raise UserError("regions random needs --importance DIR or --model DIR for the shapes")


@dataclass(frozen=True, kw_only=True)
class StatsConfig:
    """``jaxregion regions stats``: describe a region file."""

    file: str = option(positional=True, help="region file (.safetensors)")
    json_out: str | None = option(
        None, flag="--json", metavar="FILE", help="write the full stats JSON here"
    )
    top: int = option(10, gt=0, help="rows/columns listed per table")
    model: str | None = option(
        None, metavar="DIR", help="HF checkpoint the region belongs to (headers only)"
    )


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """``jaxregion regions compare``: Jaccard, sizes and intersection of two regions."""

    a: str = option(positional=True, help="first region file")
    b: str = option(positional=True, help="second region file")
    json_out: str | None = option(
        None, flag="--json", metavar="FILE", help="write the comparison JSON here"
    )
    model: str | None = option(
        None, metavar="DIR", help="HF checkpoint: compare over the whole model"
    )


# --- training ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The optimizer, schedule and checkpoint cadence of one training run."""

    steps: int = option(gt=0, group="training", help="optimizer steps")
    batch_size: int = option(8, gt=0, group="training", help="windows per step")
    seq_len: int = option(128, gt=0, group="training", help="window length")
    lr: float = option(3e-4, gt=0.0, group="training", help="peak learning rate")
    warmup: int = option(0, ge=0, group="training", help="linear warmup steps")
    schedule: str = option("cosine", choices=SCHEDULES, group="training", help="decay after warmup")
    weight_decay: float = option(0.1, ge=0.0, group="training", help="AdamW decay")
    clip: float = option(1.0, ge=0.0, group="training", help="global-norm clip, 0 = none")
    grad_accum: int = option(1, gt=0, group="training", help="micro-batches per step")
    remat: bool = option(
        False,
        group="training",
        help="recompute each layer's activations in the backward pass (less "
        "memory, about a third more compute)",
    )
    dtype: str = option(
        "float32",
        choices=COMPUTE_DTYPES,
        group="training",
        help="compute dtype; master weights stay float32",
    )
    b1: float = option(0.9, ge=0.0, lt=1.0, group="training", help="Adam beta1")
    b2: float = option(0.95, ge=0.0, lt=1.0, group="training", help="Adam beta2")
    save_every: int = option(100, gt=0, group="checkpoints", help="checkpoint period")
    log_every: int = option(
        0,
        ge=0,
        group="checkpoints",
        help="also log the loss every N steps (0: at evaluations and "
        "checkpoints); the host reads the loss only then",
    )
    keep: int = option(3, gt=0, group="checkpoints", help="checkpoints kept")
    eval_every: int = option(0, ge=0, group="checkpoints", help="eval period in steps (0 = end)")
    eval_batch_size: int = option(8, gt=0, group="checkpoints", help="eval windows per step")
    seed: int = option(0, group="training", help="data order seed")
    freeze_norms: bool = option(
        False, group="training", help="also freeze the region's norm weights (default: norms train)"
    )
    min_lr_ratio: float = option(
        0.1, ge=0.0, le=1.0, group="training", help="cosine decays to lr * this"
    )
    replay_ratio: float = option(
        0.0,
        ge=0.0,
        lt=1.0,
        flag=False,
        help="share of every batch replayed from source-language "
        "windows (the forgetting sweep sets it)",
    )
    ewc_lambda: float = option(
        0.0,
        ge=0.0,
        flag=False,
        help="strength of the EWC penalty towards the base params (the forgetting sweep sets it)",
    )
    eval_at: tuple[int, ...] = option(
        (), gt=0, flag=False, help="extra steps to evaluate at (besides eval_every and the end)"
    )
    eval_start: bool = option(
        True, flag=False, help="evaluate at step 0 too (off when the caller has the base eval)"
    )

    def validate(self) -> None:
        check(self)
        if self.batch_size % self.grad_accum:
            raise UserError(
                f"--grad-accum {self.grad_accum}: must divide --batch-size {self.batch_size}"
            )

    def eval_now(self, step: int) -> bool:
        """Whether to evaluate after ``step`` optimizer steps."""
        return bool(
            (self.eval_every and step % self.eval_every == 0)
            or step in self.eval_at
            or step == self.steps
        )


@dataclass(frozen=True, kw_only=True)
class TrainRunConfig(TrainConfig):
    """A :class:`TrainConfig` plus its data, checkpoint directory and export."""

    text: Mapping[str, str] = _texts()
    eval: Mapping[str, str] = option(
        factory=dict,
        metavar="LANG=SOURCE",
        coerce=lang_specs,
        name="language",
        group="checkpoints",
        help="a language to evaluate during training; repeatable",
    )
    max_seqs: int | None = option(
        None,
        gt=0,
        metavar="N",
        group="training",
        help="keep the first N training windows per language",
    )
    eval_max_seqs: int | None = option(
        None, gt=0, metavar="N", group="checkpoints", help="eval windows per language"
    )
    ckpt_dir: str = option(
        metavar="DIR",
        group="checkpoints",
        help="checkpoints and metrics.jsonl; a rerun resumes from it",
    )
    restart: bool = option(
        False,
        group="checkpoints",
        help="the ckpt-dir holds a different run: move it to "
        "CKPT_DIR/previous/ and start afresh (default: resume, or "
        "refuse when the run differs)",
    )
    export: str | None = option(
        None, metavar="HF_DIR", group="checkpoints", help="write an HF dir at the end"
    )

    def validate(self) -> None:
        TrainConfig.validate(self)
        if not self.text:
            raise UserError("give at least one --text LANG=SOURCE to train on")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TrainRunConfig):
    """``jaxregion train``: continued pre-training, optionally with a frozen region."""

    model: str = option(metavar="DIR", help="HF checkpoint directory (or GGUF file) to start from")
    freeze: str | None = option(
        None, metavar="REGION.safetensors", help="region file whose elements stay frozen"
    )


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TrainRunConfig):
    """``jaxregion pretrain``: a small Llama from random init."""

    tokenizer: str = option(metavar="DIR", help="tokenizer directory (e.g. from train_bpe)")
    out: str = option(metavar="HF_DIR", help="where the model goes")
    hidden_size: int = option(256, gt=0, group="architecture", help="residual width")
    layers: int = option(4, gt=0, group="architecture", help="decoder layers")
    heads: int = option(4, gt=0, group="architecture", help="attention heads")
    kv_heads: int | None = option(
        None, gt=0, group="architecture", help="key/value heads (default: heads)"
    )
    intermediate_size: int | None = option(
        None, gt=0, group="architecture", help="MLP width (default 4 x hidden)"
    )
    max_positions: int = option(512, gt=0, group="architecture", help="longest sequence")
    init_seed: int = option(0, group="architecture", help="init seed")


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """``jaxregion export``: a training checkpoint as an HF directory."""

    ckpt_dir: str = option(metavar="DIR", help="a training directory")
    step: int | None = option(None, ge=0, help="default: the latest readable step")
    out: str = option(metavar="HF_DIR", help="where the HF directory goes")
    out_dtype: str | None = option(
        None, choices=EXPORT_DTYPES, help="dtype of the written weights (default: as trained)"
    )


@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    """``jaxregion convert``: a GGUF file as an ordinary HF directory."""

    gguf: str = option(positional=True, help="a GGUF file (llama.cpp's format)")
    out: str = option(metavar="NEW_DIR", help="the HF directory to write (must not exist)")
    dtype: str = option("float32", choices=COMPUTE_DTYPES, help="dtype of the written weights")


# --- generation and tasks ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class EditConfig(RegionEdit, ModelChoice):
    """A model and an optional edit of it (the same edits as ``eval``)."""

    seed: int = option(0, help="seed for noise:S (and generate's sampling)")
    batch_size: int = option(8, gt=0, help="prompts / requests per step")


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(EditConfig):
    """``jaxregion generate``: continuations of prompts, base and edited side by side."""

    prompt: tuple[str, ...] = option((), metavar="TEXT", help="a prompt; repeatable")
    prompts: str | None = option(
        None,
        metavar="FILE.jsonl",
        help='prompts, one JSON object a line with a "prompt" field (or a string)',
    )
    max_new_tokens: int = option(32, gt=0, help="tokens to add")
    temperature: float = option(0.0, ge=0.0, help="0 = greedy")
    top_p: float = option(1.0, gt=0.0, le=1.0, help="nucleus sampling mass, in (0, 1]")
    json_out: str | None = option(None, flag="--json", metavar="FILE", help="write the rows here")

    def validate(self) -> None:
        check(self)
        if not self.prompt and self.prompts is None:
            raise UserError("no prompts given; pass --prompt TEXT or --prompts FILE.jsonl")


@dataclass(frozen=True, kw_only=True)
class TasksConfig(EditConfig):
    """``jaxregion tasks``: lm-evaluation-harness tasks on a (possibly edited) model."""

    tasks: tuple[str, ...] = option(sep=",", metavar="A,B", help="lm-eval task names")
    include_path: str | None = option(None, metavar="DIR", help="a folder of extra task YAMLs")
    limit: int | None = option(None, gt=0, metavar="N", help="first N documents of each task")
    num_fewshot: int | None = option(None, ge=0, metavar="K", help="few-shot examples")
    json_out: str | None = option(
        None,
        flag="--json",
        metavar="FILE",
        help="write lm-eval's results JSON here (and the table beside it as .md)",
    )

    def validate(self) -> None:
        check(self)
        if not self.tasks:
            raise UserError("--tasks names no task")


# --- analysis --------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DimsConfig:
    """The dimension sweep: the battery's ``dims:`` section and the ``jaxregion dims`` flags."""

    layer: int = option(1, ge=0, help="layer whose entries are scaled")
    dims: tuple[int, ...] = option(
        (),
        sep=",",
        ge=0,
        metavar="D,D",
        help="candidate dims, e.g. 2100 (default: auto-picked from "
        "the region or the largest activations)",
    )
    controls: tuple[int, ...] = option(
        (),
        sep=",",
        ge=0,
        flag="--control-dims",
        metavar="D,D",
        help="control dims, e.g. 4200 (default: seeded random)",
    )
    targets: tuple[str, ...] = option(
        DEFAULT_DIMS_TARGETS,
        sep=",",
        metavar="ROLE,ROLE",
        help="comma-separated roles, e.g. input_norm,"
        "post_attention_layernorm,o_proj,down_proj,q_proj",
    )
    factors: tuple[float, ...] = option(
        (4.0, 0.0), sep=",", metavar="F,F", check=_float32, help="comma-separated scale factors"
    )
    auto_candidates: int = option(
        3, ge=0, flag="--candidates", metavar="N", help="candidate dims to auto-pick"
    )
    auto_controls: int = option(
        3, ge=0, flag="--controls", metavar="N", help="random control dims to draw"
    )
    auto_source: str = option(
        "both",
        choices=("both", "region", "activations"),
        flag="--candidates-from",
        help="where auto-picked candidates come from: the region's "
        "most-selected dims, the largest activations, or both",
    )
    seed: int = option(0, help="seed of the control dims")
    activation_windows: int = option(8, gt=0, help="windows read for massive activations")

    def validate(self) -> None:
        check(self)
        if not self.factors:
            raise UserError("dims factors: empty; give factors such as 4,0")
        if not self.targets:
            raise UserError("dims targets: empty; give roles such as input_norm")


@dataclass(frozen=True, kw_only=True)
class DimsRunConfig(CorpusConfig, DimsConfig):
    """``jaxregion dims``: the hidden dimensions a region and the model single out."""

    seq_len: int = option(128, gt=0, help="window length in tokens")
    region: str | None = option(
        None,
        metavar="FILE",
        help="region file; its most-selected dims are candidates "
        "(default: dims of the largest activations)",
    )
    json_out: str | None = option(
        None, flag="--json", metavar="FILE", help="write results JSON here"
    )

    def dims_config(self) -> DimsConfig:
        """The plain :class:`DimsConfig` part."""
        return replace_fields(self, DimsConfig)

    def validate(self) -> None:
        DimsConfig.validate(self)


@dataclass(frozen=True, kw_only=True)
class PlanConfig:
    """``jaxregion plan``: memory per device (only config.json is read)."""

    model: str | None = option(
        None, metavar="DIR", help="HF checkpoint directory (only config.json is read)"
    )
    preset: str | None = option(
        None,
        help="llama2-7b, llama2-13b, llama2-70b, llama3-8b, mistral-7b, olmoe-1b-7b, mixtral-8x7b",
    )
    mesh: str = option(
        "data=1,fsdp=-1,tensor=1",
        metavar="SPEC",
        help="the mesh to plan for (all sizes explicit, no -1, unless --devices is given)",
    )
    devices: int | None = option(None, gt=0, help="device count to resolve a -1 in --mesh")
    task: str = option("importance", choices=PLAN_TASKS, help="what the memory is for")
    seq_len: int = option(2048, gt=0, help="window length")
    batch_size: int | None = option(
        None, gt=0, help="global windows per step (default: one per batch shard)"
    )
    dtype: str = option(
        "bfloat16",
        choices=COMPUTE_DTYPES,
        help="param/compute dtype (train keeps float32 masters regardless)",
    )
    freeze: bool = option(False, help="train: count a bool freeze mask")
    json_out: str | None = option(
        None, flag="--json", metavar="FILE", help="also write the plan as JSON"
    )

    def validate(self) -> None:
        check(self)
        if (self.model is None) == (self.preset is None):
            raise UserError("give exactly one of --model DIR or --preset NAME")


# --- the paper's battery -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class JaccardConfig:
    """Agreement tables of :class:`ExperimentConfig` (YAML ``jaccard:``)."""

    sample_counts: tuple[int, ...] = option(
        (), gt=0, help="windows per language, e.g. [1000, 10000]"
    )
    estimators: tuple[str, ...] = option(
        (), choices=ESTIMATORS, help="e.g. [taylor, fisher, wanda]"
    )


@dataclass(frozen=True, kw_only=True)
class MaskMapConfig:
    """Region maps of whole matrices (YAML ``mask_maps:``)."""

    matrices: tuple[str, ...] = option(
        (), help="HF names of matrices, e.g. model.layers.1.mlp.up_proj.weight"
    )
    blocks: int = option(64, gt=0, help="at most this many blocks along each axis of a map")


@dataclass(frozen=True, kw_only=True)
class CaseStudyConfig:
    """Case studies of :class:`ExperimentConfig` (YAML ``case_studies:``): prompts per
    language, continued greedily under the base model and every edit of the battery; the
    continuations' language fidelity is measured per edit."""

    prompts: Mapping[str, tuple[str, ...]] = option(
        factory=dict,
        name="language",
        check=_prompt_text,
        help="prompts per language, keyed by ISO 639-1 code (en, zh, ...) or synthetic "
        "language, e.g. {en: [Fudan University is located in]} (none: no case studies)",
    )
    max_new_tokens: int = option(32, gt=0, help="tokens generated after each prompt")
    width: int = option(60, gt=0, help="characters of a continuation shown in the report")
    batch_size: int = option(8, gt=0, help="prompts per generation batch")
    dims: bool = option(True, help="also continue under every dims-sweep point")

    def validate(self) -> None:
        check(self)
        for lang, prompts in self.prompts.items():
            if not prompts:
                raise UserError(
                    f"prompts.{lang}: no prompts; give at least one or drop the language"
                )


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """``jaxregion experiment``: importance, regions, ablations, dims, agreement -> report."""

    model: str = option(metavar="DIR", help="HF checkpoint directory or GGUF file")
    languages: Mapping[str, str] = _texts("an importance language and its corpus; repeatable")
    eval_languages: Mapping[str, str] = option(
        factory=dict,
        metavar="LANG=SOURCE",
        coerce=lang_specs,
        name="language",
        help="evaluation corpora (default: languages)",
    )
    out: str = option("experiment_out", metavar="DIR", help="output folder")
    name: str = option("experiment", help="title of the report")
    seq_len: int = option(512, gt=0, help="window length in tokens")
    max_seqs: int = option(1000, gt=0, help="importance windows per language")
    eval_max_seqs: int | None = option(None, gt=0, help="eval windows per language")
    batch_size: int = option(8, gt=0, help="windows per step, over all devices")
    dtype: str = option("float32", choices=COMPUTE_DTYPES, help="param and compute dtype")
    estimator: str = option("taylor", choices=ESTIMATORS, help="importance estimator")
    ratio: float = option(0.01, check=_fraction, help="region size as a fraction, in (0, 1)")
    ratios: tuple[float, ...] = option(
        (), sep=",", check=_fraction, metavar="R,R", help="ratio sweep, e.g. 0.005,0.01,0.03,0.05"
    )
    scope: str = option("per-tensor", choices=SCOPES, help="where k is counted")
    include: str | None = option(
        DEFAULT_INCLUDE, metavar="REGEX", help="regex of HF names to select from"
    )
    exclude: str | None = option(None, metavar="REGEX", help="regex of HF names to leave out")
    random_seeds: tuple[int, ...] = option(
        (0, 1, 2), sep=",", metavar="S,S", help="seeds of the random control regions"
    )
    monolingual: tuple[str, ...] | None = option(
        None,
        sep=",",
        metavar="A,B",
        name="language",
        help="monolingual regions for these languages (default: every importance language)",
    )
    dims: DimsConfig = option(factory=DimsConfig, help="the dimension sweep (YAML only)")
    jaccard: JaccardConfig = option(factory=JaccardConfig, help="agreement tables (YAML only)")
    mask_maps: MaskMapConfig = option(factory=MaskMapConfig, help="region maps (YAML only)")
    case_studies: CaseStudyConfig = option(
        factory=CaseStudyConfig, help="prompts continued under each edit (YAML only)"
    )

    def validate(self) -> None:
        check(self)
        if len(self.languages) < 2:
            raise UserError("languages: need at least 2 (regions compare languages)")
        if len(set(self.random_seeds)) != len(self.random_seeds) or not self.random_seeds:
            raise UserError("random_seeds must be distinct, e.g. [0, 1, 2]")
        for i, lang in enumerate(self.monolingual or ()):
            if lang not in self.languages:
                raise UserError(f"monolingual[{i}]: language {lang!r} is not in languages")


# --- the forgetting experiment -------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TrainSpec(TrainConfig):
    """A :class:`TrainConfig` with this experiment's defaults, its data limits, and the
    evaluation points in samples (windows seen), as the paper reports them."""

    steps: int = option(100, gt=0, help="optimizer steps")
    seq_len: int = option(64, gt=0, help="window length")
    lr: float = option(1e-3, gt=0.0, help="peak learning rate")
    warmup: int = option(10, ge=0, help="linear warmup steps")
    eval_every: int = option(0, ge=0, help="eval period in steps (0 = end)")
    save_every: int = option(1000, gt=0, help="checkpoint period")
    keep: int = option(1, gt=0, help="checkpoints kept")
    eval_max_seqs: int | None = option(32, gt=0, help="eval windows per language")
    train_max_seqs: int | None = option(None, gt=0, help="training windows")
    eval_samples: tuple[int, ...] = option(
        (), gt=0, help="evaluate after these many training windows"
    )

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The plain :class:`TrainConfig` of one run: checkpoints at least at the end,
        ``eval_samples`` turned into ``eval_at`` steps."""
        steps = overrides.get("steps", self.steps)
        at = {math.ceil(s / self.batch_size) for s in self.eval_samples}
        changes = {
            "save_every": min(self.save_every, steps),
            "eval_at": tuple(sorted({*self.eval_at, *(a for a in at if a <= steps)})),
            **overrides,
        }
        return replace_fields(self, TrainConfig, **changes)


@dataclass(frozen=True, kw_only=True)
class ImportanceSpec:
    """Where importance scores come from: ``texts`` per language, scored once per estimator
    and cached. ``langs``: the languages whose summed scores define the core / bottom /
    wanda / fisher regions and the EWC Fisher (default: the protected ``sources``)."""

    texts: Mapping[str, str] = option(
        factory=dict, coerce=lang_specs, name="language", help="languages to score"
    )
    langs: tuple[str, ...] = option(
        (), name="language", help="languages summed (default: the sources)"
    )
    max_seqs: int | None = option(64, gt=0, help="windows per language")
    batch_size: int = option(8, gt=0, help="windows per step")
    dir: str | None = option(
        None, help="cache of EST/LANG.safetensors (default OUT/importance); shareable"
    )


@dataclass(frozen=True, kw_only=True)
class PretrainSpec:
    """A small Llama trained from scratch when the config has no ``model``."""

    texts: Mapping[str, str] = option(
        factory=dict, coerce=lang_specs, name="language", help="training corpora"
    )
    tokenizer: str | None = option(None, help="a directory; None = train a BPE on texts")
    vocab_size: int = option(512, gt=0, help="BPE vocabulary size")
    tokenizer_docs: int = option(2000, gt=0, help="documents per language for the BPE")
    hidden_size: int = option(64, gt=0, help="residual width")
    num_layers: int = option(2, gt=0, help="decoder layers")
    num_heads: int = option(4, gt=0, help="attention heads")
    num_kv_heads: int | None = option(None, gt=0, help="key/value heads")
    intermediate_size: int | None = option(None, gt=0, help="MLP width")
    max_positions: int = option(256, gt=0, help="longest sequence")
    init_seed: int = option(0, help="init seed")
    train: TrainSpec = option(factory=TrainSpec, help="pretraining hyper-parameters")


@dataclass(frozen=True, kw_only=True)
class BaselineSpec:
    """Settings of the non-freezing baselines (each composes with any freeze)."""

    replay_ratio: float = option(
        0.25, gt=0.0, lt=1.0, help="share of every batch replayed from the sources"
    )
    replay_texts: Mapping[str, str] = option(
        factory=dict,
        coerce=lang_specs,
        name="language",
        help="replay corpora (default: importance texts)",
    )
    replay_max_seqs: int | None = option(None, gt=0, help="replay windows per language")
    ewc_lambda: float = option(1.0, gt=0.0, help="EWC strength (Fisher normalised to mean 1)")


@dataclass(frozen=True, kw_only=True)
class Grid:
    """One cross product of the sweep."""

    scorers: tuple[str, ...] = option(
        ("core",),
        help="core, wanda, fisher, magnitude, random, bottom, none, top:LANG, monolingual:LANG",
    )
    ratios: tuple[float, ...] = option((0.01,), gt=0.0, le=1.0, help="region sizes, in (0, 1]")
    granularities: tuple[str, ...] = option(
        ("element",), choices=GRANULARITIES, help="units of selection"
    )
    baselines: tuple[str, ...] = option(
        ("none",), choices=FORGETTING_BASELINES, help="none, replay, ewc"
    )
    seeds: tuple[int, ...] = option((0,), help="training seeds")


@dataclass(frozen=True, kw_only=True)
class Setting:
    """An explicit freeze: a region file or whole layers (e.g. regions made elsewhere)."""

    name: str = option(name="setting", help="the setting's name in the report")
    region: str | None = option(None, help="a region file to freeze")
    layers: tuple[int, ...] | None = option(None, ge=0, help="whole layers to freeze")
    baselines: tuple[str, ...] = option(
        ("none",), choices=FORGETTING_BASELINES, help="none, replay, ewc"
    )
    seeds: tuple[int, ...] = option((0,), help="training seeds")


def _settings_list(value: Any) -> Any:
    """``settings: {name: {...}}`` is accepted as well as a list of ``{name: ..., ...}``."""
    if isinstance(value, Mapping):
        return [{"name": k, **(v or {})} for k, v in value.items()]
    return value


def _grids(value: Any) -> Any:
    """``sweep:`` may be a single grid (a mapping) or a list of them."""
    return [value] if isinstance(value, Mapping) else value


@dataclass(frozen=True, kw_only=True)
class ForgettingConfig:
    """``jaxregion forgetting``: continued pre-training on a target language under a sweep of
    freeze settings (scorer x ratio x granularity x baseline x seed)."""

    target: str = option(name="language", help="the language trained on")
    target_train: str = option(metavar="SOURCE", help="the target's training text")
    evals: Mapping[str, str] = _texts("a language to evaluate (the target included); repeatable")
    sources: tuple[str, ...] = option(
        (),
        sep=",",
        metavar="A,B",
        name="language",
        help="languages to protect (default: evals minus the target)",
    )
    sweep: tuple[Grid, ...] = option(
        (Grid(scorers=("core", "random")),), coerce=_grids, help="the grids (YAML only)"
    )
    settings: tuple[Setting, ...] = option(
        (), coerce=_settings_list, help="explicit freeze settings (YAML only)"
    )
    baselines: BaselineSpec = option(factory=BaselineSpec, help="baselines (YAML only)")
    train: TrainSpec = option(factory=TrainSpec, help="training hyper-parameters (YAML only)")
    model: str | None = option(None, metavar="DIR", help="the base model (or a pretrain section)")
    pretrain: PretrainSpec | None = option(None, help="train a base model first (YAML only)")
    importance: ImportanceSpec | None = option(None, help="how regions are scored (YAML only)")
    scope: str = option("per-tensor", choices=SCOPES, help="where k is counted")
    include: str = option(DEFAULT_INCLUDE, metavar="REGEX", help="regex of HF names to select from")
    freeze_norms: bool = option(False, help="also freeze the regions' norm weights")
    x_axis: str = option(
        "target_gain", choices=FORGETTING_X_AXES, help="x axis of the frontier plot"
    )
    out_dir: str = option("runs/forgetting", flag="--out", metavar="DIR", help="output folder")
    name: str = option("forgetting", help="title of the report")

    def source_langs(self) -> list[str]:
        return list(self.sources) or [lang for lang in self.evals if lang != self.target]

    def score_langs(self) -> list[str]:
        """Languages whose importance defines the protected set (see ImportanceSpec)."""
        imp = self.importance
        return list(imp.langs) if imp is not None and imp.langs else self.source_langs()


# --- the demo ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """``jaxregion demo``: the whole pipeline offline; stages are cached in ``out``."""

    out: str = option("demo_out", metavar="DIR", help="output folder")
    corpus: str = option(
        "synthetic", help="'synthetic' or a directory of LANG.train.txt / LANG.valid.txt"
    )
    model: str | None = option(
        None,
        metavar="FILE.gguf|DIR",
        help="a pretrained model (GGUF file, HF directory or hub id): "
        "the tokenizer and pretraining stages are skipped and "
        "every other stage runs on it; needs real text (--corpus "
        "DIR or --text)",
    )
    text: Mapping[str, str] = _texts(
        "instead of --corpus DIR: a language and its text (importance, training); repeatable",
        factory=dict,
    )
    valid_text: Mapping[str, str] = _texts(
        "held-out text of a --text language, for "
        "evaluation (default: its --text, and the report "
        "says so); repeatable",
        factory=dict,
    )
    quick: bool = option(
        False,
        help="a much smaller run (for smoke tests): every size left at "
        "its default takes its quick value",
    )
    langs: tuple[str, ...] = option(
        ("lat", "rom", "cyr", "grk", "arb", "cjk"),
        sep=",",
        metavar="A,B",
        help="importance languages",
    )
    target: str = option("hng", help="the new language of the forgetting run")
    train_docs: int = option(6000, gt=0, help="training documents per language")
    valid_docs: int = option(400, gt=0, help="validation documents per language")
    seed: int = option(0, help="corpus and training seed")
    vocab_size: int = option(1024, gt=0, help="BPE vocabulary size")
    hidden_size: int = option(128, gt=0, help="residual width")
    num_layers: int = option(4, gt=0, help="decoder layers")
    num_heads: int = option(4, gt=0, help="attention heads")
    intermediate_size: int = option(384, gt=0, help="MLP width")
    seq_len: int = option(64, gt=0, help="window length")
    pretrain_steps: int = option(400, gt=0, help="pretraining steps")
    pretrain_batch: int = option(32, gt=0, help="pretraining windows per step")
    pretrain_lr: float = option(3e-3, gt=0.0, help="pretraining learning rate")
    importance_windows: int = option(64, gt=0, help="importance windows per language")
    eval_windows: int = option(24, gt=0, help="eval windows per language")
    forgetting_steps: int = option(60, gt=0, help="continued pre-training steps")
    forgetting_lr: float = option(1e-4, gt=0.0, help="continued pre-training learning rate")
    forgetting_ratios: tuple[float, ...] = option(
        (0.01, 0.1, 0.5),
        sep=",",
        gt=0.0,
        le=1.0,
        metavar="R,R",
        help="freeze ratios of the frontier",
    )
    forgetting_granularities: tuple[str, ...] = option(
        ("element", "column"),
        sep=",",
        choices=GRANULARITIES,
        metavar="G,G",
        help="granularities of the frontier",
    )
    forgetting_replay: float = option(
        0.25, gt=0.0, lt=1.0, help="replay baseline: share of each batch replayed"
    )
    forgetting_ewc_lambda: float = option(1.0, gt=0.0, help="EWC baseline strength")
    forgetting_seeds: tuple[int, ...] = option(
        (0,), sep=",", metavar="S,S", help="training seeds of the frontier"
    )
    case_study_tokens: int = option(
        12, ge=0, help="tokens continued after each case-study prompt (one per language; 0: none)"
    )
    mc_questions: int = option(
        16,
        ge=0,
        help="multiple-choice questions per language, run "
        "through lm-eval (0: no task; the synthetic "
        "corpus only)",
    )

    def validate(self) -> None:
        check(self)
        if self.text and self.corpus != "synthetic":
            raise UserError("give --corpus DIR or --text LANG=SOURCE, not both")
        for lang in self.valid_text:
            if lang not in self.text:
                raise UserError(f"--valid-text {lang}: no --text {lang}=SOURCE to hold out from")
        if self.model and self.corpus == "synthetic" and not self.text:
            raise UserError(
                "--model needs real text: --corpus DIR (LANG.train.txt and "
                "LANG.valid.txt) or --text LANG=SOURCE for at least 3 languages"
            )


# Sizes of ``demo --quick`` (applied to fields left at their defaults).
DEMO_QUICK = {
    "train_docs": 800,
    "valid_docs": 100,
    "vocab_size": 384,
    "hidden_size": 64,
    "num_layers": 2,
    "intermediate_size": 128,
    "pretrain_steps": 30,
    "pretrain_batch": 8,
    "importance_windows": 16,
    "eval_windows": 8,
    "forgetting_steps": 6,
    "seq_len": 32,
    "forgetting_ratios": (0.1,),
    "case_study_tokens": 6,
    "mc_questions": 4,
}
