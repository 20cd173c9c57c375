"""Benchmark the data layer: streaming sources + packing on big text files.

(a) The first 1,000 windows of 512 tokens from a 2 GB file: targets < 10 s and < 1 GB peak RSS
    (proves nothing reads the whole corpus).
(b) Every window of a 200 MB file: throughput, and peak RSS < 1 GB (proves memory does not
    grow with the corpus).

Each measurement runs in its own subprocess so its peak RSS (VmHWM) is its own. The big files
are synthetic text (a few MB of unique documents, repeated), cached in --cache-dir.

    python scripts/bench_data.py [--cache-dir /tmp/jaxregion-bench] [--skip-all]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

GB = 1 << 30
MB = 1 << 20


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM; ru_maxrss as fallback)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure(path: str, tok_dir: str, seq_len: int, max_seqs: int | None) -> dict:
    """Runs in the child: open + pack, timed from open_source to the last window."""
    from jaxregion.data.packing import pack_windows
    from jaxregion.data.sources import open_source
    from jaxregion.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    t0 = time.perf_counter()
    n = n_tokens = 0
    for w in pack_windows(open_source(path).documents(), tok, seq_len, max_seqs):
        n += 1
        n_tokens += len(w)
    return {
        "windows": n,
        "tokens": n_tokens,
        "seconds": time.perf_counter() - t0,
        "peak_rss": _peak_rss(),
    }


def _run_child(path: str, tok_dir: str, seq_len: int, max_seqs: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", path, tok_dir, str(seq_len), str(max_seqs or 0)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"measurement failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _make_file(path: str, size: int) -> None:
    """A synthetic text file of at least ``size`` bytes; reused when already there."""
    from jaxregion.data import synthetic
    from jaxregion.io.atomic import atomic_path

    if os.path.isfile(path) and os.path.getsize(path) >= size:
        return
    t0 = time.perf_counter()
    lines = []
    for lang in synthetic.LANGUAGES:
        lines.extend(synthetic.generate(lang, 4000, seed=11))
    block = ("\n".join(lines) + "\n").encode("utf-8")  # ~5 MB of unique documents
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        written = 0
        while written < size:
            f.write(block)
            written += len(block)
    dt = time.perf_counter() - t0
    print(
        f"wrote {path}: {os.path.getsize(path) / MB:.0f} MiB in {dt:.1f} s "
        f"({os.path.getsize(path) / MB / dt:.0f} MiB/s)",
        flush=True,
    )


def _tokenizer(cache: str, vocab: int) -> str:
    from jaxregion.data import synthetic
    from jaxregion.data.tokenizer import train_bpe

    out = os.path.join(cache, f"bpe-{vocab}")
    if not os.path.isfile(os.path.join(out, "tokenizer.json")):
        t0 = time.perf_counter()
        train_bpe(
            {lang: synthetic.generate(lang, 3000, 0) for lang in synthetic.LANGUAGES}, vocab, out
        )
        print(f"trained BPE vocab {vocab} in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        path, tok_dir, seq_len, max_seqs = sys.argv[2:6]
        print(json.dumps(_measure(path, tok_dir, int(seq_len), int(max_seqs) or None)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", default=os.path.join("/tmp", "jaxregion-bench"))
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--big-gb", type=float, default=2.0)
    p.add_argument("--all-mb", type=float, default=200.0)
    p.add_argument("--skip-all", action="store_true", help="skip (b), the full 200 MB pass")
    args = p.parse_args()
    os.makedirs(args.cache_dir, exist_ok=True)

    tok_dir = _tokenizer(args.cache_dir, args.vocab)
    big = os.path.join(args.cache_dir, f"big-{args.big_gb:g}g.txt")
    _make_file(big, int(args.big_gb * GB))
    ok = True

    r = _run_child(big, tok_dir, 512, 1000)
    a_ok = r["windows"] == 1000 and r["seconds"] < 10 and r["peak_rss"] < GB
    ok &= a_ok
    print(
        f"(a) first 1000 windows x 512 of {os.path.getsize(big) / GB:.2f} GB: "
        f"{r['seconds']:.2f} s (target < 10 s), peak RSS {r['peak_rss'] / MB:.0f} MiB "
        f"(target < 1024 MiB) -> {_verdict(a_ok)}",
        flush=True,
    )

    if not args.skip_all:
        mid = os.path.join(args.cache_dir, f"all-{args.all_mb:g}m.txt")
        _make_file(mid, int(args.all_mb * MB))
        r = _run_child(mid, tok_dir, 512, None)
        b_ok = r["windows"] > 0 and r["peak_rss"] < GB
        ok &= b_ok
        size = os.path.getsize(mid)
        print(
            f"(b) all windows of {size / MB:.0f} MiB: {r['windows']} windows "
            f"({r['tokens'] / 1e6:.1f} M tokens) in {r['seconds']:.1f} s "
            f"({size / MB / r['seconds']:.1f} MiB/s, {r['tokens'] / r['seconds'] / 1e3:.0f} "
            f"k tok/s), peak RSS {r['peak_rss'] / MB:.0f} MiB (target < 1024 MiB) "
            f"-> {_verdict(b_ok)}",
            flush=True,
        )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
