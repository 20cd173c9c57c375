"""A deterministic synthetic multilingual corpus with a known ground truth.

Why: the paper's claims (a small "core" region shared by all languages, plus per-language
regions) can only be checked exactly when we know which tokens belong to which language. Every
language here renders the *same* sampled meanings (subject, verb, object, adjectives, numbers)
from one shared concept inventory, Zipf-distributed like real text, but each has its own
generated vocabulary, script, morphology and word order. Numerals, personal names and
punctuation are shared by all languages: that shared structure is what a core region should
capture.

Ground truth: :data:`LANGUAGES` maps a code to a :class:`LanguageSpec` that lists the
language's lexicon (concept -> stem), every surface form it can emit (``words``), its
characters (``alphabet``) and its typological properties. :func:`ground_truth` returns it in
JSON-friendly form. Everything is seeded: the same ``(lang, seed)`` always yields the same
documents, on any machine and Python process.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from jaxregion.errors import UserError
from jaxregion.io.atomic import atomic_path

N_NOUNS, N_VERBS, N_ADJS = 400, 120, 80
NOUNS = tuple(f"N{i}" for i in range(N_NOUNS))
VERBS = tuple(f"V{i}" for i in range(N_VERBS))
ADJS = tuple(f"A{i}" for i in range(N_ADJS))
FUNCTION_WORDS = ("AND", "NOT")
TENSES = ("present", "past", "future")

# Shared across every language: the "core" every model should learn once.
NAMES = (
    "Ana",
    "Boris",
    "Chen",
    "Dara",
    "Elif",
    "Farid",
    "Gita",
    "Hugo",
    "Ines",
    "Jonas",
    "Kemal",
    "Lena",
    "Mira",
    "Nils",
    "Omar",
    "Priya",
    "Rosa",
    "Sami",
    "Tomas",
    "Yuki",
)
PUNCT = (".", ",", "?", "!")
SHARED_WORDS = frozenset(NAMES) | frozenset(str(n) for n in range(100))
SHARED_CHARS = frozenset("".join(NAMES)) | frozenset(string.digits) | frozenset(PUNCT) | {" "}


def _range(a: int, b: int) -> list[str]:
    return [chr(c) for c in range(a, b + 1)]


@dataclass(frozen=True)
class _Design:
    """What makes a language different: script, sound pattern, order, morphology."""

    script: str
    consonants: tuple[str, ...]
    vowels: tuple[str, ...]
    word_order: str  # "SVO", "SOV" or "VSO"
    adj_after_noun: bool
    morphology: str  # "fusional", "agglutinative" or "isolating"
    word_sep: str = " "
    min_syl: int = 1
    max_syl: int = 3
    syllable_mode: str = "cv"  # "cv": consonant+vowel strings; "block": one code point each
    block_chars: tuple[str, ...] = ()


_DESIGNS: dict[str, _Design] = {
    "lat": _Design("Latin", tuple("ptkbdgmnlrsv"), tuple("aeiou"), "SVO", False, "fusional"),
    "rom": _Design("Latin", tuple("fhjzcwxqy"), tuple("äöüåy"), "SOV", True, "fusional", min_syl=2),
    "cyr": _Design(
        "Cyrillic", tuple("бвгджзклмнпрстфхцчш"), tuple("аеиоуыэюя"), "SVO", False, "fusional"
    ),
    "grk": _Design("Greek", tuple("βγδζθκλμνξπρστφχψ"), tuple("αεηιουω"), "VSO", True, "fusional"),
    "arb": _Design(
        "Arabic", tuple(_range(0x0628, 0x063A)), tuple("اوي"), "VSO", True, "fusional", word_sep=" "
    ),
    "cjk": _Design(
        "CJK",
        (),
        (),
        "SVO",
        False,
        "isolating",
        word_sep="",
        min_syl=1,
        max_syl=2,
        syllable_mode="block",
        block_chars=tuple(_range(0x4E00, 0x5DFF)),
    ),
    "hng": _Design(
        "Hangul",
        (),
        (),
        "SOV",
        False,
        "agglutinative",
        min_syl=1,
        max_syl=3,
        syllable_mode="block",
        block_chars=tuple(_range(0xAC00, 0xB3FF)),
    ),
}


@dataclass
class LanguageSpec:
    """One artificial language: its lexicon, surface forms and typology (the ground truth)."""

    code: str
    script: str
    word_order: str
    adj_after_noun: bool
    morphology: str
    word_sep: str
    lexicon: dict[str, str]  # concept -> stem
    affixes: dict[str, str]  # grammatical feature -> affix / particle
    words: frozenset[str] = frozenset()  # every surface form the language can emit
    alphabet: frozenset[str] = frozenset()
    # Pre-rendered tables so generation is lookups and joins (fast).
    _noun: list[list[list[str]]] = field(default_factory=list, repr=False)  # [n][pl][case]
    _verb: list[list[list[str]]] = field(default_factory=list, repr=False)  # [v][tense][pl]
    _adj: list[list[str]] = field(default_factory=list, repr=False)  # [a][pl]

    def describe(self) -> dict:
        """JSON-friendly ground truth for this language."""
        return {
            "code": self.code,
            "script": self.script,
            "word_order": self.word_order,
            "adj_after_noun": self.adj_after_noun,
            "morphology": self.morphology,
            "word_sep": self.word_sep,
            "lexicon": dict(self.lexicon),
            "affixes": dict(self.affixes),
            "words": sorted(self.words),
            "alphabet": "".join(sorted(self.alphabet)),
        }


class _WordMaker:
    """Generates stems no other language (or feature) uses, so ground truth is unambiguous."""

    def __init__(self, design: _Design, rng: random.Random, taken: set[str]):
        self.d, self.rng, self.taken = design, rng, taken

    def syllable(self) -> str:
        if self.d.syllable_mode == "block":
            return self.rng.choice(self.d.block_chars)
        c, v = self.rng.choice(self.d.consonants), self.rng.choice(self.d.vowels)
        return c + v + (self.rng.choice(self.d.consonants) if self.rng.random() < 0.25 else "")

    def word(self, n_syl: int) -> str:
        while True:
            w = "".join(self.syllable() for _ in range(n_syl))
            if w not in self.taken:
                self.taken.add(w)
                return w
            n_syl += self.rng.random() < 0.2  # crowded length: sometimes go longer


def _build(code: str, design: _Design, taken: set[str]) -> LanguageSpec:
    rng = random.Random(f"jaxregion-synthetic-lexicon:{code}")
    mk = _WordMaker(design, rng, taken)
    lexicon: dict[str, str] = {}
    # Zipf's law of abbreviation: frequent concepts (low index) get shorter words.
    for group in (NOUNS, VERBS, ADJS, FUNCTION_WORDS):
        for i, concept in enumerate(group):
            span = design.max_syl - design.min_syl
            n_syl = design.min_syl + min(span, int(span * (i / len(group)) ** 0.5 + rng.random()))
            lexicon[concept] = mk.word(n_syl)
    feats = ("plural", "subject", "object", "past", "future", "agree", "question")
    affixes = {f: mk.word(1) for f in feats}
    a, sep = affixes, design.word_sep

    def noun(stem: str, pl: int, case: int) -> str:
        if design.morphology == "isolating":  # separate particles, no inflection
            return stem + (sep + a["plural"] if pl else "")
        w = stem + (a["plural"] if pl else "")
        if design.morphology == "agglutinative":
            w += ("", a["subject"], a["object"])[case]
        return w

    def verb(stem: str, tense: int, pl: int) -> str:
        t = ("", a["past"], a["future"])[tense]
        if design.morphology == "isolating":
            return stem + (sep + t if t else "")
        return stem + t + (a["agree"] if pl and design.morphology == "fusional" else "")

    def adj(stem: str, pl: int) -> str:
        return stem + (a["plural"] if pl and design.morphology == "fusional" else "")

    spec = LanguageSpec(
        code,
        design.script,
        design.word_order,
        design.adj_after_noun,
        design.morphology,
        sep,
        lexicon,
        affixes,
    )
    spec._noun = [[[noun(lexicon[n], pl, c) for c in range(3)] for pl in (0, 1)] for n in NOUNS]
    spec._verb = [[[verb(lexicon[v], t, pl) for pl in (0, 1)] for t in range(3)] for v in VERBS]
    spec._adj = [[adj(lexicon[x], pl) for pl in (0, 1)] for x in ADJS]
    forms: set[str] = {lexicon["AND"], lexicon["NOT"], a["question"]}
    if design.morphology == "isolating":  # words are stems and free particles
        forms.update(lexicon.values())
        forms.update(a[f] for f in ("plural", "past", "future"))
    else:
        for table in (spec._noun, spec._verb, spec._adj):
            for row in table:
                for cell in row:
                    forms.update(cell if isinstance(cell, list) else [cell])
    if design.morphology == "agglutinative":  # case particles written after names
        forms.update((a["subject"], a["object"]))
    spec.words = frozenset(forms)
    spec.alphabet = frozenset("".join(forms))
    return spec


def _build_all() -> dict[str, LanguageSpec]:
    taken: set[str] = set(SHARED_WORDS)
    return {code: _build(code, d, taken) for code, d in _DESIGNS.items()}


LANGUAGES: dict[str, LanguageSpec] = _build_all()


def ground_truth() -> dict[str, dict]:
    """Every language's lexicon, surface forms, alphabet and typology, plus what is shared."""
    out = {code: spec.describe() for code, spec in LANGUAGES.items()}
    out["_shared"] = {"names": list(NAMES), "numerals": "0-99", "punctuation": list(PUNCT)}
    return out


