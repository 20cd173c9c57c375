"""Mesh configs, sharding rules (with divisibility fallback), tree shardings, the plan."""

from __future__ import annotations

import json
import types

import jax
import numpy as np
import pytest
from conftest import run_cli, run_cli_subprocess
from jax.sharding import PartitionSpec as P

from jaxregion import regions
from jaxregion.errors import UserError
from jaxregion.models import spec as mspec
from jaxregion.models.config import from_hf_dict
from jaxregion.parallel import distributed, plan, sharding


def _mesh(**sizes):
    return types.SimpleNamespace(shape={"data": 1, "fsdp": 1, "tensor": 1, **sizes})


def _cfg(**kw):
    d = dict(
        model_type="llama",
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    d.update(kw)
    return from_hf_dict(d)


def test_mesh_config_parse_yaml_and_errors(tmp_path):
    assert sharding.MeshConfig.parse("data=1,fsdp=4,tensor=2") == sharding.MeshConfig(1, 4, 2)
    assert sharding.MeshConfig.parse("fsdp=4") == sharding.MeshConfig(-1, 4, 1)
    assert sharding.MeshConfig.parse("fsdp=-1,tensor=2") == sharding.MeshConfig(1, -1, 2)
    assert sharding.MeshConfig(-1, 2, 2).resolve(8) == {"data": 2, "fsdp": 2, "tensor": 2}
    p = tmp_path / "mesh.yaml"
    p.write_text("mesh: {data: 1, fsdp: 2, tensor: 4}\n")
    assert sharding.load_mesh_config(str(p)) == sharding.MeshConfig(1, 2, 4)
    assert sharding.MeshConfig.parse(str(p)) == sharding.MeshConfig(1, 2, 4)
    for bad in ("data=x", "fsdp", "pipeline=2", "data=-1,fsdp=-1", "tensor=0"):
        with pytest.raises(UserError):
            sharding.MeshConfig.parse(bad)
    with pytest.raises(UserError):
        sharding.MeshConfig(1, 3, 1).resolve(8)
    with pytest.raises(UserError):
        sharding.MeshConfig(-1, 3, 1).resolve(8)
    with pytest.raises(dataclasses_frozen()):
        sharding.MeshConfig().data = 2  # type: ignore[misc]


def dataclasses_frozen():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_shipped_mesh_configs_load():
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    files = sorted(glob.glob(os.path.join(root, "mesh_*.yaml")))
    assert files
    for f in files:
        sharding.load_mesh_config(f)


def test_rules_fsdp_over_embed_tensor_over_heads_and_mlp():
    cfg = _cfg()
    specs = sharding.param_specs(cfg, _mesh(fsdp=4, tensor=2))
    assert specs["model.embed_tokens.weight"] == P("tensor", "fsdp")
    assert specs["model.layers.0.self_attn.q_proj.weight"] == P("tensor", "fsdp")
    assert specs["model.layers.0.self_attn.k_proj.weight"] == P("tensor", "fsdp")
    assert specs["model.layers.0.self_attn.o_proj.weight"] == P("fsdp", "tensor")
    assert specs["model.layers.1.mlp.down_proj.weight"] == P("fsdp", "tensor")
    assert specs["model.layers.1.mlp.up_proj.weight"] == P("tensor", "fsdp")
    assert specs["model.norm.weight"] == P("fsdp")
    assert specs["lm_head.weight"] == P("tensor", "fsdp")
    # pure data parallelism: everything replicated
    assert set(sharding.param_specs(cfg, _mesh(data=8)).values()) == {P()}


def test_divisibility_fallback_is_per_dimension():
    # kv = 2 heads * 16 = 32 dims; tensor=64 does not divide: replicated on that dimension
    cfg = _cfg()
    specs = sharding.param_specs(cfg, _mesh(fsdp=2, tensor=64))
    assert specs["model.layers.0.self_attn.k_proj.weight"] == P(None, "fsdp")
    assert specs["model.layers.0.self_attn.q_proj.weight"] == P("tensor", "fsdp")  # 64 divides
    assert specs["model.layers.0.mlp.gate_proj.weight"] == P(None, "fsdp")  # 96 % 64
    # vocab 321 is odd: embedding split only over fsdp
    specs = sharding.param_specs(_cfg(vocab_size=321), _mesh(fsdp=2, tensor=2))
    assert specs["model.embed_tokens.weight"] == P(None, "fsdp")
    # a mesh axis is used at most once per tensor (GPT-2 positions: pos -> replicated)
    g = from_hf_dict(
        dict(model_type="gpt2", vocab_size=320, n_embd=64, n_layer=1, n_head=4, n_positions=128)
    )
    gs = sharding.param_specs(g, _mesh(fsdp=2, tensor=2))
    assert gs["transformer.wpe.weight"] == P(None, "fsdp")
    assert gs["transformer.h.0.attn.c_attn.weight"] == P("fsdp", "tensor")
    for axes_spec in gs.values():
        named = [a for a in axes_spec if a is not None]
        assert len(named) == len(set(named))


def test_param_shardings_tree_matches_params_and_optimizer_state():
    import optax

    cfg = _cfg()
    mesh = sharding.make_mesh()
    sh = sharding.param_shardings(cfg, mesh)
    params = mspec.abstract_params(cfg)
    assert jax.tree.structure(sh) == jax.tree.structure(params)
    assert sharding.make_mesh().axis_names == sharding.AXES
    opt = jax.eval_shape(optax.adamw(1e-3).init, params)
    osh = sharding.shardings_like(opt, sh)
    assert jax.tree.structure(osh) == jax.tree.structure(opt)
    # applying it places real state: zeros like the moments, replicated counts
    placed = jax.jit(optax.adamw(1e-3).init, out_shardings=osh)(
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params)
    )
    assert jax.tree.structure(placed) == jax.tree.structure(opt)
    # a name that is a param's suffix picks up that param's sharding
    fake = {"mu": {"model": {"norm": {"weight": np.zeros(64)}}}, "count": np.zeros(())}
    out = sharding.shardings_like(fake, sh)
    assert out["mu"]["model"]["norm"]["weight"] is sh["model"]["norm"]["weight"]


