"""Mixtures of experts: both checkpoint layouts, perplexity, export, the routing switches and
a dispatch whose cost follows top-k, not the number of experts."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import run_cli
from hf_factory import MOE, make_config, make_model
from safetensors.torch import save_file
from test_parity import SEQ, _torch_perplexity

from jaxregion.data.packing import load_windows
from jaxregion.data.sources import open_source
from jaxregion.io import hf
from jaxregion.models import abstract_params, apply, from_hf_dict

LAYOUTS = ("per_expert", "fused")


def _fused_checkpoint(family: str, path: str) -> str:
    """transformers' in-memory state dict (fused ``mlp.experts.gate_up_proj``/``down_proj``)
    written as is, beside its config.json."""
    model = make_model(family)
    os.makedirs(path, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in sd)
    save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(path)
    return path


def _checkpoint(family: str, layout: str, model_factory, tmp_path) -> str:
    if layout == "per_expert":
        path = model_factory(family)  # save_pretrained writes one tensor per expert
        names = json.dumps(sorted(hf.weight_files(path)))
        assert ".experts.0." in names and "gate_up_proj" not in names
        return path
    return _fused_checkpoint(family, str(tmp_path / f"{family}_fused"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", MOE)
def test_both_layouts_match_transformers(family, layout, model_factory, tmp_path):
    cfg, params = hf.load(_checkpoint(family, layout, model_factory, tmp_path))
    assert cfg.is_moe and params["model"]["layers"][0]["mlp"]["experts"]["gate_up_proj"].shape == (
        cfg.num_experts,
        2 * cfg.expert_intermediate_size,
        cfg.hidden_size,
    )
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (3, SEQ))
    ref = make_model(family)(torch.tensor(tokens)).logits.detach().numpy()
    out = np.asarray(apply(params, jnp.asarray(tokens), cfg))
    assert np.abs(out - ref).max() < 1e-4


@pytest.mark.parametrize("family", ["qwen2_moe", "qwen3_moe", "mixtral", "olmoe"])
def test_eval_perplexity_matches_torch(family, model_factory, corpus_dir, tokenizer, tmp_path):
    path = model_factory(family)
    text = f"{corpus_dir}/lat.txt"
    out = tmp_path / "eval.json"
    code, _, stderr = run_cli(
        "eval",
        "--model",
        path,
        "--text",
        f"lat={text}",
        "--seq-len",
        "32",
        "--max-seqs",
        "20",
        "--batch-size",
        "6",
        "--json",
        str(out),
    )
    assert code == 0, stderr
    got = json.loads(out.read_text())["perplexity"]["lat"]
    windows = load_windows(open_source(text).documents(), tokenizer, 32, 20)
    ref = _torch_perplexity(make_model(family), windows)
    assert abs(got - ref) / ref < 1e-5


def test_export_is_read_by_transformers(model_factory, tmp_path):
    """An exported MoE (fused expert names) loads in transformers with the same logits."""
    import transformers

    cfg, params = hf.load(model_factory("qwen2_moe"))
    hf.export(params, cfg, str(tmp_path / "out"))
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    tokens = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, SEQ))
    ref = back(torch.tensor(tokens)).logits.detach().numpy()
    assert np.abs(np.asarray(apply(params, jnp.asarray(tokens), cfg)) - ref).max() < 1e-4


def test_routing_switches_are_live(model_factory):
    """norm_topk_prob, clip_qkv and the shared expert change the logits, so the parity above
    tests them; dropping every expert but top-k changes them too."""
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 320, (1, SEQ)))
    for family, off in (
        ("qwen3_moe", dict(norm_topk_prob=False)),
        ("olmoe_clip", dict(extra=())),
        ("qwen2_moe", dict(dropped_experts=((0, 1), (1, 6)))),
    ):
        cfg, params = hf.load(model_factory(family))
        ref = np.asarray(apply(params, tokens, cfg))
        assert np.abs(np.asarray(apply(params, tokens, cfg.replace(**off))) - ref).max() > 1e-3


def _forward_flops(n_experts: int) -> float:
    d = make_config("mixtral", num_local_experts=n_experts, num_experts_per_tok=2).to_dict()
    cfg = from_hf_dict(d)
    tokens = jax.ShapeDtypeStruct((4, 64), jnp.int32)
    compiled = jax.jit(apply, static_argnums=2).lower(abstract_params(cfg), tokens, cfg).compile()
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_dispatch_cost_follows_top_k_not_experts():
    """XLA's FLOP count of the compiled forward: 8 -> 64 experts at top-2 grows < 1.5x (a
    dense dispatch, every expert on every token, would grow ~8x in the expert part)."""
    f8, f64 = _forward_flops(8), _forward_flops(64)
    assert f64 / f8 < 1.5, (f8, f64)


_SHARDED_TRAIN = r"""
import json, sys
import numpy as np
from jaxregion.io import hf
from jaxregion.parallel import sharding
from jaxregion.train import TrainConfig, train
from jaxregion.tree import flatten
path, ckpt, fsdp, tensor = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mesh = sharding.make_mesh(data=-1, fsdp=fsdp, tensor=tensor)
cfg, params = hf.load(path, sharding=sharding.placement(hf.load_config(path), mesh))
windows = {"xx": np.random.default_rng(0).integers(0, cfg.vocab_size, (16, 16)).astype(np.int32)}
res = train(params, cfg, windows, TrainConfig(steps=3, batch_size=4, seq_len=16, lr=1e-4,
            save_every=3, keep=1), ckpt, mesh=mesh, progress=False)
