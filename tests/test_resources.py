"""Small hostile files end fast and small (issue 11): each case runs the CLI in a subprocess
whose peak RSS is measured (``getrusage(RUSAGE_CHILDREN)`` in a wrapper that runs only it).

The subprocess runs as the runtime install does: torch (a test-only dependency, which
transformers would otherwise import on every tokenizer load, ~8 s and ~250 MB here) is
hidden through a ``sitecustomize`` that sets ``sys.modules["torch"] = None``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib

import pytest

pytestmark = pytest.mark.slow  # every case starts subprocesses

LIMIT_S = 10.0
LIMIT_MB = 500.0

_WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB (Linux)
print(json.dumps({"code": p.returncode, "err": p.stderr, "s": dt, "mb": rss}))
"""


_NO_TORCH = 'import sys\nsys.modules["torch"] = None  # torch is a test-only dependency\n'


def _measure(*argv: str, site: str) -> dict:
    path = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "jaxregion.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return json.loads(out.stdout)


def _check(r: dict, must: str) -> None:
    lines = [ln for ln in r["err"].splitlines() if ln.strip()]
    print(f"{must}: exit {r['code']}, {r['s']:.1f} s, peak RSS {r['mb']:.0f} MiB")
    assert r["code"] == 2 and len(lines) == 1 and must in lines[0], r["err"]
    assert r["s"] < LIMIT_S, r
    assert r["mb"] < LIMIT_MB, r


@pytest.fixture(scope="module")
def model(model_factory):
    return model_factory("llama_mha")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("site")
    (d / "sitecustomize.py").write_text(_NO_TORCH)
    return str(d)


def test_yaml_alias_bomb(tmp_path, site):
    bomb = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    assert len(bomb) < 500  # the 429-byte class of file
    p = tmp_path / "bomb.yaml"
    p.write_text(bomb)
    _check(_measure("experiment", str(p), site=site), "expands to more than")


def test_one_gigabyte_single_line_gzip(tmp_path, model, site):
    path = tmp_path / "line.txt.gz"
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    block = b"a" * (1 << 20)
    with open(path, "wb") as f:
        for _ in range(1024):  # 1 GiB of one line, about 1 MB compressed
            f.write(c.compress(block))
        f.write(c.flush())
    assert path.stat().st_size < 2 << 20
    _check(
        _measure("eval", "--model", model, "--text", f"lat={path}", "--seq-len", "16", site=site),
        "longer than",
    )


def test_billion_layer_config(tmp_path, model, site):
    d = tmp_path / "m"
    shutil.copytree(model, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 10**9
    (d / "config.json").write_text(json.dumps(cfg))
    _check(
        _measure("eval", "--model", str(d), "--text", "lat=x.txt", site=site), "1000000000 layers"
    )
