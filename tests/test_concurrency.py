"""One writer per directory (issue 23): two runs on one output directory.

For ``importance``, ``forgetting`` and ``train``: a first run takes the directory's lock and
is paused (SIGSTOP) while holding it; a second run on the same directory must exit 2 at once
with one line naming the holder's PID; the first, resumed, must end with results equal to
a solo run's. Then a run is SIGKILLed while holding the lock, and the next run must not be
blocked by it (and must still reach the solo results).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

LOCK = ".jaxregion-lock"


def _popen(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(
        [sys.executable, "-m", "jaxregion.cli.main", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_locked(p: subprocess.Popen, d: str, timeout: float = 180.0) -> None:
    """Until ``p`` holds the lock of ``d`` (its lock file names p's PID)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with open(os.path.join(d, LOCK), encoding="utf-8") as f:
                if json.load(f).get("pid") == p.pid:
                    return
        except (OSError, ValueError):
            pass
        if p.poll() is not None:
            raise AssertionError(f"the first run ended before taking a lock: {p.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no lock file naming pid {p.pid} in {d} after {timeout} s")


def _finish(p: subprocess.Popen) -> str:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return err


def _importance(model, corpus, d):
    return [
        "importance",
        "--model",
        model,
        "--text",
        f"lat={corpus}/lat.txt",
        "--seq-len",
        "16",
        "--max-seqs",
        "16",
        "--batch-size",
        "2",
        "--out",
        d,
        "--no-progress",
    ]


def _train(model, corpus, d):
    return [
        "train",
        "--model",
        model,
        "--text",
        f"lat={corpus}/lat.txt",
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--max-seqs",
        "12",
        "--save-every",
        "2",
        "--ckpt-dir",
        d,
        "--no-progress",
    ]


def _forgetting(model, corpus, d, tmp):
    cfg = {
        "name": "lock",
        "model": model,
        "out_dir": d,
        "target": "cyr",
        "target_train": f"{corpus}/cyr.txt",
        "evals": {"cyr": f"{corpus}/cyr.txt", "lat": f"{corpus}/lat.txt"},
        "train": {
            "steps": 4,
            "batch_size": 2,
            "seq_len": 16,
            "lr": 3e-3,
            "warmup": 1,
            "eval_samples": [8],
            "eval_max_seqs": 4,
            "save_every": 2,
        },
        "sweep": [{"scorers": ["none"], "seeds": [0, 1]}],
    }
    p = os.path.join(tmp, os.path.basename(d) + ".yaml")
    with open(p, "w") as f:
        yaml.safe_dump(cfg, f)
    return ["forgetting", p, "--no-progress"]


def _result(cmd: str, d: str):
    """What a run computed, to compare with a solo run."""
    if cmd == "importance":
        from jaxregion.regions import load_scores
        from jaxregion.tree import flatten

        return {
            k: np.asarray(v)
            for k, v in flatten(load_scores(os.path.join(d, "lat.safetensors"))[0]).items()
        }
    if cmd == "train":
        rows = [json.loads(x) for x in open(os.path.join(d, "metrics.jsonl"))]
        return [(r["step"], r.get("loss")) for r in rows if r.get("loss") is not None]
    res = json.load(open(os.path.join(d, "results.json")))
    return {r["key"]: r["final"] for r in res["points"]}


def _same(a, b) -> None:
    if isinstance(a, dict) and a and isinstance(next(iter(a.values())), np.ndarray):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    else:
        assert a == b


@pytest.mark.slow
@pytest.mark.parametrize("cmd", ["importance", "forgetting", "train"])
def test_one_writer_per_directory(cmd, model_factory, corpus_dir, tmp_path):
    model = model_factory("llama_mha")

    def argv(d: str) -> list[str]:
        if cmd == "forgetting":
            return _forgetting(model, corpus_dir, d, str(tmp_path))
        return (_importance if cmd == "importance" else _train)(model, corpus_dir, d)

    solo = str(tmp_path / "solo")
    _finish(_popen(argv(solo)))
    want = _result(cmd, solo)

    shared = str(tmp_path / "shared")
    first = _popen(argv(shared))
    _wait_locked(first, shared)
    os.kill(first.pid, signal.SIGSTOP)  # holds the lock while the second run starts
    try:
        t0 = time.monotonic()
        second = _popen(argv(shared))
        _, err = second.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        os.kill(first.pid, signal.SIGCONT)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert second.returncode == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"pid {first.pid}" in lines[0] and "started" in lines[0], lines[0]
    assert took < 60, took  # at once: no model was loaded (jax start-up included)
    _finish(first)
    _same(_result(cmd, shared), want)

    # a holder killed with SIGKILL frees the lock: the next run proceeds (and resumes)
    killed = str(tmp_path / "killed")
    victim = _popen(argv(killed))
    _wait_locked(victim, killed)
    time.sleep(1.0)
    victim.kill()
    victim.wait()
    _finish(_popen(argv(killed)))
    _same(_result(cmd, killed), want)
    shutil.rmtree(shared)
