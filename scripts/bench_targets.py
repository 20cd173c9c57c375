"""Speed targets that used to be asserted in unit tests (they live here now: a loaded CI
machine must not fail a correctness test, and a target belongs with its measurement).

(a) the synthetic corpus generator streams > 1 MB/s (2 MB over the 7 languages);
(b) a 1024-token BPE on 400 documents per language trains in < 20 s;
(c) the first 100 windows of 512 tokens from a 50 MB text file come in < 5 s (a subprocess,
    so the import and the warm-up are not counted).

    python scripts/bench_targets.py [--tmp DIR]

Prints one line per target with its figure and exits 1 if any target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

from jaxregion.data import synthetic as S

_STREAM = textwrap.dedent("""
    import sys, time, json
    from jaxregion.data.sources import open_source
    from jaxregion.data.packing import pack_windows
    from jaxregion.data.tokenizer import load_tokenizer

    tok = load_tokenizer(sys.argv[2])
    list(pack_windows(["warm up"] * 2000, tok, 8))
    t0 = time.perf_counter()
    n = sum(1 for _ in pack_windows(open_source(sys.argv[1]).documents(), tok, 512, 100))
    print(json.dumps({"n": n, "s": time.perf_counter() - t0}))
""")


def synthetic_mb_per_s() -> float:
    per_lang = 2_000_000 // len(S.LANGUAGES)
    t0, nbytes = time.perf_counter(), 0
    for lang in S.LANGUAGES:
        start = nbytes
        for doc in S.generate(lang, None, 7):
            nbytes += len(doc.encode()) + 1
            if nbytes - start >= per_lang:
                break
    return nbytes / (time.perf_counter() - t0) / 1e6


def bpe_seconds(out: str) -> float:
    from jaxregion.data.tokenizer import train_bpe

    docs = {lang: list(S.generate(lang, 400, 0)) for lang in S.LANGUAGES}
    t0 = time.perf_counter()
    train_bpe(docs, 1024, out)
    return time.perf_counter() - t0


def first_windows_seconds(tmp: str, tokenizer_dir: str) -> float:
    block = "".join(d + "\n" for lang in ("lat", "cjk") for d in S.generate(lang, 3000, 1))
    path = os.path.join(tmp, "big.txt")
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < 50_000_000:
            f.write(block)
    out = subprocess.run(
        [sys.executable, "-c", _STREAM, path, tokenizer_dir],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["n"] == 100, r
    return r["s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tmp", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tok = os.path.join(tmp, "tok")
        rows = [
            ("synthetic corpus", synthetic_mb_per_s(), "MB/s", lambda v: v > 1.0),
            ("BPE 1024 training", bpe_seconds(tok), "s", lambda v: v < 20.0),
            ("first 100 windows of 50 MB", first_windows_seconds(tmp, tok), "s", lambda v: v < 5.0),
        ]
    missed = 0
    for name, value, unit, ok in rows:
        missed += not ok(value)
        print(f"{name}: {value:.2f} {unit} {'ok' if ok(value) else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