def test_abstract_sharded_carries_shardings():
    cfg = _cfg()
    mesh = sharding.make_mesh()
    ab = sharding.abstract_sharded(cfg, mesh)
    leaves = jax.tree.leaves(ab)
    assert all(isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None for x in leaves)
    assert {
        n: x.shape
        for n, x in __import__("jaxregion.tree", fromlist=["flatten"]).flatten(ab).items()
    } == mspec.shapes(cfg)


def test_batches_single_process():
    mesh = sharding.make_mesh()
    b = np.arange(12).reshape(4, 3)
    assert sharding.process_rows(4, mesh) == slice(0, 4)
    np.testing.assert_array_equal(sharding.process_slice(b, mesh), b)
    x = sharding.put_batch(b, mesh)
    np.testing.assert_array_equal(np.asarray(x), b)
    assert x.sharding == sharding.batch_sharding(mesh)


def test_distributed_single_process_helpers(tmp_path, monkeypatch):
    for k in (
        distributed.ENV_COORDINATOR,
        distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID,
        "SLURM_JOB_ID",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(distributed, "_STATE", None)
    info = distributed.initialize()
    assert (info.process_index, info.process_count, info.how) == (0, 1, "single")
    assert distributed.is_main()
    monkeypatch.setattr(distributed, "_STATE", None)
    with pytest.raises(UserError, match="--num-processes"):
        distributed.initialize("localhost:1234")
    monkeypatch.setattr(distributed, "_STATE", None)
    with pytest.raises(UserError, match="HOST:PORT"):
        distributed.initialize("localhost", 2, 0)
    monkeypatch.setattr(distributed, "_STATE", None)
    with pytest.raises(UserError, match="process-id"):
        distributed.initialize("localhost:1", 2, 5)
    monkeypatch.setattr(distributed, "_STATE", None)
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(UserError, match="not an integer"):
        distributed.initialize()
    monkeypatch.setattr(distributed, "_STATE", None)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert distributed.detect_cluster() == "slurm"
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "a,b,c,d")
    assert distributed.detect_cluster() == "tpu"
    # a one-process write: gathered tree written once
    from jaxregion.regions.files import load_scores

    tree = {"a": {"weight": jax.numpy.ones((3, 2))}}
    regions.save_scores(str(tmp_path / "s.safetensors"), tree, {"lang": "xx"})
    got, meta = load_scores(str(tmp_path / "s.safetensors"))
    np.testing.assert_array_equal(got["a"]["weight"], np.ones((3, 2), np.float32))


