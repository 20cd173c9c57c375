"""Train and load byte-level BPE tokenizers, saved as ordinary HF tokenizer directories.

Why our own: the synthetic languages (and small test corpora) need a tokenizer that covers
every language, loads offline with ``AutoTokenizer.from_pretrained`` and never emits ``<unk>``
(byte-level). Training interleaves languages so no language dominates the early merges, and
is deterministic: the same documents and vocab size give the same vocabulary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np

from jaxregion.errors import UserError

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>")
# Any of these marks a directory as holding a tokenizer transformers can load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def _interleave(
    documents_by_lang: dict[str, Iterable[str]], max_docs_per_lang: int | None
) -> Iterator[str]:
    """Round-robin over languages in sorted order (deterministic, balanced)."""
    its = {
        lang: iter(
            documents_by_lang[lang]
            if max_docs_per_lang is None
            else islice(documents_by_lang[lang], max_docs_per_lang)
        )
        for lang in sorted(documents_by_lang)
    }
    while its:
        for lang in list(its):
            doc = next(its[lang], None)
            if doc is None:
                del its[lang]
            else:
                yield doc


def train_bpe(
    documents_by_lang: dict[str, Iterable[str]],
    vocab_size: int,
    out_dir: str,
    max_docs_per_lang: int | None = None,
    min_frequency: int = 2,
):
    """Train a byte-level BPE on all languages, save it to ``out_dir``, return the HF tokenizer.

    ``max_docs_per_lang`` caps each (possibly unlimited) document stream.
    """
    # deferred: transformers costs ~1.2 s to import (measured, python -X importtime), and hf
    # imports this module for every checkpoint, most of which need no tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not documents_by_lang:
        raise UserError("train_bpe: no languages given; pass at least one LANG=SOURCE")
    n_base = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= n_base:
        raise UserError(
            f"vocab_size={vocab_size}: must exceed {n_base} (256 bytes + "
            f"{len(SPECIAL_TOKENS)} special tokens)"
        )
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    n_docs = 0

    def counted() -> Iterator[str]:
        nonlocal n_docs
        for doc in _interleave(documents_by_lang, max_docs_per_lang):
            n_docs += 1
            yield doc

    tok.train_from_iterator(counted(), trainer=trainer)
    if n_docs == 0:
        raise UserError("train_bpe: the sources hold no documents; nothing to train on")
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    # tokenizer(text) adds BOS like LLaMA-family models; packing asks for no special tokens.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=1 << 20,
    )
    _save_atomically(hf, out_dir)
    return hf


def _save_atomically(hf, out_dir: str) -> None:
    """Write to a sibling temp dir, then move each file in with an atomic rename."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-tokenizer-", dir=parent)
    try:
        hf.save_pretrained(tmp)
        os.makedirs(out_dir, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(directory: str):
    """``AutoTokenizer`` from a local directory, offline; errors name what is missing."""
    from transformers import AutoTokenizer  # deferred: ~1.2 s (see train_bpe)

    if not os.path.isdir(directory):
        raise UserError(f"{directory}: no such tokenizer directory")
    if not any(os.path.isfile(os.path.join(directory, f)) for f in TOKENIZER_FILES):
        raise UserError(
            f"{directory}: no tokenizer files (expected one of "
            f"{', '.join(TOKENIZER_FILES)}, usually with tokenizer_config.json); "
            "train one with train_bpe or point at a model directory"
        )
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as e:  # corrupt JSON, unknown class, ...: the directory is at fault
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{directory}: cannot load the tokenizer ({msg[:300]})") from None


def _decoder_kind(tokenizer) -> str | None:
    """How the tokenizer spells bytes: ``"byte_level"``, ``"sentencepiece"`` or None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str()).get("decoder") or {}
    parts = spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]
    types = {p.get("type") for p in parts}
    if "ByteLevel" in types:
        return "byte_level"
    if (
        "Metaspace" in types
        or "ByteFallback" in types
        or any(
            p.get("type") == "Replace" and p.get("pattern", {}).get("String") == "▁" for p in parts
        )
    ):
        return "sentencepiece"
    return None


def token_byte_lengths(tokenizer, size: int | None = None) -> np.ndarray | None:
    """UTF-8 bytes each token id stands for, ``int64 [max(size, len(tokenizer))]``.

    Why: bits per byte needs the bytes of exactly the predicted tokens. A byte-level BPE
    token of ``n`` characters is ``n`` bytes; a SentencePiece token counts ``<0xNN>`` as one
    byte and its word-boundary marker ``▁`` as one space; special tokens (BOS, EOS, pad)
    count 0; ids beyond the tokenizer (padded embedding rows) count 0. None when the
    tokenizer's byte spelling is neither of these (bits per byte is then not defined here).
    """
    kind = _decoder_kind(tokenizer)
    if kind is None:
        return None
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    added = {t.content: t for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()}
    n = max(len(vocab), max(vocab.values()) + 1, size or 0)
    out = np.zeros(n, np.int64)
    for token, i in vocab.items():
        if token in added:
            out[i] = 0 if added[token].special else len(token.encode("utf-8"))
        elif kind == "byte_level":
            out[i] = len(token)  # one character per byte (GPT-2's bytes_to_unicode)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            out[i] = 1
        else:
            out[i] = len(token.replace("▁", " ").encode("utf-8"))
    for i in getattr(tokenizer, "all_special_ids", []):
        if i < n:
            out[i] = 0
    return out
