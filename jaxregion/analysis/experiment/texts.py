"""The battery's case studies: what the model writes under each edit the battery made.

Why: perplexity ratios say a region matters; text shows how. The settings are the paper's:
the base model, core removed, random removed, each monolingual region removed, and each
dims-sweep point (one entry scaled), plus the bottom and bottom-monolingual controls. Each
edited params tree is made when its continuations are generated and dropped after
(:class:`jaxregion.analysis.casestudies.Edits`), so a 13B battery holds one edited copy at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from jaxregion import interventions
from jaxregion import regions as R
from jaxregion.analysis import casestudies, dims
from jaxregion.analysis.dims import SweepPoint
from jaxregion.configs import CaseStudyConfig


def point_name(p: SweepPoint) -> str:
    """A dims-sweep point as a setting: its group, the HF entry and the factor."""
    return f"{p.group} `{p.entry}` x{p.factor:g}"


def settings(
    params: dict,
    regs: Mapping[str, R.Region],
    random_seed: int,
    mono_langs: Sequence[str],
    sweep: Sequence[SweepPoint],
    with_dims: bool = True,
) -> casestudies.Edits:
    """``{setting: params}`` made on access: base, core / bottom / random (the first seed)
    removed, each language's monolingual and bottom-monolingual region removed, then every
    dims-sweep point."""

    def zero(name: str) -> Callable[[], dict]:
        return lambda: interventions.zero(params, regs[name])

    def point(p: SweepPoint) -> Callable[[], dict]:
        return lambda: dims.scaled(params, p.entry, p.factor)

    makers: dict[str, Callable[[], dict]] = {
        "base": lambda: params,
        "core removed": zero("core"),
        "bottom removed": zero("bottom"),
        "random removed": zero(f"random-{random_seed}"),
    }
    for lang in mono_langs:
        makers[f"mono-{lang} removed"] = zero(f"mono-{lang}")
    for lang in mono_langs:
        makers[f"bmono-{lang} removed"] = zero(f"bmono-{lang}")
    if with_dims:
        for p in sweep:
            makers[point_name(p)] = point(p)
    return casestudies.Edits(makers)


def run(
    params: dict,
    model_cfg,
    tokenizer,
    config: CaseStudyConfig,
    regs: Mapping[str, R.Region],
    random_seed: int,
    mono_langs: Sequence[str],
    sweep: Sequence[SweepPoint],
) -> casestudies.CaseStudies | None:
    """The case studies of ``config`` (None when it lists no prompts)."""
    if not config.prompts:
        return None
    edits = settings(params, regs, random_seed, mono_langs, sweep, config.dims)
    return casestudies.run_config(model_cfg, tokenizer, edits, config)
