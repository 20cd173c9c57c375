"""Case studies: continuations per setting, fidelity, and the rendered Markdown."""

from __future__ import annotations

import json

import pytest

from jaxregion import interventions, regions, runtime
from jaxregion.analysis import casestudies
from jaxregion.configs import CaseStudyConfig
from jaxregion.data import synthetic
from jaxregion.errors import UserError


def test_case_studies_compute_then_render(model_factory):
    session = runtime.load_session(model_factory("llama_mha"))
    removed = interventions.region_op(
        session.params, regions.random(session.params, 0.3, seed=2), "zero"
    )
    prompts = {
        "lat": [next(synthetic.generate("lat", 1, seed=5))[:24], "Ana | x"],
        "cyr": [next(synthetic.generate("cyr", 1, seed=5))[:24]],
    }
    cs = casestudies.run(
        session.config,
        session.tokenizer,
        {"base": session.params, "random removed": removed},
        prompts,
        max_new_tokens=6,
        batch_size=2,
    )
    assert cs.settings == ["base", "random removed"]
    for s in cs.settings:
        assert [len(cs.continuations[s][k]) for k in prompts] == [2, 1]
        assert all(0.0 <= cs.fidelity[s][k] <= 1.0 for k in prompts)
    # The base model's continuation is the greedy generation of the prompt itself.
    from jaxregion.generate import completions

    again = completions(session.params, session.config, session.tokenizer, ["Ana | x"], 6)
    assert cs.continuations["base"]["lat"][1] == again[0]["completion"]
    json.dumps(cs.to_json(), allow_nan=False)
    md = casestudies.render(cs, width=20)
    assert "Language fidelity" in md and "random removed" in md
    assert "Ana \\| x" in md  # escaped in the heading
    assert "ground-truth" in md


def test_bad_language_named_before_generating():
    with pytest.raises(UserError, match="'zz'"):
        casestudies.check_prompts({"zz": ["hello"]})
    with pytest.raises(UserError, match="no prompts"):
        casestudies.check_prompts({"en": []})


def test_config_section_loads_strictly(tmp_path):
    from jaxregion.strict_loader import load_yaml

    f = tmp_path / "cs.yaml"
    f.write_text(
        "prompts:\n  en: ['Fudan University is located in']\n  lat: ['Ana']\nmax_new_tokens: 8\n"
    )
    c = load_yaml(CaseStudyConfig, str(f))
    assert c.prompts == {"en": ("Fudan University is located in",), "lat": ("Ana",)}
    assert c.max_new_tokens == 8
    f.write_text("prompt: {}\n")
    with pytest.raises(UserError, match="prompt"):
        load_yaml(CaseStudyConfig, str(f))
    f.write_text("prompts: {en: ['ok', '']}\n")
    with pytest.raises(UserError, match=r"prompts.en\[1\]: empty prompt"):
        load_yaml(CaseStudyConfig, str(f))
    f.write_text("prompts: {'../x': ['ok']}\n")
    with pytest.raises(UserError, match="prompts"):
        load_yaml(CaseStudyConfig, str(f))
