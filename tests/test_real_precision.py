"""Float32 evaluation loss and taylor scores on the real models, against float64 PyTorch.

jaxregion's float32 error must be within 2x of PyTorch float32's on the same windows
(German text, 8 windows x 128 tokens, batch 2). The bfloat16 errors are printed next to
them (``-s``) for the record; they are not held to PyTorch's float32. The float64 reference
is a true one (``tests/torch_f64.py``: ``model.double()`` alone keeps RMSNorm, RoPE angles
and the attention softmax in float32).

Uses the float32 HF directories written from the GGUF files by transformers
(``$JAXREGION_REAL_MODELS``, default ``/work/models``) and the real-text corpus
(``$JAXREGION_CORPORA``, default ``/work/shared/corpora/text``); skipped when absent.
Run them one at a time: Gemma 3 270M needs ~8 GB with the float64 reference.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch_f64

from jaxregion import importance, models, runtime
from jaxregion import tree as T
from jaxregion.evaluate import evaluate
from jaxregion.regions import scope_names

pytestmark = [pytest.mark.real, pytest.mark.slow]

ROOT = os.environ.get("JAXREGION_REAL_MODELS", "/work/models")
TEXT = os.path.join(
    os.environ.get("JAXREGION_CORPORA", "/work/shared/corpora/text"), "de.valid.txt"
)
MODELS = ("gemma3-270m-hf", "smollm2-135m-hf")
N, SEQ, BATCH = 8, 128, 2


def _torch_run(path: str, windows: np.ndarray, dtype, names: list[str]):
    """(mean NLL, {name: θ ⊙ ∇L}) with PyTorch in ``dtype``, as float64."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("quantization_config", None)
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**cfg), attn_implementation="eager"
    )
    model.load_state_dict(load_file(os.path.join(path, "model.safetensors")), strict=False)
    model.tie_weights()
    return torch_f64.taylor(model.to(dtype), windows, BATCH, names)


@pytest.fixture(scope="module", params=MODELS)
def measured(request):
    path = os.path.join(ROOT, request.param)
    if not os.path.isfile(os.path.join(path, "model.safetensors")) or not os.path.isfile(TEXT):
        pytest.skip(f"{path} or {TEXT} is absent")
    torch = pytest.importorskip("torch")
    session = runtime.load_session(path)
    windows = runtime.load_corpora({"de": TEXT}, session, SEQ, N)["de"]
    names = scope_names(list(T.flatten(session.params)), roles=models.roles(session.config))
    with torch_f64.float64():
        ref_loss, ref = _torch_run(path, windows, torch.float64, names)
    t_loss, t_scores = _torch_run(path, windows, torch.float32, names)
    out = {"torch float32": (abs(t_loss - ref_loss), torch_f64.worst(t_scores, ref))}
    for dtype in ("float32", "bfloat16"):
        s = session if dtype == "float32" else runtime.load_session(path, dtype)
        loss = evaluate(s.params, s.config, windows, BATCH).loss
        res = importance.compute_importance(s.params, s.config, windows, "taylor", BATCH)
        flat = T.flatten(res.scores)
        out[f"jaxregion {dtype}"] = (
            abs(loss - ref_loss),
            torch_f64.worst({n: np.asarray(flat[n]) for n in names}, ref),
        )
    for k, (le, se) in out.items():
        print(f"{request.param} {k}: |loss - float64| {le:.3e}, taylor worst {se:.3e}")
    return out


def test_eval_loss_float32_within_2x_of_pytorch(measured):
    ours, torch32 = measured["jaxregion float32"][0], measured["torch float32"][0]
    assert ours <= 2 * torch32, (ours, torch32)


def test_taylor_float32_within_2x_of_pytorch(measured):
    ours, torch32 = measured["jaxregion float32"][1], measured["torch float32"][1]
    assert ours <= 2 * torch32, (ours, torch32)
