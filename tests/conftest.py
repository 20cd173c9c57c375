"""Shared fixtures: tiny tokenizers, corpora and HF checkpoints made in the test session."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

SHARED_TEXT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora", "text")


def _docs(lang: str, n: int, seed: int = 0) -> list[str]:
    from jaxregion.data import synthetic

    return list(synthetic.generate(lang, n, seed))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> str:
    """Two synthetic languages as LANG.txt files, one document a line."""
    from jaxregion.data import synthetic

    d = tmp_path_factory.mktemp("corpus")
    for lang in list(synthetic.LANGUAGES)[:3]:
        with open(d / f"{lang}.txt", "w", encoding="utf-8") as f:
            for doc in _docs(lang, 300):
                f.write(doc + "\n")
    return str(d)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_dir) -> str:
    """A small byte-level BPE (vocab 320) trained on the synthetic corpus."""
    from jaxregion.data.tokenizer import train_bpe

    d = str(tmp_path_factory.mktemp("tok"))
    texts = {}
    for name in sorted(os.listdir(corpus_dir)):
        with open(os.path.join(corpus_dir, name), encoding="utf-8") as f:
            texts[name.split(".")[0]] = [line.strip() for line in f if line.strip()]
    train_bpe(texts, vocab_size=320, out_dir=d)
    return d


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory, tokenizer):
    """``make(family, **overrides) -> checkpoint dir`` with the test tokenizer; cached."""
    from hf_factory import make_model, save_model

    cache: dict = {}

    def make(family: str = "llama_mha", seed: int = 0, **overrides) -> str:
        key = (family, seed, tuple(sorted(overrides.items())))
        if key not in cache:
            d = str(tmp_path_factory.mktemp(family))
            save_model(make_model(family, seed, **overrides), d, tokenizer)
            cache[key] = d
        return cache[key]

    return make


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run ``jaxregion`` in this process: exit code, stdout, stderr.

    ``jaxregion.cli.main.main(argv)`` with stdout and stderr captured, and Python's default
    warning filters (as in a fresh interpreter), so a warning lands in stderr as it would in
    a subprocess. No cold jax + transformers import per call. Tests of a real process
    boundary (signals, tracebacks, environment, devices) use :func:`run_cli_subprocess`."""
    import contextlib
    import io
    import warnings

    from jaxregion.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        warnings.resetwarnings()
        for category in (
            DeprecationWarning,
            PendingDeprecationWarning,
            ImportWarning,
            ResourceWarning,
        ):
            warnings.simplefilter("ignore", category)
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse's --help / --version
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def run_worker(script: str, *argv: str, timeout: int, **env: str) -> dict:
    """Run ``tests/SCRIPT`` in its own process (tests/ and the repository on its path, plus
    ``env``) and return the JSON object its last stdout line prints; it must exit 0. For
    measurements that set process limits or hold more memory than pytest should keep."""
    import json
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    path = [here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(path)}
    p = subprocess.run(
        [sys.executable, os.path.join(here, script), *argv],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_cli_subprocess(*argv: str) -> tuple[int, str, str]:
    """Run ``jaxregion`` in a subprocess: exit code, stdout, stderr."""
    import subprocess

    p = subprocess.run(
        [sys.executable, "-m", "jaxregion.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Drop JAX's compiled programs after each test module. An XLA:CPU executable maps ~3.3
    memory regions that stay until its cache entry goes, and the full suite compiles enough
    of them to near the kernel's 65,530 maps per process: twice XLA's compiler segfaulted
    late in the suite (73% and 80%, in whichever test compiled next)."""
    yield
    import jax

    jax.clear_caches()


@pytest.fixture(scope="session")
def real_cache(request, tmp_path_factory):
    """pytest's cache directory (kept between runs), else a temporary one."""
    from pathlib import Path

    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("real_models") if cache else tmp_path_factory.mktemp("real_models"))


@pytest.fixture(scope="session")
def gemma3_gguf(real_cache) -> str:
    """Gemma 3 270M Q4_K_M's GGUF file (tests/realmodels.py says from where)."""
    import realmodels

    return str(realmodels.gemma3(real_cache))


@pytest.fixture(scope="session")
def smollm2_gguf(real_cache) -> str:
    """SmolLM2 135M Instruct Q4_1's GGUF file (tests/realmodels.py says from where)."""
    import realmodels

    return str(realmodels.smollm2(real_cache))


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects
def pytest_collection_modifyitems(config, items) -> None:  # noqa: ARG001
    """Mark slow what ``tiers.SLOW`` lists, and every case of a family sweep but the first."""
    import tiers

    slow, sweeps, seen = set(tiers.SLOW), set(tiers.FAMILY_SWEEPS), set()
    for item in items:
        where = os.path.basename(item.path)
        fn = f"{where}::{getattr(item, 'originalname', item.name)}"
        swept = fn in sweeps and fn in seen
        seen.add(fn)
        if fn in slow or f"{where}::{item.name}" in slow or swept:
            item.add_marker(pytest.mark.slow)
