"""Real text in the paper's 30 languages, when ../shared/corpora/text is present (skipped
otherwise: it is not part of the project)."""

from __future__ import annotations

import os
from itertools import islice

import numpy as np
import pytest
from conftest import SHARED_TEXT

pytestmark = pytest.mark.skipif(
    not os.path.isdir(SHARED_TEXT), reason="../shared/corpora/text not present"
)

LANGS = "ar zh cs da nl en fi fr de el hu id it ja ko ms ml no fa pl pt ro ru es sw sv ta tr uk vi"


def test_thirty_languages_pack_losslessly(tmp_path):
    """Every language reads as UTF-8, packs into windows under the contract, and the byte-level
    tokens decode back to the exact documents."""
    from jaxregion.data.packing import document_tokens, load_windows
    from jaxregion.data.sources import open_source
    from jaxregion.data.tokenizer import train_bpe

    langs = LANGS.split()
    docs = {
        lang: list(
            islice(open_source(os.path.join(SHARED_TEXT, f"{lang}.valid.txt")).documents(), 60)
        )
        for lang in langs
    }
    tok = train_bpe(docs, 2048, str(tmp_path / "tok"))
    for lang in langs:
        ids = list(document_tokens(docs[lang][:20], tok))
        for doc, t in zip(docs[lang][:20], ids):
            assert t[0] == tok.bos_token_id
            assert tok.decode(t[1:]) == doc, lang
        w = load_windows(docs[lang], tok, 64, source=lang)
        assert w.dtype == np.int32 and w.shape[1] == 64
        flat = np.concatenate([np.asarray(x) for x in ids])
        np.testing.assert_array_equal(w.reshape(-1)[: len(flat)][:64], flat[:64])
