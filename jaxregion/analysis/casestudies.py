"""Case studies: what the model writes after each prompt, under each edit, side by side.

Why: the paper's strongest evidence is text: after one parameter is scaled, "Fudan University
is located in" continues as "Tertian, ancis located tet tet...", and a model that loses a
monolingual region stops writing that language. The battery lists prompts per language; this
module generates a continuation of every prompt under every setting (base, core removed,
random removed, each monolingual region removed, each dims-sweep point: the caller supplies
the params of each), measures language fidelity per setting and language, and renders the
continuations as Markdown, truncated and escaped. Compute (:func:`run`) then render
(:func:`render`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

from jaxregion.analysis import fidelity
from jaxregion.configs import CaseStudyConfig
from jaxregion.data import synthetic
from jaxregion.errors import UserError
from jaxregion.generate import GREEDY, Sampling, completions, encode_prompts
from jaxregion.generate import check_prompts as check_lengths
from jaxregion.models import ModelConfig
from jaxregion.report.tables import cell_text, markdown_table


class Edits(Mapping):
    """``{setting: params}`` whose params are made on access (``{setting: make}``), so a
    battery of many edits holds one edited copy of a large model at a time."""

    def __init__(self, makers: Mapping[str, Callable[[], dict]]):
        self._makers = dict(makers)

    def __getitem__(self, name: str) -> dict:
        return self._makers[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


@dataclass(frozen=True)
class CaseStudies:
    """``continuations[setting][lang][i]`` follows ``prompts[lang][i]``;
    ``fidelity[setting][lang]`` is the share identified as ``lang``."""

    prompts: dict[str, list[str]]
    settings: list[str]
    continuations: dict[str, dict[str, list[str]]]
    fidelity: dict[str, dict[str, float]]
    max_new_tokens: int

    def to_json(self) -> dict:
        return asdict(self)


def check_prompts(prompts: Mapping[str, Sequence[str]]) -> None:
    """Every language named in a way fidelity understands, with at least one prompt."""
    for lang, ps in prompts.items():
        fidelity.check_language(lang)
        if not ps:
            raise UserError(f"case studies: language {lang!r} has no prompts")


def check_fits(cfg: ModelConfig, tokenizer, config: CaseStudyConfig, where: str) -> None:
    """Every prompt plus its new tokens fits the model's context: checked when the tokenizer
    is loaded, before hours of battery, not when the case studies finally run."""
    for lang, ps in config.prompts.items():
        names = [f"{where}: case_studies.prompts.{lang}[{i}]" for i in range(len(ps))]
        check_lengths(
            encode_prompts(ps, tokenizer, names),
            config.max_new_tokens,
            cfg,
            names,
            key="case_studies.max_new_tokens",
        )


def run(
    cfg: ModelConfig,
    tokenizer,
    settings: Mapping[str, dict],
    prompts: Mapping[str, Sequence[str]],
    max_new_tokens: int = 32,
    sampling: Sampling = GREEDY,
    batch_size: int = 8,
) -> CaseStudies:
    """Continue every prompt under every setting (``{name: params}``), greedy by default."""
    check_prompts(prompts)
    langs = list(prompts)
    flat = [(lang, p) for lang in langs for p in prompts[lang]]
    names = [
        f"case study {lang} prompt {i + 1}" for lang in langs for i in range(len(prompts[lang]))
    ]
    conts: dict[str, dict[str, list[str]]] = {}
    fid: dict[str, dict[str, float]] = {}
    for name, params in settings.items():
        rows = completions(
            params,
            cfg,
            tokenizer,
            [p for _, p in flat],
            max_new_tokens,
            sampling,
            batch_size,
            names,
        )
        per = {lang: [] for lang in langs}
        for (lang, _), row in zip(flat, rows):
            per[lang].append(row["completion"])
        conts[name] = per
        fid[name] = {lang: fidelity.fidelity(per[lang], lang) for lang in langs}
    return CaseStudies(
        {k: list(v) for k, v in prompts.items()}, list(settings), conts, fid, max_new_tokens
    )


def run_config(
    cfg: ModelConfig, tokenizer, settings: Mapping[str, dict], config: CaseStudyConfig
) -> CaseStudies:
    """:func:`run` with a battery config section."""
    return run(
        cfg,
        tokenizer,
        settings,
        config.prompts,
        config.max_new_tokens,
        batch_size=config.batch_size,
    )


def render(cs: CaseStudies, width: int = 60) -> str:
    """Markdown: a fidelity table (settings x languages), then per language and prompt the
    continuation under each setting."""
    return "\n".join(
        [
            "### Language fidelity (share of continuations in the prompt's language)",
            "",
            render_fidelity(cs),
            "",
            render_continuations(cs, width),
        ]
    )


def render_fidelity(cs: CaseStudies) -> str:
    """The fidelity table (settings x languages) and how each language was identified."""
    langs = list(cs.prompts)
    parts = [
        markdown_table(
            ["setting", *langs],
            [[s, *(cs.fidelity[s][lang] for lang in langs)] for s in cs.settings],
        )
    ]
    synthetic_note = [lang for lang in langs if lang in synthetic.LANGUAGES]
    if synthetic_note:
        parts += [
            "",
            f"Synthetic languages ({', '.join(synthetic_note)}) are identified from "
            "their ground-truth lexicon and alphabet; real ones by py3langid.",
        ]
    return "\n".join(parts)


def render_continuations(cs: CaseStudies, width: int = 60) -> str:
    """Per language and prompt, the continuation under each setting, truncated and escaped."""
    parts: list[str] = []
    for lang in cs.prompts:
        for i, prompt in enumerate(cs.prompts[lang]):
            parts += [
                f"### {lang} · “{cell_text(prompt, width)}”",
                "",
                markdown_table(
                    ["setting", "continuation"],
                    [[s, cell_text(cs.continuations[s][lang][i], width)] for s in cs.settings],
                ),
                "",
            ]
    return "\n".join(parts)
