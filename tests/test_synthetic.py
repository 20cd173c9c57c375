"""The synthetic corpus: seeded, fast, distinguishable languages with an honest ground truth."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import pytest

from jaxregion.data import synthetic as S
from jaxregion.data.sources import sources_from_dir
from jaxregion.errors import UserError

PUNCT = ".,?!"


def test_at_least_six_languages_with_distinct_typology():
    assert len(S.LANGUAGES) >= 6
    specs = S.LANGUAGES.values()
    assert len({s.script for s in specs}) >= 6
    assert {s.word_order for s in specs} >= {"SVO", "SOV", "VSO"}
    assert {s.morphology for s in specs} >= {"fusional", "agglutinative", "isolating"}


def test_deterministic_and_seed_sensitive():
    for lang in S.LANGUAGES:
        a = list(S.generate(lang, 20, seed=3))
        assert a == list(S.generate(lang, 20, seed=3))
        assert a != list(S.generate(lang, 20, seed=4))
        assert len(a) == 20 and all(d and "\n" not in d for d in a)


def test_unlimited_stream_and_bad_language():
    it = S.generate("lat", None, 0)
    assert len([next(it) for _ in range(5000)]) == 5000
    with pytest.raises(UserError, match="'xx'.*lat"):
        next(S.generate("xx", 1))


def _words(spec: S.LanguageSpec, doc: str) -> list[str]:
    return [w.strip(PUNCT) for w in doc.replace(",", " ").split(" ") if w.strip(PUNCT)]


def test_ground_truth_matches_generated_text():
    for lang, spec in S.LANGUAGES.items():
        used: Counter = Counter()
        for doc in S.generate(lang, 300, 1):
            assert set(doc) <= spec.alphabet | S.SHARED_CHARS, lang
            if spec.word_sep:
                words = _words(spec, doc)
                bad = [w for w in words if w not in spec.words and w not in S.SHARED_WORDS]
                assert not bad, (lang, bad[:5])
                used.update(w for w in words if w in spec.words)
        if spec.word_sep:  # the Zipfian head of the lexicon really is used
            assert len(used) > 200, lang
    # Language-specific vocabularies and alphabets never overlap; shared words are shared.
    langs = list(S.LANGUAGES.values())
    for i, a in enumerate(langs):
        assert not (a.words & S.SHARED_WORDS)
        for b in langs[i + 1 :]:
            assert not (a.words & b.words), (a.code, b.code)
            assert not (a.alphabet & b.alphabet), (a.code, b.code)
    gt = S.ground_truth()
    json.dumps(gt, ensure_ascii=False)
    assert set(gt) == set(S.LANGUAGES) | {"_shared"}
    assert gt["lat"]["lexicon"]["N0"] == S.LANGUAGES["lat"].lexicon["N0"]


def test_shared_core_appears_in_every_language():
    for lang in S.LANGUAGES:
        text = " ".join(S.generate(lang, 200, 0))
        assert any(name in text for name in S.NAMES), lang
        assert any(ch.isdigit() for ch in text), lang
        assert "." in text, lang


def test_languages_separable_by_naive_bayes():
    """A character-unigram naive Bayes trained on 150 docs per language: >= 99% held out."""
    counts, totals = {}, {}
    for lang in S.LANGUAGES:
        c = Counter("".join(S.generate(lang, 150, seed=0)))
        counts[lang], totals[lang] = c, sum(c.values())
    vocab = set().union(*counts.values())
    V = len(vocab) + 1

    def logp(lang: str, doc: str) -> float:
        c, t = counts[lang], totals[lang]
        return sum(math.log((c[ch] + 1) / (t + V)) for ch in doc)

    right = total = 0
    for lang in S.LANGUAGES:
        for doc in S.generate(lang, 100, seed=99):
            right += max(S.LANGUAGES, key=lambda lg, d=doc: logp(lg, d)) == lang
            total += 1
    assert right / total >= 0.99


def test_streams_two_megabytes():
    """The generator streams without end (its speed target: scripts/bench_targets.py)."""
    per_lang = 2_000_000 // len(S.LANGUAGES)
    nbytes = 0
    for lang in S.LANGUAGES:
        start = nbytes
        for doc in S.generate(lang, None, 7):
            nbytes += len(doc.encode()) + 1
            if nbytes - start >= per_lang:
                break
    assert nbytes >= 2_000_000 - len(S.LANGUAGES)


def test_write_corpus_roundtrips_through_sources_from_dir(tmp_path):
    paths = S.write_corpus(str(tmp_path), ["lat", "cjk"], n_docs=40, seed=5, split="train")
    test_paths = S.write_corpus(str(tmp_path), ["lat", "cjk"], n_docs=40, seed=5, split="test")
    assert set(paths) == {"lat", "cjk"}
    assert os.path.isfile(tmp_path / "ground_truth.json")
    train = sources_from_dir(str(tmp_path), "train")
    test = sources_from_dir(str(tmp_path), "test")
    assert set(train) == set(test) == {"lat", "cjk"}
    assert train["lat"].name == paths["lat"] and test["lat"].name == test_paths["lat"]
    lat_train = list(train["lat"].documents())
    assert lat_train == list(S.generate("lat", 40, 5))
    assert not set(lat_train) & set(test["lat"].documents())
