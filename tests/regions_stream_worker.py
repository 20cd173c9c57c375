"""Run by ``test_regions_stream`` in its own process: ``jaxregion regions`` selections (core,
bottom, random, monolingual, each with its split-half stability) from an importance
directory, under an address-space limit (RLIMIT_AS) set after start-up.

The limit is the process's virtual size once JAX has started (its thread pools and code
reserve ~0.7 GB of address space before any work; ``MALLOC_ARENA_MAX=2`` keeps glibc from
reserving 64 MB per thread) plus ``BUDGET_MB``: everything the selection allocates must fit
in that budget. Prints one JSON line.
"""

from __future__ import annotations

import json
import re
import resource
import sys


def vm_peak_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmPeak:\s+(\d+) kB", f.read()).group(1)) * 1024


def main(directory: str, out: str, budget_mb: int) -> None:
    import jax.numpy as jnp

    from jaxregion import regions as R
    from jaxregion.cli import region_runs
    from jaxregion.configs import SelectConfig
    from jaxregion.io.safetensors_io import SafetensorsFile

    jnp.zeros(1).block_until_ready()
    start = vm_peak_bytes()
    limit = start + budget_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    res: dict = {"start_bytes": start, "limit_bytes": limit}
    langs = sorted(R.open_importance_dir(directory))
    for kind in ("core", "bottom", "random", "monolingual"):
        cfg = SelectConfig(
            kind=kind,
            importance=directory,
            out=f"{out}/{kind}.safetensors",
            lang="l0" if kind == "monolingual" else None,
        )
        region, stability = region_runs.select_region(cfg)
        res[kind] = {"size": region.size, "stability": stability}
        del region
    held = []
    try:  # for contrast: holding every language's scores at once must not fit
        for lang in langs:
            f = SafetensorsFile(R.importance_path(directory, lang))
            held += [f.read(n) for n in f.keys()]
        res["whole_load"] = "fit"
    except MemoryError:
        res["whole_load"] = "MemoryError"
    del held
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