def _zipf_cum(n: int, s: float = 1.07) -> list[float]:
    cum, total = [], 0.0
    for r in range(1, n + 1):
        total += 1.0 / r**s
        cum.append(total)
    return cum


_CUM_N, _CUM_V, _CUM_A = _zipf_cum(N_NOUNS), _zipf_cum(N_VERBS), _zipf_cum(N_ADJS)


def _pick(rng: random.Random, cum: list[float]) -> int:
    return bisect.bisect_left(cum, rng.random() * cum[-1])


def _np(spec: LanguageSpec, rng: random.Random, case: int, allow_name: bool) -> tuple[list, int]:
    """A noun phrase (tokens, plural flag) in case 0 plain, 1 subject, 2 object."""
    if allow_name and rng.random() < 0.2:
        name = rng.choice(NAMES)
        if spec.morphology == "agglutinative" and case:  # names take a free case particle
            return [name, spec.affixes["subject" if case == 1 else "object"]], 0
        return [name], 0
    num = rng.randint(2, 99) if rng.random() < 0.15 else 0
    pl = 1 if num or rng.random() < 0.3 else 0
    toks = [str(num)] if num else []
    head = spec._noun[_pick(rng, _CUM_N)][pl][case]
    if rng.random() < 0.35:
        a = spec._adj[_pick(rng, _CUM_A)][pl]
        toks += [head, a] if spec.adj_after_noun else [a, head]
    else:
        toks.append(head)
    return toks, pl


