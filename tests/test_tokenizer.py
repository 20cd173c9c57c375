"""train_bpe / load_tokenizer: offline HF directories, deterministic, every language covered."""

from __future__ import annotations

import json
import os

import pytest

from jaxregion.data import synthetic as S
from jaxregion.data.tokenizer import load_tokenizer, train_bpe
from jaxregion.errors import UserError


def _docs(n: int = 400) -> dict[str, list[str]]:
    return {lang: list(S.generate(lang, n, 0)) for lang in S.LANGUAGES}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bpe"))
    hf = train_bpe(_docs(), 1024, out)
    return out, hf


def test_trains_and_loads_offline_with_specials(trained):
    """(Its speed target, < 20 s, is in scripts/bench_targets.py.)"""
    from transformers import AutoTokenizer

    out, hf = trained
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))
    for tok in (hf, AutoTokenizer.from_pretrained(out, local_files_only=True), load_tokenizer(out)):
        assert len(tok) == 1024
        assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
        assert tok.pad_token == "<pad>" and tok.unk_token == "<unk>"
        assert tok.convert_ids_to_tokens([tok.bos_token_id, tok.eos_token_id]) == ["<s>", "</s>"]
        assert tok("nu vat")["input_ids"][0] == tok.bos_token_id
        assert tok.bos_token_id not in tok("nu vat", add_special_tokens=False)["input_ids"]


def test_roundtrips_every_language_without_unk(trained):
    out, _ = trained
    tok = load_tokenizer(out)
    for lang in S.LANGUAGES:
        for doc in S.generate(lang, 20, seed=123):  # held-out documents
            ids = tok(doc, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == doc
    # Interleaved training gives every language merges of its own: tokens that decode to
    # whole characters of that language only.
    decoded = [tok.decode([i]).strip() for i in range(len(tok))]
    for lang, spec in S.LANGUAGES.items():
        own = [t for t in decoded if t and set(t) <= spec.alphabet]
        multi = [t for t in own if len(t) >= 2]
        assert len(own) >= 15 and len(multi) >= 3, (lang, len(own), len(multi))


def test_deterministic(tmp_path, trained):
    out, _ = trained
    train_bpe(_docs(), 1024, str(tmp_path))
    with open(os.path.join(out, "tokenizer.json")) as a, open(tmp_path / "tokenizer.json") as b:
        assert json.load(a)["model"] == json.load(b)["model"]


def test_load_errors_name_the_directory(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path}.*tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(UserError, match="no such tokenizer directory"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="vocab_size=100"):
        train_bpe({"lat": ["a b"]}, 100, str(tmp_path / "t"))
    with pytest.raises(UserError, match="no documents"):
        train_bpe({"lat": []}, 512, str(tmp_path / "t"))
