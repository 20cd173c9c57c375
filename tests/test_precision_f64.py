"""jaxregion's float32 evaluation loss and taylor scores against a true float64 reference.

The reference is PyTorch in float64 with RMSNorm, RoPE angles and the attention softmax in
float64 too (``tests/torch_f64.py``: ``model.double()`` alone keeps them in float32, so it
shares those roundings with PyTorch's float32 run). jaxregion's float32 error must be within
2x of PyTorch float32's on the same windows:

* a tiny random llama with Gemma 3's 262,144-token vocabulary (the log-sum-exp and the
  softmax gradient over the whole vocabulary, every entry of a similar size);
* a well-trained llama with grouped-query attention (``tests/gqa_fixture.py``: confident
  predictions, where ``softmax - onehot`` nearly cancels at the target), at 256 windows of
  Chinese, batch 16.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import gqa_fixture  # noqa: E402
import torch_f64  # noqa: E402
from hf_factory import make_model  # noqa: E402

from jaxregion import importance, runtime  # noqa: E402
from jaxregion import tree as T  # noqa: E402
from jaxregion.evaluate import evaluate  # noqa: E402

pytestmark = pytest.mark.slow

BIG_VOCAB, GQA_BATCH = 262_144, 16


def _torch(path: str, dtype: torch.dtype) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").to(
        dtype
    )


def _measure(path: str, windows: np.ndarray, batch: int) -> dict[str, tuple[float, float]]:
    """{run: (|mean loss - float64|, taylor worst tensor error vs float64)}."""
    with torch_f64.float64():
        ref_loss, ref = torch_f64.taylor(_torch(path, torch.float64), windows, batch)
    loss32, t32 = torch_f64.taylor(_torch(path, torch.float32), windows, batch, list(ref))
    session = runtime.load_session(path, with_tokenizer=False)
    w = windows.astype(np.int32)
    ours_loss = evaluate(session.params, session.config, w, batch).loss
    res = importance.compute_importance(session.params, session.config, w, "taylor", batch)
    flat = T.flatten(res.scores)
    assert all(np.asarray(flat[n]).dtype == np.float32 for n in ref)
    out = {
        "torch float32": (abs(loss32 - ref_loss), torch_f64.worst(t32, ref)),
        "jaxregion float32": (abs(ours_loss - ref_loss), torch_f64.worst(flat, ref)),
    }
    for k, (le, se) in out.items():
        print(f"{path} n={len(windows)} {k}: |loss - float64| {le:.3e}, taylor worst {se:.3e}")
    return out


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory) -> dict[str, tuple[float, float]]:
    path = str(tmp_path_factory.mktemp("vocab262k"))
    make_model("llama_mha", vocab=BIG_VOCAB, tie_word_embeddings=True).save_pretrained(path)
    windows = np.random.default_rng(0).integers(0, BIG_VOCAB, (8, 128))
    return _measure(path, windows, 2)


def test_eval_loss_262k_vocabulary_within_2x_of_pytorch(big_vocab):
    ours, torch32 = big_vocab["jaxregion float32"][0], big_vocab["torch float32"][0]
    assert ours <= 2 * torch32, (ours, torch32)


def test_taylor_262k_vocabulary_within_2x_of_pytorch(big_vocab):
    ours, torch32 = big_vocab["jaxregion float32"][1], big_vocab["torch float32"][1]
    assert ours <= 2 * torch32, (ours, torch32)


@pytest.fixture(scope="module")
def gqa_model(request, tmp_path_factory) -> str:
    """The trained GQA llama, built once and kept in pytest's cache directory."""
    if not gqa_fixture.available():
        pytest.skip(f"the real-text corpus is absent ({gqa_fixture.corpus_dir()})")
    cache = getattr(request.config, "cache", None)
    path = str(cache.mkdir("gqa_llama") if cache else tmp_path_factory.mktemp("gqa_llama"))
    rec = gqa_fixture.build(path)
    assert rec["final_loss"] < gqa_fixture.LOW_LOSS, rec  # confident: the regime under test
    return path


@pytest.mark.parametrize("n", [256])  # 2,048: ~20 min of PyTorch runs (docs/precision.md)
def test_taylor_trained_gqa_within_2x_of_pytorch(gqa_model, n):
    windows = np.load(f"{gqa_model}/windows_zh.npy")[:n]
    out = _measure(gqa_model, windows, GQA_BATCH)
    ours, torch32 = out["jaxregion float32"][1], out["torch float32"][1]
    assert ours <= 2 * torch32, (ours, torch32)
