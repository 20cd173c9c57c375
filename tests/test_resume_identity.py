"""A run's identity guards its checkpoints (issue 11): resuming with another model, data,
frozen region, optimizer setting or step count is one line, exit 2, and leaves the ckpt-dir
byte for byte; ``--restart`` sets the old run aside; only a damaged step is moved aside."""

from __future__ import annotations

import hashlib
import os
import shutil

import jax
import numpy as np
import pytest

from jaxregion.cli.main import main
from jaxregion.parallel import distributed


def _tree_hash(d: str) -> str:
    h = hashlib.sha1()
    for root, dirs, files in sorted(os.walk(d)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, d).encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def _args(model, text, ck, *extra, steps="4"):
    return [
        "train",
        "--model",
        model,
        "--text",
        f"lat={text}",
        "--steps",
        steps,
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--max-seqs",
        "8",
        "--lr",
        "1e-3",
        "--ckpt-dir",
        ck,
        "--save-every",
        "2",
        "--keep",
        "3",
        "--no-progress",
        *extra,
    ]


def _run(argv, capsys):
    distributed.shutdown()
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def base(tmp_path_factory, model_factory, corpus_dir):
    """A finished 4-step run (steps 2 and 4 saved), and what is needed to vary it."""
    from jaxregion.io import hf
    from jaxregion.regions import random as random_region
    from jaxregion.regions import save_region

    root = tmp_path_factory.mktemp("resume")
    model = model_factory("llama_mha")
    ck = str(root / "ck")
    distributed.shutdown()
    assert main(_args(model, f"{corpus_dir}/lat.txt", ck)) == 0
    _, params = hf.load(model)
    region = str(root / "freeze.safetensors")
    save_region(region, random_region(params, 0.05, seed=0))
    return {
        "model": model,
        "text": f"{corpus_dir}/lat.txt",
        "ck": ck,
        "region": region,
        "other_weights": model_factory("llama_mha", seed=1),
        "other_text": f"{corpus_dir}/rom.txt",
        "hash": _tree_hash(ck),
    }


CHANGES = {
    "model weights (same shapes)": (
        lambda b: _args(b["other_weights"], b["text"], b["ck"]),
        "model weights",
    ),
    "training data": (lambda b: _args(b["model"], b["other_text"], b["ck"]), "training data"),
    "max-seqs": (
        lambda b: _args(b["model"], b["text"], b["ck"], "--max-seqs", "6"),
        "training data",
    ),
    "frozen region added": (
        lambda b: _args(b["model"], b["text"], b["ck"], "--freeze", b["region"]),
        "frozen region",
    ),
    "clip": (lambda b: _args(b["model"], b["text"], b["ck"], "--clip", "0"), "optimizer.clip"),
    "lr": (lambda b: _args(b["model"], b["text"], b["ck"], "--lr", "2e-3"), "optimizer.lr"),
    "seed": (lambda b: _args(b["model"], b["text"], b["ck"], "--seed", "1"), "optimizer.seed"),
    "weight decay": (
        lambda b: _args(b["model"], b["text"], b["ck"], "--weight-decay", "0"),
        "optimizer.weight_decay",
    ),
    "freeze norms": (
        lambda b: _args(b["model"], b["text"], b["ck"], "--freeze", b["region"], "--freeze-norms"),
        "frozen region",
    ),
    "more steps": (lambda b: _args(b["model"], b["text"], b["ck"], steps="6"), "steps"),
    "steps below the saved step": (
        lambda b: _args(b["model"], b["text"], b["ck"], steps="2"),
        "below the saved step 4",
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_identity_is_refused_and_checkpoints_stay(base, change, capsys):
    argv, must = CHANGES[change]
    code, err = _run(argv(base), capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and must in lines[0], err
    assert "--restart" in lines[0] or "--steps" in lines[0]
    assert _tree_hash(base["ck"]) == base["hash"], "the ckpt-dir changed"


def test_same_identity_resumes_without_touching_the_run(base, capsys):
    code, err = _run(_args(base["model"], base["text"], base["ck"]), capsys)
    assert code == 0, err
    assert "resuming from step 4" in err
    assert _tree_hash(base["ck"]) == base["hash"]


def test_restart_sets_the_old_run_aside(base, tmp_path, capsys):
    ck = str(tmp_path / "ck")
    shutil.copytree(base["ck"], ck)
    code, err = _run(_args(base["model"], base["text"], ck, "--clip", "0", "--restart"), capsys)
    assert code == 0, err
    prev = os.path.join(ck, "previous")
    (old,) = os.listdir(prev)
    assert _tree_hash(os.path.join(prev, old)) == base["hash"]  # moved, byte for byte
    # the new run is the one recorded now; the old flags are the different run
    code, err = _run(_args(base["model"], base["text"], ck), capsys)
    assert code == 2 and "optimizer.clip" in err


def test_damaged_latest_step_is_moved_aside_and_the_previous_resumes(base, tmp_path, capsys):
    from jaxregion.train import step_dirs

    ck = str(tmp_path / "ck")
    shutil.copytree(base["ck"], ck)
    for root, _, files in os.walk(os.path.join(ck, "steps", "4", "params")):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(0)
    code, err = _run(_args(base["model"], base["text"], ck), capsys)
    assert code == 0, err
    assert "step 4" in err and "falling back to step 2" in err and "resuming from step 2" in err
    assert step_dirs(ck) == [2, 4]
    assert len(os.listdir(os.path.join(ck, "corrupt"))) == 1


def test_another_tree_is_an_error_not_corruption(base, tmp_path):
    """A whole step that does not fit this run's tree is never moved to corrupt/."""
    from jaxregion.errors import UserError
    from jaxregion.train import restore_latest

    ck = str(tmp_path / "ck")
    shutil.copytree(base["ck"], ck)
    before = _tree_hash(ck)
    wrong = {"model": {"embed_tokens": {"weight": jax.ShapeDtypeStruct((3, 5), np.float32)}}}
    with pytest.raises(UserError, match="other shapes than this run"):
        restore_latest(ck, wrong, None)
    assert _tree_hash(ck) == before
    assert not os.path.exists(os.path.join(ck, "corrupt"))


def test_metrics_never_interleave(base, tmp_path, capsys):
    """A refused run writes no metric line; a resumed run keeps one line per step."""
    import json

    ck = str(tmp_path / "ck")
    shutil.copytree(base["ck"], ck)
    code, _ = _run(_args(base["model"], base["text"], ck, "--clip", "0"), capsys)
    assert code == 2
    code, _ = _run(_args(base["model"], base["text"], ck), capsys)
    assert code == 0
    with open(os.path.join(ck, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == sorted(set(steps)), steps
