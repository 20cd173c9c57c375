"""Several devices and several processes, faked on CPU in subprocesses.

* sharded logits/loss/importance on 8 devices (FSDP x tensor x data) equal 1 device;
* the Llama-2-7B taylor importance step lowers and compiles on a 4x2 (fsdp x tensor) mesh;
* orbax checkpoints saved on a 2x2 mesh restore on 1x4 and 1x1;
* 2 processes x 2 devices (gloo) equal 1 process x 1 device for eval loss, taylor importance
  and 5 training steps with a frozen region, and no process reads or holds a full copy of a
  sharded tensor.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every case starts subprocesses

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("JAXREGION_COORDINATOR", "JAXREGION_NUM_PROCESSES", "JAXREGION_PROCESS_ID"):
        env.pop(k, None)
    return env


def _worker(devices: int, *args: str, timeout: int = 300) -> None:
    p = subprocess.run(
        [sys.executable, WORKER, *args],
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, p.stderr[-4000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    """A tiny GQA llama; intermediate 100 does not divide by 8 (replication fallback)."""
    from hf_factory import make_model, save_model

    d = str(tmp_path_factory.mktemp("mh_llama"))
    save_model(make_model("llama_gqa_llama3", intermediate_size=100), d)
    return d


def test_sharded_logits_equal_single_device(llama_dir, tmp_path):
    out = str(tmp_path / "res.json")
    _worker(8, "sharded", out, llama_dir)
    res = json.load(open(out))
    assert res["devices"] == 8
    assert set(res["meshes"]) == {"data=2,fsdp=2,tensor=2", "data=1,fsdp=1,tensor=8"}
    for spec, r in res["meshes"].items():
        assert r["logits_max_abs"] <= 1e-5, (spec, r)
        assert r["logits_scale"] > 0.1  # the comparison is not between zeros
        assert abs(r["loss"][0] - r["loss"][1]) <= 1e-5 * abs(r["loss"][0]), (spec, r)
        assert r["importance_max_rel"] <= 1e-5, (spec, r)
        assert r["shards_ok"] and r["importance_sharded_like_params"], (spec, r)
    # 2x2x2: every tensor divides; tensor=8: the mlp (100) falls back to replication on that
    # axis, so gate/up/down are not split 8 ways, but the run still works
    assert (
        res["meshes"]["data=2,fsdp=2,tensor=2"]["n_sharded"]
        == res["meshes"]["data=2,fsdp=2,tensor=2"]["n_params"]
    )
    r8 = res["meshes"]["data=1,fsdp=1,tensor=8"]
    assert r8["n_sharded"] < r8["n_params"]


@pytest.mark.slow
def test_llama2_7b_importance_step_compiles_on_4x2(tmp_path):
    out = str(tmp_path / "c.json")
    t0 = time.perf_counter()
    _worker(8, "compile7b", out, "1", timeout=400)
    res = json.load(open(out))
    print(
        f"7B importance step: lower {res['lower_s']:.1f}s, compile {res.get('compile_s')}s, "
        f"wall {time.perf_counter() - t0:.1f}s"
    )
    assert res["n_params"] == 6_738_415_616  # Llama-2-7B
    assert res["compiled"]
    assert res["out_shardings_match"]  # the accumulator keeps the params' FSDP x TP layout
    # bf16 params + f32 accumulator, split 8 ways: 6 bytes/param / 8 devices
    want = res["n_params"] * 6 / 8
    assert abs(res["argument_bytes_per_device"] - want) / want < 0.01


def test_checkpoint_restores_on_other_meshes(llama_dir, tmp_path):
    out = str(tmp_path / "r.json")
    _worker(4, "restore", out, llama_dir, str(tmp_path / "ckpt"))
    res = json.load(open(out))
    assert res["saved_specs_sharded"] > 0
    for name, ndev in (("1x4", 4), ("1x1", 1)):
        r = res[name]
        assert r["params_equal"] and r["opt_equal"], (name, r)
        assert r["shardings_are_targets"], (name, r)
        assert r["devices"] == [ndev]
        assert r["meta"] == {"mesh": "2x2"}


def _run_procs(n: int, devices: int, model: str, out_dir: str, mesh: str) -> list[dict]:
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "out.json")
    if n == 1:
        _worker(devices, "run", out, model, out_dir, mesh)
    else:
        coord = f"127.0.0.1:{_free_port()}"
        procs = [
            subprocess.Popen(
                [sys.executable, WORKER, "run", out, model, out_dir, mesh, coord, str(n), str(i)],
                env=_env(devices),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(n)
        ]
        try:
            logs = [p.communicate(timeout=300)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        for p, log in zip(procs, logs):
            assert p.returncode == 0, log[-4000:]
    return [json.load(open(f"{out}.{i}")) for i in range(n)]


def test_two_processes_equal_one(llama_dir, tmp_path):
    multi = _run_procs(2, 2, llama_dir, str(tmp_path / "mp"), "data=1,fsdp=2,tensor=2")
    single = _run_procs(1, 1, llama_dir, str(tmp_path / "sp"), "data=1")
    s = single[0]
    assert s["process_count"] == 1 and s["devices"] == 1
    for m in multi:
        assert m["process_count"] == 2 and m["devices"] == 4 and m["local_devices"] == 2
        # eval loss
        assert abs(m["loss"] - s["loss"]) <= 1e-5 * abs(s["loss"])
        # lazy sharded loading: no full copy of any sharded tensor, only its own bytes read
        assert m["sharded_tensors"] > 0 and m["full_copies"] == []
        assert m["full_reads"] == 0
        assert m["bytes_read"] < m["model_bytes"]
        assert m["bytes_read"] <= m["model_bytes"] // 2
        assert m["bytes_read_all"] == m["model_bytes"]  # together: each byte exactly once
        # training: 5 steps, frozen elements never move
        assert m["steps"] == s["steps"] == 5
        assert m["frozen_moved"] == 0
        assert m["metrics_lines"] == s["metrics_lines"] == len(s["train_losses"])  # one writer
        for a, b in zip(m["train_losses"], s["train_losses"]):
            assert abs(a - b) <= 1e-5 * abs(b)
    assert s["frozen_moved"] == 0
    # importance written by rank 0 from the gathered shards, and the final params
    for what in ("scores", "params"):
        a = np.load(str(tmp_path / "mp" / f"{what}.npz"))
        b = np.load(str(tmp_path / "sp" / f"{what}.npz"))
        assert set(a.files) == set(b.files)
        for k in b.files:
            err = float(np.max(np.abs(a[k] - b[k])))
            if what == "scores":  # the issue: importance within 1e-5 relative
                scale = float(np.max(np.abs(b[k])))
                assert err <= 1e-5 * scale, (what, k, err, scale)
            else:  # the issue: params within 1e-5. Adam's m/sqrt(v) is scale-free, so a
                # reduction-order rounding difference in a near-zero gradient moves an element
                # by O(lr) whatever its size: the bound is absolute, as the issue states it.
                assert err <= 1e-5, (what, k, err)
    from jaxregion.regions.files import load_scores

    got, meta = load_scores(str(tmp_path / "mp" / "taylor.safetensors"))
    ref = np.load(str(tmp_path / "mp" / "scores.npz"))
    from jaxregion.tree import flatten

    for k, v in flatten(got).items():
        np.testing.assert_array_equal(v, ref[k])
    assert meta["lang"] == "xx"