def _clause(spec: LanguageSpec, rng: random.Random) -> list[str]:
    subj, pl = _np(spec, rng, 1, allow_name=True)
    obj, _ = _np(spec, rng, 2, allow_name=True)
    verb = [spec._verb[_pick(rng, _CUM_V)][rng.randrange(3)][pl]]
    if rng.random() < 0.08:
        verb = [spec.lexicon["NOT"]] + verb
    order = spec.word_order
    if order == "SVO":
        return subj + verb + obj
    if order == "SOV":
        return subj + obj + verb
    return verb + subj + obj


def _sentence(spec: LanguageSpec, rng: random.Random) -> str:
    toks = _clause(spec, rng)
    if rng.random() < 0.25:
        toks = toks + [","] + [spec.lexicon["AND"]] + _clause(spec, rng)
    question = rng.random() < 0.1
    if question:
        toks.append(spec.affixes["question"])
    sep = spec.word_sep
    text = sep.join(toks).replace(sep + ",", ",") if sep else "".join(toks)
    return text + ("?" if question else "!" if rng.random() < 0.05 else ".")


def generate(lang: str, n_docs: int | None = None, seed: int = 0) -> Iterator[str]:
    """Documents of ``lang`` (one line each, no newlines); unlimited when ``n_docs`` is None."""
    if lang not in LANGUAGES:
        raise UserError(
            f"synthetic language {lang!r} does not exist; choose one of {', '.join(LANGUAGES)}"
        )
    if n_docs is not None and n_docs < 0:
        raise UserError(f"synthetic {lang}: n_docs={n_docs} must be >= 0")
    spec = LANGUAGES[lang]
    rng = random.Random(f"jaxregion-synthetic-docs:{lang}:{seed}")
    joiner = " " if spec.word_sep else ""
    i = 0
    while n_docs is None or i < n_docs:
        yield joiner.join(_sentence(spec, rng) for _ in range(rng.randint(2, 9)))
        i += 1


def _split_seed(seed: int, split: str) -> int:
    """Different splits of one seed never share a document stream."""
    return seed if split == "train" else seed * 1000003 + sum(map(ord, split)) * 7919 + 1


def write_corpus(
    out_dir: str,
    langs: Sequence[str] | None = None,
    n_docs: int = 1000,
    seed: int = 0,
    split: str = "train",
) -> dict[str, str]:
    """Write ``out_dir/LANG.SPLIT.txt`` per language (atomically); return lang -> path.

    Also writes ``ground_truth.json`` so downstream analyses can score themselves.
    """
    langs = list(langs) if langs is not None else list(LANGUAGES)
    paths = {}
    for lang in langs:
        path = os.path.join(out_dir, f"{lang}.{split}.txt")
        docs = generate(lang, n_docs, _split_seed(seed, split))
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for doc in docs:
                f.write(doc + "\n")
        paths[lang] = path
    with atomic_path(os.path.join(out_dir, "ground_truth.json")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(
                {k: v for k, v in ground_truth().items() if k in langs or k == "_shared"},
                f,
                ensure_ascii=False,
            )
    return paths
