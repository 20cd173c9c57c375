"""The packing contract: text to token windows. Every command uses this one copy.

- Each document becomes ``[BOS] + tokenizer(doc, add_special_tokens=False)``. With no BOS
  token, documents are joined by EOS instead.
- Documents are concatenated in order and cut into consecutive windows of ``seq_len`` tokens;
  a final partial window is dropped. ``max_seqs`` keeps the first N windows.
- Loss is the mean next-token cross-entropy over all predicted positions of all windows
  (``seq_len - 1`` per window); perplexity is ``exp(loss)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np

from jaxregion.errors import UserError

_CHUNK = 512  # documents tokenized per call: fast tokenizers batch internally


def _separators(tokenizer) -> tuple[int | None, int | None]:
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if bos is None and eos is None:
        raise UserError("the tokenizer has neither a BOS nor an EOS token; packing needs one")
    return bos, eos


def document_tokens(documents: Iterable[str], tokenizer) -> Iterator[list[int]]:
    """Token ids of each document, with its BOS (or leading EOS separator) attached."""
    bos, eos = _separators(tokenizer)
    it = iter(documents)
    first = True
    while chunk := list(islice(it, _CHUNK)):
        ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        for doc in ids:
            if bos is not None:
                yield [bos, *doc]
            else:
                yield doc if first else [eos, *doc]
            first = False


def pack_windows(
    documents: Iterable[str], tokenizer, seq_len: int, max_seqs: int | None = None
) -> Iterator[np.ndarray]:
    """Consecutive int32 windows of ``seq_len`` tokens; streams, never holds the corpus."""
    if seq_len < 2:
        raise UserError(f"--seq-len {seq_len}: must be at least 2 (one prediction per window)")
    if max_seqs is not None and max_seqs <= 0:
        raise UserError(f"--max-seqs {max_seqs}: must be positive")
    buf = np.empty(0, dtype=np.int32)
    produced = 0
    for ids in document_tokens(documents, tokenizer):
        buf = np.concatenate([buf, np.asarray(ids, dtype=np.int32)])
        n = len(buf) // seq_len
        for w in range(n):
            yield buf[w * seq_len : (w + 1) * seq_len].copy()
            produced += 1
            if max_seqs is not None and produced >= max_seqs:
                return
        buf = buf[n * seq_len :]


def load_windows(
    documents: Iterable[str],
    tokenizer,
    seq_len: int,
    max_seqs: int | None = None,
    source: str = "the text",
) -> np.ndarray:
    """All windows as an array ``[n, seq_len]``; errors name ``source`` when it is too short."""
    wins = list(pack_windows(documents, tokenizer, seq_len, max_seqs))
    if not wins:
        raise UserError(
            f"{source}: yields no complete window of {seq_len} tokens; "
            "give more text or a smaller --seq-len"
        )
    if max_seqs is not None and len(wins) < max_seqs:
        raise UserError(
            f"{source}: has only {len(wins)} windows of {seq_len} tokens, "
            f"fewer than --max-seqs {max_seqs}; lower --max-seqs to at most {len(wins)}"
        )
    return np.stack(wins)
