"""Issue 23: never lose a file, never report a stale or wrong number, bounded waits.

The command-line cases that fit the bad-input matrix live in test_bad_inputs.py (CASES23);
these are the ones that need their own set-up: a private HOME, a full disk, a region's
stability at its granularity, the library API, and a corpus changed in place.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from conftest import run_cli
from treesnap import diff, snapshot

from jaxregion.errors import UserError


def _one_line(code: int, err: str, must: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert must in lines[0], lines[0]


# --- no file outside the declared outputs ---------------------------------------------------
def test_tasks_writes_nothing_outside_its_outputs(model_factory, tmp_path):
    """lm-eval's datasets cache goes under $JAXREGION_CACHE (documented), never $HOME."""
    from test_lm_eval import write_tasks

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_tasks(tasks)
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    before = snapshot(str(tmp_path), str(out))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env.update(HOME=str(home), PYTHONPATH=os.getcwd(), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    env.pop("JAXREGION_CACHE", None)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxregion.cli.main",
            "tasks",
            "--model",
            model_factory("llama_mha"),
            "--tasks",
            "jr_mc",
            "--include-path",
            str(tasks),
            "--limit",
            "2",
            "--json",
            str(out / "r.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    after = snapshot(str(tmp_path), str(out))
    assert after == before, diff(before, after)[:8]
    assert os.path.isfile(out / "r.json")


# --- bounded waits --------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["http://10.255.255.1", "http://no-such-host.invalid"])
def test_offline_hub_source_fails_within_5_s(endpoint, model_factory, capsys, monkeypatch):
    """An unreachable hub (packets dropped, or no DNS answer): the hf: source fails in
    <= 5 s (the model is loaded and jax started first: only the source's wait counts)."""
    from jaxregion.cli.main import main
    from jaxregion.io import hub
    from jaxregion.parallel import distributed

    distributed.shutdown()
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hub, "_checked", None)  # probe afresh
    import datasets  # noqa: F401  (its import time is not the wait being measured)

    assert (
        main(
            [
                "eval",
                "--model",
                model_factory("llama_mha"),
                "--text",
                f"lat={os.devnull}",
                "--seq-len",
                "16",
            ]
        )
        == 2
    )  # jax started, model read
    capsys.readouterr()
    t0 = time.monotonic()
    code = main(
        [
            "eval",
            "--model",
            model_factory("llama_mha"),
            "--text",
            "lat=hf:nobody-here/no-such-data:train",
            "--seq-len",
            "16",
        ]
    )
    took = time.monotonic() - t0
    _one_line(code, capsys.readouterr().err, "nobody-here")
    assert took <= 5.0, f"took {took:.1f} s"


@pytest.mark.slow
def test_full_disk_is_one_line(model_factory, corpus_dir, tmp_path):
    """``train`` with its checkpoint directory on a 2 MB file system: one line, exit 2."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root to mount a 2 MB tmpfs")
    try:
        code, _, err = run_cli(
            "train",
            "--model",
            model_factory("llama_mha"),
            "--text",
            f"lat={corpus_dir}/lat.txt",
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--seq-len",
            "16",
            "--max-seqs",
            "8",
            "--save-every",
            "2",
            "--ckpt-dir",
            str(mnt / "ck"),
            "--export",
            str(mnt / "hf"),
            "--no-progress",
        )
        _one_line(code, err, "space left on device")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# --- regions say what they are --------------------------------------------------------------
@pytest.mark.slow
def test_stability_is_that_of_the_region_built(model_factory, corpus_dir, tmp_path):
    """``regions core --granularity row`` prints the split-half Jaccard of row regions."""
    from jaxregion import regions as R
    from jaxregion.analysis import stability
    from jaxregion.configs import DEFAULT_INCLUDE
    from jaxregion.io.hf import open_checkpoint
    from jaxregion.models import input_axes

    model = model_factory("llama_mha")
    imp = str(tmp_path / "imp")
    code, _, err = run_cli(
        "importance",
        "--model",
        model,
        "--text",
        f"lat={corpus_dir}/lat.txt",
        "--text",
        f"rom={corpus_dir}/rom.txt",
        "--seq-len",
        "16",
        "--max-seqs",
        "4",
        "--batch-size",
        "1",
        "--out",
        imp,
        "--no-progress",
    )
    assert code == 0, err
    halves = {lang: stability.load_halves(imp, lang) for lang in ("lat", "rom")}
    axes = input_axes(open_checkpoint(model).config)
    for gran in ("row", "tensor", "layer"):
        code, _, err = run_cli(
            "regions",
            "core",
            "--importance",
            imp,
            "--ratio",
            "0.25",
            "--granularity",
            gran,
            "--model",
            model,
            "--out",
            str(tmp_path / f"{gran}.safetensors"),
        )
        assert code == 0, err
        line = next(ln for ln in err.splitlines() if ln.startswith("stability:"))
        got = float(line.split("Jaccard ")[1].split(",")[0])
        kw = {"ratio": 0.25, "granularity": gran, "in_axes": axes, "include": DEFAULT_INCLUDE}
        a = R.select("core", {k: v[0] for k, v in halves.items()}, **kw)
        b = R.select("core", {k: v[1] for k, v in halves.items()}, **kw)
        assert got == pytest.approx(R.jaccard(a, b), abs=5e-5), (gran, line)


def test_region_file_missing_a_listed_tensor(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from jaxregion import regions as R

    tmpl = {
        "model": {
            "layers": [
                {
                    "mlp": {
                        "up_proj": {"weight": np.zeros((4, 3), np.float32)},
                        "down_proj": {"weight": np.zeros((3, 4), np.float32)},
                    }
                }
            ]
        }
    }
    p = str(tmp_path / "r.safetensors")
    R.save_region(p, R.random(tmpl, 0.5, seed=0, include=None))
    with safe_open(p, framework="np") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    gone = sorted(tensors)[0]
    del tensors[gone]
    save_file(tensors, p, metadata=meta)
    with pytest.raises(UserError, match="r.safetensors"):
        R.load_region(p)


def test_freeze_mask_matching_no_parameter_raises():
    from jaxregion import freeze as F

    mask = {"transformer": {"blocks": {"0": {"wq": jnp.ones((2, 2), bool)}}}}
    with pytest.raises(UserError, match="is a parameter of the model"):
        F.make_freeze_mask(mask, params={"model": {"embed_tokens": {"weight": jnp.ones(2)}}})
    with pytest.raises(UserError, match="is a parameter of the model"):
        F.make_freeze_mask(mask, roles={})


# --- numbers checked in the dtype they live in ----------------------------------------------
def test_api_refuses_values_that_overflow_the_dtype():
    from jaxregion import interventions as I

    params = {"model": {"w": jnp.ones((2, 2), jnp.float32)}}
    mask = {"model": {"w": jnp.ones((2, 2), bool)}}
    with pytest.raises(UserError, match="1e\\+?39"):
        I.apply_perturb(params, "model.w[0,0]*1e39")
    with pytest.raises(UserError, match="1e\\+?39"):
        I.set_value(params, mask, 1e39)
    with pytest.raises(UserError, match="1e\\+?39"):
        I.scale(params, mask, 1e39)
    big = {"model": {"w": jnp.full((2, 2), 3e38, jnp.bfloat16)}}
    with pytest.raises(UserError, match="bfloat16"):
        I.apply_perturb(big, "model.w[0,0]*4")
    half = {"model": {"w": jnp.ones((2, 2), jnp.float16)}}
    with pytest.raises(UserError, match="float16"):
        I.set_value(half, mask, 1e5)
    from jaxregion.generate import Sampling

    with pytest.raises(UserError, match="1e-40"):
        Sampling(1e-40).check()


# --- cached results keyed by content --------------------------------------------------------
def _sweep_config(model: str, c: str, out: str) -> dict:
    return {
        "name": "stale",
        "model": model,
        "out_dir": out,
        "target": "cyr",
        "target_train": f"{c}/cyr.txt",
        "evals": {"cyr": f"{c}/cyr.txt", "lat": f"{c}/lat.txt"},
        "importance": {"texts": {"lat": f"{c}/lat.txt"}, "max_seqs": 4, "batch_size": 4},
        "train": {
            "steps": 2,
            "batch_size": 2,
            "seq_len": 16,
            "lr": 3e-3,
            "warmup": 1,
            "eval_samples": [4],
            "eval_max_seqs": 4,
            "save_every": 2,
        },
        "sweep": [{"scorers": ["none", "core"], "ratios": [0.1], "seeds": [0]}],
    }


@pytest.mark.slow
def test_forgetting_recomputes_after_a_corpus_changes_in_place(
    model_factory, corpus_dir, tmp_path, capsys
):
    from jaxregion.cli.main import main
    from jaxregion.parallel import distributed

    c = tmp_path / "corpus"
    shutil.copytree(corpus_dir, c)
    out = str(tmp_path / "out")
    cfg = tmp_path / "f.yaml"
    cfg.write_text(yaml.safe_dump(_sweep_config(model_factory("llama_mha"), str(c), out)))
    distributed.shutdown()
    assert main(["forgetting", str(cfg), "--no-progress"]) == 0
    first = json.load(open(os.path.join(out, "results.json")))
    pts = sorted(os.listdir(os.path.join(out, "points")))
    old = {p: open(os.path.join(out, "points", p)).read() for p in pts}
    # the same path, other content: every cached number that used it is stale
    lines = open(c / "lat.txt", encoding="utf-8").read().splitlines()
    (c / "lat.txt").write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    for name in ("cyr.txt",):
        text = open(c / name, encoding="utf-8").read().splitlines()
        (c / name).write_text("\n".join(text[1:] + text[:1]) + "\n", encoding="utf-8")
    assert main(["forgetting", str(cfg), "--no-progress"]) == 0
    again = json.load(open(os.path.join(out, "results.json")))
    assert again["base_ppl"] != first["base_ppl"]
    for p in pts:  # every point trained again (its digest names the new windows)
        assert open(os.path.join(out, "points", p)).read() != old[p], p
    fresh = str(tmp_path / "fresh")
    cfg2 = tmp_path / "g.yaml"
    cfg2.write_text(yaml.safe_dump(_sweep_config(model_factory("llama_mha"), str(c), fresh)))
    assert main(["forgetting", str(cfg2), "--no-progress"]) == 0
    ref = json.load(open(os.path.join(fresh, "results.json")))
    assert again["base_ppl"] == ref["base_ppl"]
    assert {r["key"]: r["final"] for r in again["points"]} == {
        r["key"]: r["final"] for r in ref["points"]
    }
    capsys.readouterr()


# --- never replace what the tool did not make -----------------------------------------------
def test_export_needs_its_marker_or_force(model_factory, tmp_path):
    from jaxregion import safety
    from jaxregion.io import hf

    cfg, params = hf.load(model_factory("llama_mha"))
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}\n')
    before = snapshot(str(user))
    with pytest.raises(UserError, match="--force"):
        hf.export(params, cfg, str(user))
    assert snapshot(str(user)) == before
    with safety.guard([safety.Output("--export", str(user), "export")], force=True):
        hf.export(params, cfg, str(user))  # --force: replaced, and marked as ours
    assert safety.owner_of(str(user)) == safety.EXPORT_OWNER
    hf.export(params, cfg, str(user))  # ours now: a re-export needs no --force
    new = tmp_path / "new"
    hf.export(params, cfg, str(new))
    assert json.load(open(new / "config.json"))["model_type"] == cfg.hf_config["model_type"]
    assert not (tmp_path / "user" / safety.LOCK).exists()


def test_lock_names_its_holder_and_leaves_nothing(tmp_path):
    """The fast half of test_concurrency: a second holder is refused at once, naming the
    first; the lock file, and the directory the lock made, are gone afterwards."""
    from jaxregion import safety

    d = str(tmp_path / "new" / "out")
    with safety.locked(d, "--out"):
        with pytest.raises(UserError, match=f"pid {os.getpid()}, started "):
            with safety.locked(d, "--out"):
                pass
    assert not os.path.exists(tmp_path / "new")  # made by the lock, left empty: removed
    outs = [safety.Output("--ckpt-dir", d, "dir"), safety.Output("--export", d, "export")]
    with safety.guard(outs):  # one directory named twice is locked once
        assert os.path.isfile(os.path.join(d, safety.LOCK))
