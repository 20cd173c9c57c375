"""The README's quickstart runs as written (on a tiny model), and every doc is linked from it."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _quickstart() -> str:
    text = open(README, encoding="utf-8").read()
    section = text.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_quickstart_runs(model_factory, corpus_dir):
    code = _quickstart()
    assert len(code.splitlines()) <= 20
    line = re.compile(r"^MODEL, TEXT = .*$", re.M)
    assert len(line.findall(code)) == 1, "the quickstart names its inputs on one line"
    inputs = (
        f"MODEL, TEXT = {model_factory('llama_mha')!r}, "
        f"{{'en': {corpus_dir + '/lat.txt'!r}, 'zh': {corpus_dir + '/cyr.txt'!r}}}"
    )
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(line.sub(lambda _: inputs, code), "README.md", "exec"), scope)
    base, ablated = (float(x) for x in out.getvalue().split())
    # an untrained tiny model: removing its core changes the perplexity (the paper's
    # direction is the battery's and the demo's claim, on trained models)
    assert 1.0 < base < 1e4 and 1.0 < ablated < 1e4 and ablated != base
    assert set(scope["scores"]) == {"en", "zh"}
    n_core = sum(int(m.sum()) for m in jax.tree.leaves(scope["core"].mask))
    n_all = sum(m.size for m in jax.tree.leaves(scope["core"].mask))
    assert 0 < n_core <= 0.011 * n_all


def test_every_doc_is_linked_from_the_readme():
    text = open(README, encoding="utf-8").read()
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", text))
    docs = {
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
    }
    assert docs <= linked, f"not linked from README.md: {sorted(docs - linked)}"
    assert all(os.path.isfile(os.path.join(ROOT, p)) for p in linked), linked - docs
