"""A true float64 PyTorch reference for llama and gemma3 models.

``model.double()`` is not a float64 computation in transformers: RMSNorm (``.to(float32)``,
``x.float()``), the rotary angles (``.float()``) and eager attention's softmax
(``dtype=torch.float32``) still run in float32. A float32 run then shares those roundings
with the "float64" one, which makes PyTorch float32 look closer to float64 than it is and
any other float32 implementation further. :func:`float64` swaps those three pieces for
dtype-preserving ones (the same formulas) while a reference is computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from transformers.models.gemma3 import modeling_gemma3 as g3
from transformers.models.llama import modeling_llama as ll


def _llama_norm(self, x: torch.Tensor) -> torch.Tensor:
    var = x.pow(2).mean(-1, keepdim=True)
    return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))


def _gemma_norm(self, x: torch.Tensor) -> torch.Tensor:
    return self._norm(x) * (1.0 + self.weight)


def _angles(config, params: dict, position_ids: torch.Tensor) -> torch.Tensor:
    """RoPE angles in float64 from the config (default RoPE only: the models tested)."""
    assert params["rope_type"] == "default", params
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    inv = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].double() * inv
    return torch.cat((freqs, freqs), dim=-1)


def _llama_rope(self, x: torch.Tensor, position_ids: torch.Tensor):
    emb = _angles(self.config, self.config.rope_parameters, position_ids)
    s = self.attention_scaling
    return (emb.cos() * s).to(x.dtype), (emb.sin() * s).to(x.dtype)


def _gemma_rope(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type=None):
    emb = _angles(self.config, self.config.rope_parameters[layer_type], position_ids)
    s = getattr(self, f"{layer_type}_attention_scaling")
    return (emb.cos() * s).to(x.dtype), (emb.sin() * s).to(x.dtype)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
               softcap=None, **kwargs):  # fmt: skip
    scaling = module.head_dim**-0.5 if scaling is None else scaling
    k = ll.repeat_kv(key, module.num_key_value_groups)
    v = ll.repeat_kv(value, module.num_key_value_groups)
    w = torch.matmul(query, k.transpose(2, 3)) * scaling
    if softcap is not None:
        w = torch.tanh(w / softcap) * softcap
    if attention_mask is not None:
        w = w + attention_mask
    w = torch.softmax(w, dim=-1)
    return torch.matmul(w, v).transpose(1, 2).contiguous(), w


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """While inside, llama and gemma3 models compute every op in their own dtype."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ll.LlamaRMSNorm, "forward", _llama_norm)
        mp.setattr(ll.LlamaRotaryEmbedding, "forward", _llama_rope)
        mp.setattr(ll, "eager_attention_forward", _attention)
        mp.setattr(g3.Gemma3RMSNorm, "forward", _gemma_norm)
        mp.setattr(g3.Gemma3RotaryEmbedding, "forward", _gemma_rope)
        mp.setattr(g3, "eager_attention_forward", _attention)
        yield


def taylor(
    model: torch.nn.Module, windows: np.ndarray, batch: int, names: list[str] | None = None
) -> tuple[float, dict[str, np.ndarray]]:
    """(mean next-token NLL, {name: θ ⊙ ∇ mean NLL}) in the model's dtype, as float64: the
    summed NLL's gradient accumulated over batches of ``batch`` windows, divided by the
    token count at the end (what jaxregion's taylor estimator computes). Run inside
    :func:`float64` for the reference."""
    ids = torch.tensor(np.asarray(windows), dtype=torch.long)
    total = 0.0
    for i in range(0, len(ids), batch):
        x = ids[i : i + batch]
        logits = model(input_ids=x).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        nll.backward()
        total += float(nll)
    tokens = ids.shape[0] * (ids.shape[1] - 1)
    params = dict(model.named_parameters())
    scores = {
        n: (params[n].grad.double() / tokens * params[n].double()).detach().numpy()
        for n in (names if names is not None else params)
    }
    model.zero_grad(set_to_none=True)
    return total / tokens, scores


def worst(scores: dict, ref: dict[str, np.ndarray]) -> float:
    """Worst over tensors of max|a - ref| / max|ref| (the issue's measure)."""
    return max(
        float(np.abs(np.asarray(scores[n], np.float64) - ref[n]).max() / np.abs(ref[n]).max())
        for n in ref
    )
