#!/usr/bin/env python
"""Where a ``jaxregion`` command's resident memory goes: the command runs in this process
while a thread samples RSS every 50 ms; the library calls that own memory are marked, and
each phase prints its RSS at the end and its maximum (``docs/importance_memory_precision.md``).

    flock /work/heavy.lock python scripts/bench_memory.py importance --model M.gguf \\
        --text de=de.valid.txt --seq-len 128 --max-seqs 4 --batch-size 2 --out /tmp/x
"""

from __future__ import annotations

import functools
import importlib
import resource
import sys
import threading
import time

T0 = time.perf_counter()
SAMPLES: list[tuple[float, float]] = []
MARKS: list[tuple[float, str, float]] = []
WATCH = [
    ("jaxregion.io.hf", ("open_checkpoint", "load_tokenizer", "load_params")),
    ("jaxregion.runtime", ("load_corpora",)),
    ("jaxregion.importance", ("init_state", "compute_importance", "finalize", "finalize_halves")),
    ("jaxregion.scorefiles", ("_write",)),
    ("jaxregion.analysis.stability", ("split_half", "topk_jaccard")),
    ("jaxregion.regions.files", ("_write_scores",)),
]


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024**2
    return 0.0


def _sample() -> None:
    while True:
        SAMPLES.append((time.perf_counter() - T0, rss_gb()))
        time.sleep(0.05)


def _mark(name: str) -> None:
    MARKS.append((time.perf_counter() - T0, name, rss_gb()))


def _wrap(mod, attr: str) -> None:
    f = getattr(mod, attr)

    @functools.wraps(f)
    def g(*a, **k):
        _mark(f"> {mod.__name__}.{attr}")
        try:
            return f(*a, **k)
        finally:
            _mark(f"< {mod.__name__}.{attr}")

    setattr(mod, attr, g)


def main(argv: list[str]) -> int:
    threading.Thread(target=_sample, daemon=True).start()
    for name, attrs in WATCH:
        mod = importlib.import_module(name)
        for a in attrs:
            _wrap(mod, a)
    from jaxregion.cli.main import main as cli

    try:
        rc = cli(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    _mark("end")
    time.sleep(0.1)
    events = sorted(MARKS)
    for i, (t, n, r) in enumerate(events):
        nxt = events[i + 1][0] if i + 1 < len(events) else float("inf")
        mx = max([s for ts, s in SAMPLES if t <= ts < nxt] or [r])
        print(f"{t:7.2f}s {r:6.2f} GB  max until the next mark {mx:6.2f}  {n}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS (ru_maxrss) {peak:.2f} GB; exit {rc}")
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