def test_plan_llama2_7b_numbers():
    cfg = plan.preset_config("llama2-7b")
    mesh = {"data": 1, "fsdp": 4, "tensor": 2}
    total, per_dev, replicated = plan.sharded_elements(cfg, mesh)
    # matrices split 8 ways; the 65 norm vectors (4096) only over fsdp (4 ways)
    norms = (2 * 32 + 1) * 4096
    assert total == 6_738_415_616 and replicated == []
    assert per_dev == (total - norms) // 8 + norms // 4
    # importance's accumulators cover the scored :layers scope only, and one layer's
    # gradient is live at a time (the donated accumulator absorbs each as it is formed)
    scored = plan.sharded_elements(cfg, mesh, layers_only=True)[1]
    assert scored == per_dev - 2 * 32000 * 4096 // 8 - 4096 // 4  # no embed, head, final norm
    assert plan.largest_layer(cfg, mesh) * 32 == scored
    for task, bpp in (("eval", 2), ("importance", 10 + 2 / 32), ("train", 18)):
        p = plan.make_plan(cfg, mesh, task, seq_len=4096, batch_size=8)
        assert sum(b for _, b, _ in p.lines) == bpp
        assert p.state_bytes == (
            2 * per_dev + 8 * scored + 2 * scored // 32 if task == "importance" else bpp * per_dev
        )
        assert p.activations > 0 and p.activations_remat <= p.activations
    p = plan.make_plan(cfg, mesh, "train", freeze=True)
    assert sum(b for _, b, _ in p.lines) == 19
    # 70B with GQA: 8 kv heads * 128 = 1024 dims do not split 2048 ways; still counted
    c70 = plan.preset_config("llama2-70b")
    t70, per70, rep70 = plan.sharded_elements(c70, {"data": 1, "fsdp": 1, "tensor": 2048})
    assert 68e9 < t70 < 70e9
    assert any("k_proj" in n for n in rep70) and per70 > t70 // 2048
    for p13 in ("llama2-13b",):
        assert 12.9e9 < plan.sharded_elements(plan.preset_config(p13), mesh)[0] < 13.1e9


def test_plan_cli(tmp_path, model_factory):
    out = str(tmp_path / "plan.json")
    code, stdout, stderr = run_cli(
        "plan",
        "--preset",
        "llama2-7b",
        "--mesh",
        "data=1,fsdp=4,tensor=2",
        "--task",
        "train",
        "--seq-len",
        "1024",
        "--batch-size",
        "8",
        "--json",
        out,
    )
    assert code == 0, stderr
    assert "6.74B parameters" in stdout and "Adam m, v" in stdout
    d = json.load(open(out))
    assert d["devices"] == 8 and d["bytes_per_param"]["Adam m, v (float32)"] == 8
    code, stdout, stderr = run_cli(
        "plan",
        "--model",
        model_factory("llama_mha"),
        "--mesh",
        "data=2,fsdp=-1",
        "--devices",
        "8",
        "--task",
        "eval",
    )
    assert code == 0, stderr
    assert "mesh data=2,fsdp=4,tensor=1" in stdout
    code, _, stderr = run_cli("plan", "--preset", "gpt5", "--mesh", "fsdp=2,data=1")
    assert code == 2 and "unknown" in stderr
    # multi-host start-up is once per process: a fresh one
    code, _, stderr = run_cli_subprocess(
        "eval", "--model", "x", "--text", "a=b", "--coordinator", "localhost:1"
    )
    assert code == 2 and "--num-processes" in stderr


_FSDP_TRAIN = r"""
import json, sys
import jax, numpy as np
from jaxregion.io import hf
from jaxregion.parallel import sharding
from jaxregion.train import TrainConfig, train
from jaxregion.tree import flatten
path, ckpt, fsdp, tensor = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mesh = sharding.make_mesh(data=-1, fsdp=fsdp, tensor=tensor)
cfg, params = hf.load(path, sharding=sharding.placement(hf.load_config(path), mesh))
windows = {"xx": np.random.default_rng(0).integers(0, cfg.vocab_size, (16, 16)).astype(np.int32)}
res = train(params, cfg, windows, TrainConfig(steps=3, batch_size=4, seq_len=16, lr=1e-3,
            save_every=3, keep=1), ckpt, mesh=mesh, progress=False)
w = res.params["model"]["layers"][0]["mlp"]["up_proj"]["weight"]
flat = {k: np.asarray(v).tolist() for k, v in flatten(res.params).items()}
print(json.dumps({"shard": list(w.addressable_shards[0].data.shape), "shape": list(w.shape),
                  "spec": str(w.sharding.spec), "params": flat}))
"""


@pytest.mark.slow
def test_training_shards_params_over_fsdp_and_tensor(model_factory, tmp_path):
    """Training on fsdp=2 x tensor=2 keeps params split (no full copy per device) and gives the
    same params as one device within 1e-5."""
    import os
    import subprocess
    import sys

    path = model_factory("llama_mha")
    out = {}
    for name, n, fsdp, tensor in (("one", 1, 1, 1), ("four", 4, 2, 2)):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        p = subprocess.run(
            [sys.executable, "-c", _FSDP_TRAIN, path, str(tmp_path / name), str(fsdp), str(tensor)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = json.loads(p.stdout.strip().splitlines()[-1])
    four = out["four"]
    assert four["shape"] == [96, 64] and four["shard"] == [48, 32], four["spec"]
    for k, ref in out["one"]["params"].items():
        assert np.max(np.abs(np.asarray(four["params"][k]) - np.asarray(ref))) <= 1e-5, k
