"""Bits per byte: the bytes of exactly the predicted tokens, and the eval JSON field."""

from __future__ import annotations

import json
import math

import numpy as np
from conftest import run_cli

from jaxregion.data import synthetic
from jaxregion.data.packing import document_tokens, load_windows
from jaxregion.data.tokenizer import token_byte_lengths
from jaxregion.evaluate import evaluate
from jaxregion.io import hf


def test_byte_level_table_sums_to_utf8_length(tokenizer):
    table = token_byte_lengths(tokenizer)
    assert table is not None
    for lang in ("lat", "cyr", "cjk", "hng"):
        for doc in synthetic.generate(lang, 5, seed=3):
            ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
            assert int(table[ids].sum()) == len(doc.encode("utf-8"))
    assert table[tokenizer.bos_token_id] == 0 and table[tokenizer.eos_token_id] == 0


def test_sentencepiece_table_counts_marker_and_byte_fallback():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    pieces += [(f"<0x{b:02X}>", -10.0) for b in range(256)]
    pieces += [("▁hello", -1.0), ("▁w", -2.0), ("rld", -2.0), ("▁", -3.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", "merged_with_next")
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    text = "hello wörld"
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert any(hf_tok.convert_ids_to_tokens(i).startswith("<0x") for i in ids)  # ö fell back
    table = token_byte_lengths(hf_tok, size=600)
    assert table.shape == (600,)
    # The dummy-prefix space the tokenizer adds is a predicted byte too.
    assert int(table[ids].sum()) == len((" " + text).encode("utf-8"))
    assert table[hf_tok.bos_token_id] == 0


def test_bits_per_byte_by_hand(model_factory, tokenizer):
    """One window covering one whole document: the bytes are the document's UTF-8 bytes."""
    path = model_factory("llama_mha")
    cfg, params = hf.load(path)
    table = token_byte_lengths(tokenizer, cfg.vocab_size)
    doc = next(synthetic.generate("cyr", 1, seed=1))
    n = len(next(document_tokens([doc], tokenizer)))
    windows = load_windows([doc], tokenizer, n)
    assert windows.shape == (1, n)
    r = evaluate(params, cfg, windows, batch_size=2, token_bytes=table)
    n_bytes = len(doc.encode("utf-8"))
    assert r.bytes == n_bytes and r.tokens == n - 1
    assert math.isclose(r.bits_per_byte, r.loss * r.tokens / (math.log(2) * n_bytes), rel_tol=1e-12)


def test_bits_per_byte_counts_only_predicted_positions(model_factory, tokenizer):
    """Several windows: position 0 of each window is context, its bytes are not counted."""
    path = model_factory("llama_mha")
    cfg, params = hf.load(path)
    docs = list(synthetic.generate("lat", 4, seed=2))  # ASCII: any token slice decodes exactly
    windows = load_windows(docs, tokenizer, 16)
    by_hand = sum(
        len(tokenizer.decode(w[1:], skip_special_tokens=True).encode("utf-8")) for w in windows
    )
    r = evaluate(
        params,
        cfg,
        windows,
        batch_size=4,
        token_bytes=token_byte_lengths(tokenizer, cfg.vocab_size),
    )
    assert r.bytes == by_hand
    assert math.isclose(r.bits_per_byte, r.loss * r.tokens / (math.log(2) * by_hand), rel_tol=1e-12)


def test_eval_json_has_bits_per_byte(model_factory, corpus_dir, tmp_path):
    out = tmp_path / "eval.json"
    code, stdout, err = run_cli(
        "eval",
        "--model",
        model_factory("llama_mha"),
        "--text",
        f"lat={corpus_dir}/lat.txt",
        "--seq-len",
        "16",
        "--max-seqs",
        "4",
        "--json",
        str(out),
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    bpb, loss, tokens = res["bits_per_byte"]["lat"], res["loss"]["lat"], res["tokens"]["lat"]
    assert math.isclose(bpb, loss * tokens / (math.log(2) * res["bytes"]["lat"]), rel_tol=1e-12)
    assert "bits/byte" in stdout
    assert np.isfinite(bpb)
