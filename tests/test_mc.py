"""The synthetic multiple-choice task: well-formed questions, run through the lm-eval model."""

from __future__ import annotations

import json
import os

import pytest

from jaxregion import runtime
from jaxregion.analysis import fidelity, mc
from jaxregion.data import synthetic
from jaxregion.errors import UserError


@pytest.mark.parametrize("lang", ["lat", "cjk", "hng"])
def test_items_follow_the_ground_truth(lang):
    qs = mc.items(lang, 6, seed=1)
    assert qs == mc.items(lang, 6, seed=1) and qs != mc.items(lang, 6, seed=2)
    sep = synthetic.LANGUAGES[lang].word_sep
    for q in qs:
        assert len(q["choices"]) == 4 and sorted(q["kinds"]) == sorted(mc.KINDS)
        gold = q["choices"][q["gold"]]
        assert q["kinds"][q["gold"]] == "gold"
        assert fidelity.identify_synthetic(q["context"]) == lang
        assert fidelity.identify_synthetic(gold) == lang
        by_kind = dict(zip(q["kinds"], q["choices"]))
        other = by_kind["other_language"]
        assert fidelity.identify_synthetic(other) == q["other_language"] != lang
        shuffled = by_kind["shuffled_words"]
        split = (lambda s: s[:-1].split(sep)) if sep else (lambda s: list(s[:-1]))
        assert sorted(split(shuffled)) == sorted(split(gold)) and shuffled != gold
        assert by_kind["shuffled_letters"] != gold
    with pytest.raises(UserError, match="xx"):
        mc.items("xx", 3)


@pytest.mark.slow
def test_task_runs_through_lm_eval(model_factory, tmp_path):
    pytest.importorskip("lm_eval")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from jaxregion import interventions, regions

    session = runtime.load_session(model_factory("llama_mha"))
    core = regions.random(session.params, ratio=0.5, seed=0)
    settings = {
        "base": session.params,
        "removed": interventions.region_op(session.params, core, "zero"),
    }
    acc = mc.evaluate_settings(session, settings, ["lat", "cyr"], str(tmp_path), n=6)
    assert set(acc) == {"base", "removed"}
    for per_lang in acc.values():
        assert set(per_lang) == {"lat", "cyr"}
        assert all(a in {i / 6 for i in range(7)} for a in per_lang.values())
    rows = [json.loads(line) for line in open(tmp_path / "jaxregion_mc_lat.jsonl")]
    assert len(rows) == 6


def test_comparison_verdict():
    c = mc.Comparison(
        base={"a": 0.9, "b": 0.8}, core={"a": 0.3, "b": 0.4}, random={"a": 0.85, "b": 0.8}
    )
    assert c.drops() == pytest.approx((0.5, 0.025))
    assert "lowers accuracy more than" in c.verdict() and "does not" not in c.verdict()
    flipped = mc.Comparison(base=c.base, core=c.random, random=c.core)
    assert "does not lower accuracy more than" in flipped.verdict()
