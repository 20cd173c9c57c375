"""How long ``jaxregion --help`` and ``jaxregion CMD --help`` take to start (target: < 1 s).

    python scripts/bench_cli_startup.py [--runs 5]

Prints the best of ``--runs`` wall-clock times per command; exits 1 if any is 1 s or more.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from jaxregion.cli import options
from jaxregion.cli.main import build_parser

TARGET_S = 1.0


def best_of(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "jaxregion.cli.main", *argv],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    build_parser()
    commands = [[], *[list(c.words) for c in options.REGISTRY]]
    worst = 0.0
    for words in commands:
        t = best_of([*words, "--help"], runs)
        worst = max(worst, t)
        print(f"jaxregion {' '.join([*words, '--help'])}: {t:.2f} s (best of {runs})")
    print(f"slowest: {worst:.2f} s (target < {TARGET_S:.0f} s)")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
