"""Research scripting in functional style, through the Python API alone.

Usage: python scripts/example_functional.py MODEL_DIR LANG=TEXT LANG=TEXT [--seq-len 64]
"""

import argparse

import jax
import jax.numpy as jnp

from jaxregion import importance, regions
from jaxregion.data.packing import load_windows
from jaxregion.data.sources import open_source, parse_lang_spec
from jaxregion.evaluate import evaluate
from jaxregion.io import hf

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("texts", nargs=2, metavar="LANG=TEXT")
ap.add_argument("--seq-len", type=int, default=64)
ap.add_argument("--max-seqs", type=int, default=16)
args = ap.parse_args()

cfg, params = hf.load(args.model)  # an HF-named pytree
tok = hf.load_tokenizer(args.model)
windows = {
    lang: load_windows(open_source(src).documents(), tok, args.seq_len, args.max_seqs)
    for lang, src in map(parse_lang_spec, args.texts)
}

scores = {
    lang: importance.compute_importance(params, cfg, w).scores  # θ ⊙ ∇θ L
    for lang, w in windows.items()
}
a, b = (regions.top(scores, lang, ratio=0.01) for lang in scores)
core = regions.core(scores, ratio=0.01)  # top-1% of Σ|score|
shared = regions.intersection(a, b)  # the algebra

zeroed = jax.tree.map(lambda p, m: jnp.where(m, jnp.zeros_like(p), p), params, core.mask)

print(
    f"| lang | base ppl | core zeroed | (|core| = {regions.size(core)}, "
    f"|top_a ∩ top_b| = {regions.size(shared)}, J(a, b) = {regions.jaccard(a, b):.3f}) |"
)
print("|---|---|---|")
for lang, w in windows.items():
    before, after = evaluate(params, cfg, w), evaluate(zeroed, cfg, w)
    print(f"| {lang} | {before.perplexity:.3f} | {after.perplexity:.3f} |")