w = res.params["model"]["layers"][0]["mlp"]["experts"]["gate_up_proj"]
flat = {k: np.asarray(v).tolist() for k, v in flatten(res.params).items()}
print(json.dumps({"shard": list(w.addressable_shards[0].data.shape), "shape": list(w.shape),
                  "spec": str(w.sharding.spec), "params": flat}))
"""


def test_training_shards_experts_over_the_mesh(model_factory, tmp_path):
    """On fsdp=2 x tensor=2 the experts split over tensor (the expert axis) and the hidden
    size over fsdp; three AdamW steps give the params of one device within 1e-5. (lr 1e-4:
    Adam divides each gradient by its own magnitude, so the float32 reduction-order noise of
    near-zero expert gradients, which few tokens reach, moves a weight by up to ~lr/100;
    at lr 1e-3 that was 1.2e-5.)"""
    import subprocess
    import sys

    path = model_factory("qwen2_moe")
    out = {}
    for name, n, fsdp, tensor in (("one", 1, 1, 1), ("four", 4, 2, 2)):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        p = subprocess.run(
            [
                sys.executable,
                "-c",
                _SHARDED_TRAIN,
                path,
                str(tmp_path / name),
                str(fsdp),
                str(tensor),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = json.loads(p.stdout.strip().splitlines()[-1])
    four = out["four"]
    assert four["shape"] == [8, 64, 64] and four["shard"] == [4, 64, 32], four["spec"]
    for k, ref in out["one"]["params"].items():
        assert np.max(np.abs(np.asarray(four["params"][k]) - np.asarray(ref))) <= 1e-5, k


def _without_expert(cfg, params, layer_drop: dict[int, int]):
    """A config with one expert fewer and params with, per layer, that expert's router row
    and expert slices removed (``layer_drop``: layer -> expert; every layer must be listed)."""
    from jaxregion.tree import flatten, unflatten

    flat = dict(flatten(params))
    for i, e in layer_drop.items():
        for n in ("mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            k = f"model.layers.{i}.{n}"
            flat[k] = jnp.delete(flat[k], e, axis=0)
    return cfg.replace(num_experts=cfg.num_experts - 1), unflatten(flat)


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral", "olmoe"])
def test_drop_expert_equals_a_router_without_its_row(family, model_factory):
    """Dropping expert e renormalises the router over the rest: the logits equal those of a
    model whose router has row e (and whose experts have expert e) removed."""
    from jaxregion.models.moe import drop_experts

    cfg, params = hf.load(model_factory(family))
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, cfg.vocab_size, (2, SEQ)))
    drop = {0: 3, 1: 5}
    small_cfg, small = _without_expert(cfg, params, drop)
    dropped = drop_experts(cfg, drop.items())
    got = np.asarray(apply(params, tokens, dropped))
    want = np.asarray(apply(small, tokens, small_cfg))
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(got - np.asarray(apply(params, tokens, cfg))).max() > 1e-3


def test_drop_expert_bad_input(model_factory):
    from jaxregion.errors import UserError
    from jaxregion.models.moe import drop_experts

    cfg = hf.load_config(model_factory("mixtral"))
    dense = hf.load_config(model_factory("llama_mha"))
    for c, pairs, what in (
        (dense, [(0, 0)], "dense"),
        (cfg, [(0, 8)], "out of range"),
        (cfg, [(2, 0)], "out of range"),
        (cfg, [(1, e) for e in range(7)], "fewer than its top-2"),
    ):
        with pytest.raises(UserError, match=what) as e:
            drop_experts(c, pairs)
        assert "\n" not in str(e.value)


def test_frozen_experts_stay_bitwise_through_adamw(model_factory):
    """Freezing whole experts (their slices of the fused tensors and their router rows, as
    an element mask) keeps them bitwise fixed through AdamW with weight decay, while the
    other experts train."""
    import optax

    from jaxregion import freeze
    from jaxregion.models import loss_fn
    from jaxregion.tree import flatten, map_named

    cfg, params = hf.load(model_factory("qwen3_moe"))
    frozen = {0: [1, 6], 1: [2]}

    def mask_of(name, x):
        m = np.zeros(x.shape, bool)
        for i, es in frozen.items():
            for n in ("mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
                if name == f"model.layers.{i}.{n}":
                    m[es] = True
        return jnp.asarray(m)

    mask = map_named(mask_of, params)
    tx = freeze.adamw_with_freeze(1e-2, weight_decay=0.1, clip=1.0, mask=mask)
    state = tx.init(params)
    rng = np.random.default_rng(0)

    @jax.jit
    def step(p, s, tokens):
        g = jax.grad(loss_fn)(p, tokens, cfg)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    new = params
    for _ in range(5):
        new, state = step(new, state, jnp.asarray(rng.integers(0, cfg.vocab_size, (4, 16))))
    for n, p0 in flatten(params).items():
        m, p1 = np.asarray(flatten(mask)[n]), np.asarray(flatten(new)[n])
        p0 = np.asarray(p0)
        np.testing.assert_array_equal(p1.view(np.uint32)[m], p0.view(np.uint32)[m], err_msg=n)
        if m.any():
            assert (p1[~m] != p0[~m]).mean() > 0.99, n  # the other experts move


def test_eval_drop_expert_cli(model_factory, corpus_dir, tmp_path):
    """``eval --region-op drop-expert`` with an expert region equals drop-expert:L.E naming
    the same experts, and differs from the unedited model; bad input is one line, exit 2."""
    from jaxregion import regions as R

    path = model_factory("olmoe")
    cfg = hf.load_config(path)
    shares = np.full((2, 8), 0.1)
    shares[0, 2] = shares[1, 7] = 1.0
    region = R.experts_by_routing("core", abstract_params(cfg), {"aa": shares}, 1 / 8, "per-layer")
    rfile = str(tmp_path / "experts.safetensors")
    R.save_region(rfile, region)
    text = f"lat={corpus_dir}/lat.txt"
    base = ["eval", "--model", path, "--text", text, "--seq-len", "32", "--max-seqs", "4"]

    def ppl(*args: str) -> float:
        out = tmp_path / f"e{len(list(tmp_path.iterdir()))}.json"
        code, _, err = run_cli(*base, *args, "--json", str(out))
        assert code == 0, err
        return json.loads(out.read_text())["perplexity"]["lat"]

    plain = ppl()
    by_region = ppl("--region", rfile, "--region-op", "drop-expert")
    by_name = ppl("--region-op", "drop-expert:0.2,1.7")
    assert by_region == by_name and abs(by_region - plain) > 1e-4 * plain
    dense = model_factory("llama_mha")
    partial = str(tmp_path / "partial.safetensors")
    R.save_region(partial, R.random(abstract_params(cfg), ratio=0.3, seed=0))
    for args, what in (
        (["--region-op", "drop-expert:0.8"], "out of range"),
        (["--region-op", "drop-expert:x"], "LAYER.EXPERT"),
        (["--region-op", "drop-expert"], "no expert to drop"),
        (["--region", partial, "--region-op", "drop-expert"], "whole experts"),
    ):
        code, _, err = run_cli(*base, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and what in err, err
    code, _, err = run_cli(
        "eval",
        "--model",
        dense,
        "--text",
        text,
        "--seq-len",
        "32",
        "--max-seqs",
        "4",
        "--region-op",
        "drop-expert:0.1",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "dense" in err, err


def test_battery_on_moe(model_factory, corpus_dir, tmp_path):
    """``jaxregion experiment`` on an MoE adds its section: routing heatmaps, the most
    language-specific experts, top-expert vs random-expert ablations, the core's parts."""
    from test_families import _small_battery

    _small_battery("qwen2_moe", model_factory, corpus_dir, tmp_path)
    out = tmp_path / "exp"
    m = json.loads((out / "results.json").read_text())["moe"]
    assert m["per_layer"] == 1 and set(m["perplexity"]) == {
        "base",
        "top-lat",
        "random-lat",
        "top-cyr",
        "random-cyr",
    }
    for lang in ("lat", "cyr"):
        share = np.asarray(m["routing"]["topk_share"][lang])
        assert [[i, int(np.argmax(row))] for i, row in enumerate(share)] == m["dropped"][
            f"top-{lang}"
        ]
        assert m["perplexity"][f"top-{lang}"] != m["perplexity"]["base"]
        assert (out / f"routing_{lang}.png").stat().st_size > 1000
    assert set(m["core_share"]) == {"experts", "routers", "attention and dense MLPs", "norms"}
    assert abs(sum(m["core_share"].values()) - 1.0) < 1e-9 and m["core_share"]["experts"] > 0
    report = (out / "report.md").read_text()
    assert "Mixture of experts" in report and "routing_lat.png" in report
