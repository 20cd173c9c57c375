"""Float32 evaluation loss and taylor scores on the real models, against float64 PyTorch.

jaxregion's float32 error must be within 2x of PyTorch float32's on the same windows
(German text, 8 windows x 128 tokens, batch 2). The bfloat16 errors are printed next to
them (``-s``) for the record; they are not held to PyTorch's float32. Taylor scores are
measured both ways jaxregion computes them: one autodiff program, and layer by layer. The
float64 reference is a true one (``tests/torch_f64.py``: ``model.double()`` alone keeps
RMSNorm, RoPE angles and the attention softmax in float32).

The models are the real tier's GGUF files (``gemma3_gguf``, ``smollm2_gguf``), written once
as float32 HF directories by ``jaxregion convert`` into pytest's cache; the text is the
real-text corpus (``$JAXREGION_CORPORA``, default ``/work/shared/corpora/text``), skipped
when absent. Each model is measured in its own process (``tests/real_precision_worker.py``):
Gemma 3 270M needs ~8 GB with the float64 reference.
"""

from __future__ import annotations

import os

import pytest
from conftest import run_worker

from jaxregion.io import gguf_import

pytestmark = [pytest.mark.real, pytest.mark.slow]

TEXT = os.path.join(
    os.environ.get("JAXREGION_CORPORA", "/work/shared/corpora/text"), "de.valid.txt"
)


def _hf_dir(gguf: str, cache) -> str:
    """The GGUF file as a float32 HF directory, converted once (convert is atomic)."""
    out = str(cache / (os.path.basename(gguf) + ".f32-hf"))
    if not os.path.isdir(out):
        gguf_import.convert(gguf, out, "float32")
    return out


@pytest.fixture(scope="module", params=["gemma3_gguf", "smollm2_gguf"])
def measured(request, real_cache) -> dict[str, list[float]]:
    pytest.importorskip("torch")
    if not os.path.isfile(TEXT):
        pytest.skip(f"{TEXT} is absent")
    path = _hf_dir(request.getfixturevalue(request.param), real_cache)
    out = run_worker("real_precision_worker.py", path, TEXT, timeout=1800)
    for k, (le, se) in out.items():
        print(f"{request.param} {k}: |loss - float64| {le:.3e}, taylor worst {se:.3e}")
    return out


def test_eval_loss_float32_within_2x_of_pytorch(measured):
    ours, torch32 = measured["jaxregion float32"][0], measured["torch float32"][0]
    assert ours <= 2 * torch32, (ours, torch32)


@pytest.mark.parametrize("run", ["jaxregion float32", "jaxregion float32 layerwise"])
def test_taylor_float32_within_2x_of_pytorch(measured, run):
    """Both steps: one autodiff program, and layer by layer (the command's default)."""
    ours, torch32 = measured[run][1], measured["torch float32"][1]
    assert ours <= 2 * torch32, (ours, torch32)
