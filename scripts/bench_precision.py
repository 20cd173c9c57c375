"""Evaluation-loss error against float64 on real models: PyTorch float32 and jaxregion.

``torch MODEL_DIR LANG OUT.npz``: packs 8 windows x 128 tokens of ``LANG.valid.txt`` (the
packing contract, through jaxregion) and stores the per-token NLL of PyTorch in float32, in
``model.double()`` (which keeps RMSNorm, RoPE angles and the attention softmax in float32)
and in a true float64 (``tests/torch_f64.py``).
``jax OUT.npz [DTYPE]``: jaxregion's loss (``evaluate``) on the stored windows, from whichever
jaxregion tree is on ``PYTHONPATH``; prints every error against the true float64 mean.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

CORPORA = os.environ.get("JAXREGION_CORPORA", "/work/shared/corpora/text")
N, SEQ, BATCH = 8, 128, 2


def torch_nll(path: str, windows: np.ndarray, dtype, exact: bool) -> np.ndarray:
    """Per-token NLL ``[n, seq-1]`` (float64) from transformers in ``dtype``."""
    import torch
    import transformers
    from safetensors.torch import load_file

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import torch_f64

    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("quantization_config", None)
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**cfg), attn_implementation="eager"
    )
    model.load_state_dict(load_file(os.path.join(path, "model.safetensors")), strict=False)
    model.tie_weights()
    model = model.to(dtype)
    out = []
    with torch.no_grad(), torch_f64.float64() if exact else _null():
        for i in range(0, len(windows), BATCH):
            x = torch.tensor(windows[i : i + BATCH], dtype=torch.long)
            logits = model(input_ids=x).logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
            )
            out.append(nll.reshape(x.shape[0], -1).double().numpy())
    return np.concatenate(out)


def _null():
    import contextlib

    return contextlib.nullcontext()


def main_torch(path: str, lang: str, out: str) -> None:
    import torch

    from jaxregion import runtime

    session = runtime.load_session(path)
    text = os.path.join(CORPORA, f"{lang}.valid.txt")
    windows = runtime.load_corpora({lang: text}, session, SEQ, N)[lang]
    del session
    res = {
        "windows": windows,
        "f64": torch_nll(path, windows, torch.float64, True),
        "f64_stock": torch_nll(path, windows, torch.float64, False),
        "f32": torch_nll(path, windows, torch.float32, False),
    }
    np.savez(out, **res)
    ref = res["f64"].mean()
    for k in ("f64_stock", "f32"):
        print(f"{path} {lang} torch {k}: |loss - f64| {abs(res[k].mean() - ref):.3e}")
    t32 = res["f32"].astype(np.float32)
    print(f"torch f32 via F.cross_entropy float32 mean: {abs(float(t32.mean()) - ref):.3e}")


def main_jax(npz: str, dtype: str = "float32", path: str | None = None) -> None:
    from jaxregion import runtime
    from jaxregion.evaluate import evaluate

    d = np.load(npz)
    path = path or os.environ["MODEL"]
    s = runtime.load_session(path, dtype, with_tokenizer=False)
    loss = evaluate(s.params, s.config, d["windows"], BATCH).loss
    ref = d["f64"].mean()
    print(
        f"{npz} jaxregion {dtype}: |loss - f64| {abs(loss - ref):.3e}; "
        f"torch f32 {abs(d['f32'].mean() - ref):.3e}; "
        f"vs model.double() {abs(loss - d['f64_stock'].mean()):.3e}"
    )


def torch_taylor(path: str, windows: np.ndarray, dtype, exact: bool, batch: int) -> dict:
    """θ ⊙ (Σ_batches ∇ Σ NLL) / T per tensor (float64 numpy) and the mean NLL."""
    import torch
    import transformers

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import torch_f64

    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").to(
        dtype
    )
    ids = torch.tensor(windows, dtype=torch.long)
    total = 0.0
    with torch_f64.float64() if exact else _null():
        for i in range(0, len(ids), batch):
            x = ids[i : i + batch]
            logits = model(input_ids=x).logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
            nll.backward()
            total += float(nll)
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    out = {
        n: (p.grad.double() / tokens * p.double()).detach().numpy()
        for n, p in model.named_parameters()
    }
    out["__loss__"] = np.asarray(total / tokens)
    return out


def main_torch_taylor(path: str, n: str, out: str, batch: str = "16") -> None:
    import torch

    windows = np.load(os.path.join(path, "windows_zh.npy"))[: int(n)]
    res = {}
    for key, dtype, exact in (
        ("f64", torch.float64, True),
        ("f64_stock", torch.float64, False),
        ("f32", torch.float32, False),
    ):
        for name, v in torch_taylor(path, windows, dtype, exact, int(batch)).items():
            res[f"{key}/{name}"] = v
    np.savez(out, windows=windows, **res)
    report(out, {})


def errors(scores: dict, ref: dict) -> dict:
    """Per tensor: max|a - ref| / max|ref| (the issue's measure)."""
    return {
        n: float(np.abs(np.asarray(scores[n], np.float64) - ref[n]).max() / np.abs(ref[n]).max())
        for n in ref
    }


def report(npz: str, jax_scores: dict) -> None:
    d = np.load(npz)
    runs = {}
    for key in ("f64", "f64_stock", "f32"):
        runs[key] = {k.split("/", 1)[1]: d[k] for k in d.files if k.startswith(key + "/")}
    loss = {k: float(v.pop("__loss__")) for k, v in runs.items()}
    print(f"mean loss f64 {loss['f64']:.6f}; torch f32 |err| {abs(loss['f32'] - loss['f64']):.3e}")
    cols = {"torch f32": runs["f32"], "model.double()": runs["f64_stock"], **jax_scores}
    table = {c: errors(v, runs["f64"]) for c, v in cols.items()}
    print("tensor".ljust(44) + "".join(c.rjust(16) for c in table))
    for name in runs["f64"]:
        print(name.ljust(44) + "".join(f"{table[c][name]:16.3e}" for c in table))
    print("WORST".ljust(44) + "".join(f"{max(t.values()):16.3e}" for t in table.values()))
    for c, v in cols.items():
        e = errors(v, runs["f64_stock"])
        print(f"{c} vs model.double(): worst {max(e.values()):.3e}")


def main_jax_taylor(npz: str, path: str, batch: str = "16", dtype: str = "float32") -> None:
    from jaxregion import importance, runtime
    from jaxregion import tree as T

    windows = np.load(npz)["windows"].astype(np.int32)
    s = runtime.load_session(path, dtype, with_tokenizer=False)
    res = importance.compute_importance(s.params, s.config, windows, "taylor", int(batch))
    flat = {n: np.asarray(v, np.float64) for n, v in T.flatten(res.scores).items()}
    report(npz, {f"jaxregion {dtype}": flat})


if __name__ == "__main__":
    mode = sys.argv[1]
    fn = {
        "torch": main_torch,
        "jax": main_jax,
        "torch-taylor": main_torch_taylor,
        "jax-taylor": main_jax_taylor,
    }[mode]
    fn(*sys.argv[2:])
