"""Bad input to ``jaxregion eval``: one line naming the culprit, exit 2, no output file."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import run_cli, run_cli_subprocess


def _copy(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _assert_clean_error(code: int, stderr: str, must: str, out) -> None:
    assert code == 2, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert must in lines[0], lines[0]
    assert not os.path.exists(out)


@pytest.fixture()
def good(model_factory, corpus_dir):
    return model_factory("llama_mha"), f"lat={corpus_dir}/lat.txt"


def _eval(model: str, text: str, out, *extra: str):
    return run_cli(
        "eval", "--model", model, "--text", text, "--seq-len", "16", "--json", str(out), *extra
    )


def test_missing_directory(good, tmp_path):
    _, text = good
    code, _, err = _eval(str(tmp_path / "nope"), text, tmp_path / "o.json")
    _assert_clean_error(code, err, "nope", tmp_path / "o.json")


def test_missing_safetensors(good, tmp_path):
    d = _copy(good[0], tmp_path / "m")
    os.unlink(os.path.join(d, "model.safetensors"))
    code, _, err = _eval(d, good[1], tmp_path / "o.json")
    _assert_clean_error(code, err, "no model.safetensors", tmp_path / "o.json")


def test_corrupt_safetensors(good, tmp_path):
    d = _copy(good[0], tmp_path / "m")
    p = os.path.join(d, "model.safetensors")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    code, _, err = _eval(d, good[1], tmp_path / "o.json")
    _assert_clean_error(code, err, "model.safetensors", tmp_path / "o.json")
    assert "truncated or corrupt" in err
    open(p, "wb").write(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    code, _, err = _eval(d, good[1], tmp_path / "o.json")
    _assert_clean_error(code, err, "corrupt safetensors", tmp_path / "o.json")


def test_wrong_shape_and_missing_tensor(good, tmp_path):
    d = _copy(good[0], tmp_path / "m")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["intermediate_size"] = 100
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    code, _, err = _eval(d, good[1], tmp_path / "o.json")
    _assert_clean_error(
        code,
        err,
        "model.layers.0.mlp.gate_proj.weight has shape [96, 64], expected [100, 64]",
        tmp_path / "o.json",
    )
    cfg["intermediate_size"] = 96
    cfg["num_hidden_layers"] = 3
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    code, _, err = _eval(d, good[1], tmp_path / "o.json")
    _assert_clean_error(code, err, "missing tensor model.layers.2.", tmp_path / "o.json")


def test_unsupported_model_type(good, tmp_path):
    d = _copy(good[0], tmp_path / "m")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_type"] = "bert"
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    code, _, err = _eval(d, good[1], tmp_path / "o.json")
    _assert_clean_error(code, err, "model_type 'bert' is not supported", tmp_path / "o.json")


def test_missing_tokenizer(good, tmp_path):
    d = _copy(good[0], tmp_path / "m")
    for n in os.listdir(d):
        if n.startswith(("tokenizer", "special_tokens")):
            os.unlink(os.path.join(d, n))
    code, _, err = _eval(d, good[1], tmp_path / "o.json")
    _assert_clean_error(code, err, "no tokenizer", tmp_path / "o.json")


def test_text_without_equals(good, tmp_path):
    code, _, err = _eval(good[0], "lat.txt", tmp_path / "o.json")
    _assert_clean_error(code, err, "LANG=SOURCE", tmp_path / "o.json")


def test_empty_and_non_utf8_text(good, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = _eval(good[0], f"xx={empty}", tmp_path / "o.json")
    _assert_clean_error(code, err, str(empty), tmp_path / "o.json")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    code, _, err = _eval(good[0], f"xx={bad}", tmp_path / "o.json")
    _assert_clean_error(code, err, str(bad), tmp_path / "o.json")
    assert "UTF-8" in err


def test_seq_len_beyond_max_positions(good, tmp_path):
    code, _, err = run_cli(
        "eval",
        "--model",
        good[0],
        "--text",
        good[1],
        "--seq-len",
        "4096",
        "--json",
        str(tmp_path / "o.json"),
    )
    _assert_clean_error(code, err, "--seq-len 4096", tmp_path / "o.json")
    assert "128" in err


def test_more_max_seqs_than_text(good, tmp_path):
    code, _, err = _eval(good[0], good[1], tmp_path / "o.json", "--max-seqs", "1000000")
    _assert_clean_error(code, err, "has only", tmp_path / "o.json")
    n = int(err.split("has only ")[1].split()[0])
    assert n > 0
    # the figure is right: exactly that many windows succeed
    code, _, err = _eval(good[0], good[1], tmp_path / "ok.json", "--max-seqs", str(n))
    assert code == 0, err


def test_debug_shows_traceback(good, tmp_path):
    code, _, err = run_cli_subprocess(
        "eval", "--model", str(tmp_path / "nope"), "--text", good[1], "--debug"
    )
    assert code != 0 and "Traceback" in err
