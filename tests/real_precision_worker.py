"""``python tests/real_precision_worker.py MODEL_DIR TEXT``: one real model's float32 and
bfloat16 errors against a true float64 PyTorch reference, printed as one JSON line
``{run: [|mean loss - float64|, taylor worst tensor error]}``.

Run in its own process by ``tests/test_real_precision.py``: Gemma 3 270M with a float64
PyTorch model and a 262,144-entry head needs ~8 GB, which should not stay with pytest."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch_f64
import transformers

from jaxregion import importance, models, runtime
from jaxregion import tree as T
from jaxregion.evaluate import evaluate
from jaxregion.regions import scope_names

N, SEQ, BATCH = 8, 128, 2


def torch_run(path: str, windows: np.ndarray, dtype, names: list[str]) -> tuple[float, dict]:
    """(mean NLL, {name: θ ⊙ ∇L}) with PyTorch in ``dtype``, as float64."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return torch_f64.taylor(model.to(dtype), windows, BATCH, names)


def measure(path: str, text: str) -> dict[str, list[float]]:
    session = runtime.load_session(path)
    windows = runtime.load_corpora({"de": text}, session, SEQ, N)["de"]
    names = scope_names(list(T.flatten(session.params)), roles=models.roles(session.config))
    with torch_f64.float64():
        ref_loss, ref = torch_run(path, windows, torch.float64, names)
    t_loss, t_scores = torch_run(path, windows, torch.float32, names)
    out = {"torch float32": [abs(t_loss - ref_loss), torch_f64.worst(t_scores, ref)]}
    runs = (("float32", False), ("float32", True), ("bfloat16", True))
    for dtype, remat in runs:  # remat: layer by layer, what `jaxregion importance` runs
        s = session if dtype == "float32" else runtime.load_session(path, dtype)
        loss = evaluate(s.params, s.config, windows, BATCH).loss
        res = importance.compute_importance(
            s.params, s.config, windows, "taylor", BATCH, remat=remat, scope=names
        )
        flat = T.flatten(res.scores)
        err = torch_f64.worst({n: np.asarray(flat[n]) for n in names}, ref)
        out[f"jaxregion {dtype}" + (" layerwise" if remat else "")] = [abs(loss - ref_loss), err]
    return out


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2])))
