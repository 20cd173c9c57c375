"""What the battery computes, as one dataclass: written to ``results.json`` (strict JSON) and
read back by :mod:`jaxregion.report.battery`, which renders it without recomputing anything."""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from jaxregion.analysis.casestudies import CaseStudies
from jaxregion.analysis.dims import DimsResult
from jaxregion.analysis.experiment.moe import MoEResult
from jaxregion.io import atomic
from jaxregion.strict_loader import from_dict

#: The Outcome sentences' thresholds; the report states them.
#: Core separates when its perplexity ratio minus 1 exceeds this many times the worst
#: control's ratio minus 1 ...
CORE_OVER_CONTROL = 3.0
#: ... and the core's ratio is at least this (so 1.001 vs 1.0001 is not a separation).
CORE_MIN_RATIO = 1.05
#: A dimension "breaks the model" when its worst scaling multiplies perplexity by this ...
DIM_BREAK_RATIO = 2.0
#: ... while no control scaling multiplies it by more than this.
DIM_CONTROL_MAX_RATIO = 1.2

THRESHOLDS = {
    "CORE_OVER_CONTROL": CORE_OVER_CONTROL,
    "CORE_MIN_RATIO": CORE_MIN_RATIO,
    "DIM_BREAK_RATIO": DIM_BREAK_RATIO,
    "DIM_CONTROL_MAX_RATIO": DIM_CONTROL_MAX_RATIO,
}


#: The packages whose versions a battery's results record (those that change its numbers).
VERSIONED = (
    "jaxregion",
    "jax",
    "jaxlib",
    "flax",
    "numpy",
    "optax",
    "tokenizers",
    "transformers",
    "gguf",
    "py3langid",
    "lm_eval",
)


def versions() -> dict[str, str]:
    """Python's and each of :data:`VERSIONED`'s installed version (absent ones left out)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class Setting:
    """Which model and data: the strings the user gave, never a resolved machine path."""

    model: str
    model_type: str
    num_layers: int
    hidden_size: int
    estimator: str
    seq_len: int
    importance: dict[str, str]  # lang -> source spec as given
    importance_windows: dict[str, int]
    evaluation: dict[str, str]
    eval_windows: dict[str, int]
    ratio: float
    scope: str
    include: str | None


@dataclass
class RegionInfo:
    kind: str
    size: int
    density: float
    stability: float | None = None  # split-half stability, when the importance files have it


@dataclass
class Overlap:
    languages: list[str]  # ordered by family and script
    labels: list[str]  # "code (family, script)"
    matrix: list[list[float]]  # Jaccard of per-language top-k regions, in `languages` order
    vs_core: dict[str, float]


@dataclass
class RatioRow:
    ratio: float
    condition: str  # core | bottom | random (mean over seeds)
    size: int
    perplexity: dict[str, float]
    ppl_ratio: dict[str, float]  # perplexity / base, per evaluation language
    mean_ratio: float  # geometric mean over the importance languages


@dataclass
class MaskMap:
    matrix: str  # HF name
    region: str  # core | mono-LANG
    shape: list[int]
    block: list[int]  # rows, columns per block
    density: list[list[float]]  # fraction selected per block


@dataclass
class Results:
    name: str
    jaxregion_version: str
    config: dict[str, Any]
    setting: Setting
    thresholds: dict[str, float]
    regions: dict[str, RegionInfo]
    perplexity: dict[str, dict[str, float]]  # condition -> lang -> perplexity; "base" included
    # condition -> lang -> bits per byte (None: the tokenizer gives no byte lengths)
    bits_per_byte: dict[str, dict[str, float | None]]
    random: dict[str, Any]  # seeds, mean, std (perplexity), bpb_mean, bpb_std
    monolingual_matrix: dict[str, dict[str, float]]
    bottom_monolingual_matrix: dict[str, dict[str, float]]
    overlap: Overlap
    ratio_sweep: list[RatioRow]
    layer_module_density: dict[str, Any]  # layers, modules, density, scope
    profiles: dict[str, list[int]]  # region -> entries per residual dim
    importance_hist: dict[str, Any]  # edges (log10 |score|), counts per language
    mask_maps: list[MaskMap]
    dims: DimsResult
    jaccard: dict[str, Any]
    case_studies: CaseStudies | None = None  # None: the config lists no prompts
    moe: MoEResult | None = None  # mixtures of experts only
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # wall seconds per stage, in run order (the stage names the battery logs)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # how it was run: the command line (None: called as a library) and package versions
    command: list[str] | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        atomic.write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str) -> Results:
        with open(path, encoding="utf-8") as f:
            return from_dict(cls, json.load(f), path)
