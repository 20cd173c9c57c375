"""Research scripting in Flax NNX: load, nnx.grad, freeze a region in nnx.Optimizer, orbax.

Usage: python scripts/example_nnx.py MODEL_DIR CKPT_DIR
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from jaxregion import models, regions
from jaxregion import tree as T
from jaxregion.freeze import freeze_elements
from jaxregion.io import hf

model = hf.load_model(sys.argv[1])  # nnx.Module tree, HF attribute paths
roles = models.roles(model.config)  # the family table, as data
tokens = jnp.asarray(np.random.default_rng(0).integers(0, model.config.vocab_size, (4, 32)))


def in_layer(path, _) -> bool:  # wrt filter: whole tensors (layers only)
    return roles[".".join(map(str, path))].layer is not None


wrt = nnx.All(nnx.Param, in_layer)
grads = nnx.grad(lambda m: jnp.mean(m.token_nll(tokens)), argnums=nnx.DiffState(0, wrt))(model)
scores = jax.tree.map(lambda p, g: p * g, nnx.state(model, wrt), grads)  # θ ⊙ ∇θ L
core = regions.core({"x": models.params_of(scores)}, ratio=0.05)  # a region (by names)

before = models.params_of(model)
tx = optax.chain(optax.adamw(1e-2), freeze_elements(core))  # the freeze goes last
opt = nnx.Optimizer(model, tx, wrt=wrt)
opt.update(model, grads)
after = models.params_of(model)
for n, m in core.flat().items():  # the region did not move, bitwise
    m = np.asarray(m)
    assert (np.asarray(T.get(before, n))[m] == np.asarray(T.get(after, n))[m]).all(), n
for n in (n for n, r in roles.items() if r.layer is None):  # nor did what wrt left out
    assert np.array_equal(T.get(before, n), T.get(after, n)), n

ckpt = ocp.StandardCheckpointer()
ckpt.save(f"{sys.argv[2]}/state", nnx.state(model))
ckpt.wait_until_finished()
restored = models.abstract(model.config)
nnx.update(restored, ckpt.restore(f"{sys.argv[2]}/state", nnx.state(restored)))
same = jax.tree.map(np.array_equal, models.params_of(restored), after)
print(f"frozen {regions.size(core)} elements; restored equal: {all(jax.tree.leaves(same))}")
