"""The family tables: the NNX state is the params tree, every parameter has a role, and no
code outside ``models/`` decides a role from a name."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from conftest import run_cli
from flax import nnx
from hf_factory import FAMILIES, make_config

from jaxregion import models
from jaxregion.io import hf
from jaxregion.models.table import KINDS
from jaxregion.tree import flatten

ROOT = os.path.dirname(os.path.dirname(__file__))


def _cfg(family: str) -> models.ModelConfig:
    return models.from_hf_dict(make_config(family).to_dict())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_state_is_the_params_tree(family, model_factory):
    """A loaded model's nnx.Param state, flattened, is tree.flatten(params): names and bits;
    every Param carries its table axes as sharding metadata."""
    path = model_factory(family)
    model = hf.load_model(path)
    _, params = hf.load(path)
    state = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    flat = flatten(params)
    assert list(state) == list(flat)
    roles = models.roles(model.config)
    for n, v in state.items():
        a, b = np.asarray(v[...]), np.asarray(flat[n])
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), n
        assert v.get_metadata()["out_sharding"] == roles[n].axes, n
    assert jax.tree.structure(models.params_of(model)) == jax.tree.structure(params)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_parameter_has_a_role(family):
    cfg = _cfg(family)
    roles = models.roles(cfg)
    model = models.abstract(cfg)
    names = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    assert sorted(names) == sorted(roles)  # the modules make exactly the table's parameters
    shapes = models.shapes(cfg)
    for n, r in roles.items():
        assert r.name == n and r.kind in KINDS and len(r.axes) == len(shapes[n]), n
        if r.residual_axis is not None:
            assert shapes[n][r.residual_axis] == cfg.hidden_size, n
        if r.kind == "linear":  # fused experts have no wanda tap (inputs differ per expert)
            assert r.layer is not None and r.input_axis is not None, n
            assert (r.tap is None) == (r.expert_axis is not None and not r.is_router), n
    assert all(r.residual_axis is None for r in roles.values() if r.axes == ("head",))
    inferred = models.infer_roles(list(roles))  # names alone give the same roles ...
    if cfg.model_type == "qwen3_moe":  # ... but olmoe has the same names, with q/k norms
        # over all heads: bare names cannot tell the norms' widths
        inferred = {
            n: r
            if r.kind != "norm" or r.residual_axis is not None
            else dataclasses.replace(r, axes=roles[n].axes)
            for n, r in inferred.items()
        }
    assert inferred == roles
    # every tap the table names is an intermediate the forward pass produces, sized right
    tokens = jnp.zeros((1, 4), jnp.int32)
    _, inter = models.intermediates(models.params_of(models.build(cfg)), tokens, cfg)
    for n, r in roles.items():
        if r.tap is not None:
            assert inter[r.tap].shape[-1] == shapes[n][r.input_axis], n
    assert [inter[k].shape for k in models.residual_taps(cfg)] == [
        (1, 4, cfg.hidden_size)
    ] * cfg.num_layers
    # post-norm layers (olmo2) have no norm feeding attention: attn_out_norm stands in
    attn = "attn_norm" if any(r.tag == "attn_norm" for r in roles.values()) else "attn_out_norm"
    for tag in ("mlp_out", attn):
        assert sorted(r.layer for r in roles.values() if r.tag == tag) == list(
            range(cfg.num_layers)
        )


@pytest.mark.slow
def test_intermediates_through_the_layer_scan(model_factory):
    """Collecting intermediates keeps the remat scan: same values as the loop."""
    cfg, params = hf.load(model_factory("llama_gqa_llama3"))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12)))
    ha, a = models.intermediates(params, tokens, cfg)
    hb, b = jax.jit(lambda p, t: models.intermediates(p, t, cfg, remat=True))(params, tokens)
    assert set(a) == set(b)
    np.testing.assert_allclose(np.asarray(ha), np.asarray(hb), rtol=1e-6, atol=1e-6)
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_periodic_layers_scan_in_groups(model_factory):
    """gemma2's alternating sliding/global layers scan two layers a step (the fifth layer
    runs after the scan): loss, gradients and intermediates equal the unrolled loop's."""
    cfg, params = hf.load(model_factory("gemma2", num_hidden_layers=5))
    assert cfg.sliding_windows == (5, None, 5, None, 5)
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 12)))
    jaxpr = str(jax.make_jaxpr(lambda p: models.loss_fn(p, tokens, cfg, remat=True))(params))
    assert "scan" in jaxpr
    (la, ga), (lb, gb) = (
        jax.value_and_grad(models.loss_fn)(params, tokens, cfg, remat=r) for r in (False, True)
    )
    assert abs(float(la) - float(lb)) <= 1e-6 * abs(float(la))
    fa, fb = flatten(ga), flatten(gb)
    for k in fa:
        scale = float(np.max(np.abs(np.asarray(fa[k])))) or 1.0
        assert float(np.max(np.abs(np.asarray(fa[k]) - np.asarray(fb[k])))) <= 1e-5 * scale, k
    _, a = models.intermediates(params, tokens, cfg)
    _, b = jax.jit(lambda p, t: models.intermediates(p, t, cfg, remat=True))(params, tokens)
    assert set(a) == set(b)
    for k in a:  # float32 rounding of differently fused programs, as for the gradients
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert np.max(np.abs(x - y)) <= 1e-5 * np.max(np.abs(x)), k


# --- no name-based roles outside models/ ----------------------------------------------------
# Fragments of HF parameter names that only a role decision would look for.
ROLE_FRAGMENTS = (
    "_proj",
    "layernorm",
    "norm.",
    "ln_",
    "layers.",
    ".h.",
    "embed_tokens",
    "wte",
    "wpe",
    "lm_head",
    "c_attn",
    "c_fc",
    "self_attn",
    "mlp.",
    "q_norm",
    "k_norm",
    "transformer.",
    "model.layers",
    "model.norm",
    ".weight",
    ".bias",
)
# (file, start of the string): strings that name parameters for people, not for decisions.
ALLOWED = {
    # an example perturbation spec in the grammar shown to users (and in --help)
    ("interventions.py", "NAME[IDX]OP VALUE, IDX = comma-separated ints"),
    ("configs.py", "edit single entries, e.g. 'model.layers.1.mlp.down_proj.weight"),
    # examples of dims targets (names from the role tables) in --help
    ("configs.py", "comma-separated roles, e.g. input_norm,post_attention_layernorm"),
    # an example matrix name in the help of the battery's mask_maps section
    ("configs.py", "HF names of matrices, e.g. model.layers.1.mlp.up_proj.weight"),
    # prose naming the MLP output matrix in --help
    ("cli/experiment_cmd.py", "Region row/column concentration, massive activations, "),
}


def _strings(tree: ast.AST) -> list[ast.Constant]:
    docs = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            docs.add(id(body[0].value))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]


def test_no_role_decided_by_a_name_outside_models():
    pkg = os.path.join(ROOT, "jaxregion")
    found, used = [], set()
    for dirpath, _, files in os.walk(pkg):
        rel_dir = os.path.relpath(dirpath, pkg)
        if rel_dir.split(os.sep)[0] == "models":
            continue
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.normpath(os.path.join(rel_dir, f))
            with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for c in _strings(tree):
                if not any(frag in c.value for frag in ROLE_FRAGMENTS):
                    continue
                allowed = [(a, s) for a, s in ALLOWED if rel == a and c.value.startswith(s)]
                used.update(allowed)
                if not allowed:
                    found.append(f"{rel}:{c.lineno}: {c.value[:60]!r}")
    assert used == ALLOWED, f"stale allow-list entries: {ALLOWED - used}"
    assert not found, "role fragments of parameter names outside models/:\n" + "\n".join(found)


def test_regions_freeze_interventions_import_no_model():
    code = (
        "import sys, jaxregion.regions, jaxregion.freeze, jaxregion.interventions; "
        "print([m for m in sys.modules if m.startswith('jaxregion.models')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_example_nnx_script(model_factory, tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "example_nnx.py"),
            model_factory("llama_mha"),
            str(tmp_path / "ckpt"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert "restored equal: True" in p.stdout


def _small_battery(family: str, model_factory, corpus_dir, tmp_path) -> None:
    """``jaxregion experiment`` on a family's tiny model, dims analysis included: it must
    complete and find super weights and a sweep."""
    cfg = {
        "name": f"tiny-{family}",
        "model": model_factory(family),
        "out": str(tmp_path / "exp"),
        "languages": {k: f"{corpus_dir}/{k}.txt" for k in ("lat", "cyr")},
        "seq_len": 16,
        "max_seqs": 4,
        "eval_max_seqs": 2,
        "batch_size": 4,
        "random_seeds": [0],
        "dims": {"layer": 1, "auto_candidates": 1, "auto_controls": 1, "factors": [4.0]},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("experiment", str(path))
    assert code == 0, err
    res = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert res["dims"]["super_weights"] and res["dims"]["sweep"]


@pytest.mark.slow
def test_experiment_completes_on_qwen3(model_factory, corpus_dir, tmp_path):
    """qwen3's head-sized q/k norms are no residual tensors: the battery and its dims
    analysis run through (they crashed when roles came from name patterns)."""
    _small_battery("qwen3", model_factory, corpus_dir, tmp_path)


@pytest.mark.parametrize(
    "family", ["gemma2", "gemma3_text", "olmo2", "bloom", "phi3", "cohere_qk_norm"]
)
@pytest.mark.slow
def test_core_region_wanda_and_dims_smoke(family, model_factory, corpus_dir, tokenizer):
    """The analyses on each family's tiny model: a core region from Taylor scores, wanda on
    exactly the linear maps, a hidden-dim profile, massive activations, super weights, and a
    dims sweep whose target (the table's attn_norm / attn_out_norm) moves the perplexity."""
    from jaxregion import importance
    from jaxregion import regions as R
    from jaxregion.analysis import dims
    from jaxregion.data.packing import load_windows
    from jaxregion.data.sources import open_source

    cfg, params = hf.load(model_factory(family))
    wins = {
        lang: load_windows(open_source(f"{corpus_dir}/{lang}.txt").documents(), tokenizer, 16, 4)
        for lang in ("lat", "cyr")
    }
    scores = {
        lang: importance.compute_importance(params, cfg, w, batch_size=4).scores
        for lang, w in wins.items()
    }
    core = R.core(scores, ratio=0.05)
    roles = models.roles(cfg)
    assert set(core.universe) == {n for n, r in roles.items() if r.layer is not None}
    for n, m in flatten(core.mask).items():
        k = int(np.asarray(m).sum())
        assert k == (max(1, int(0.05 * np.asarray(m).size)) if n in core.universe else 0), n
    wanda = flatten(
        importance.compute_importance(params, cfg, wins["lat"], "wanda", batch_size=4).scores
    )
    for n, s in wanda.items():
        assert (np.count_nonzero(np.asarray(s)) > 0) == (roles[n].kind == "linear"), n
    profile = R.hidden_dim_profile(core, cfg.hidden_size)
    assert profile.shape == (cfg.hidden_size,) and profile.sum() > 0
    massive = dims.massive_activations(params, cfg, wins["lat"])
    assert [m["layer"] for m in massive] == list(range(cfg.num_layers))
    supers = dims.super_weight_candidates(params, cfg)
    assert {s["layer"] for s in supers} == set(range(cfg.num_layers))
    tokens = jnp.asarray(wins["lat"])

    def ppl(p: dict) -> dict[str, float]:
        return {"lat": float(np.exp(models.loss_fn(p, tokens, cfg)))}

    base = ppl(params)["lat"]
    points = dims.sweep(
        params, cfg, ppl, {"lat": base}, [supers[0]["hidden_dim"]], [], (0.0,), layer=1
    )
    assert len(points) == 1 and points[0].perplexity["lat"] != base


@pytest.mark.parametrize("family", ["gemma2", "olmo2", "bloom"])
@pytest.mark.slow
def test_experiment_completes_on_new_families(family, model_factory, corpus_dir, tmp_path):
    """The whole battery, dims analysis included, on gemma2 (sliding layers, soft-caps,
    sandwich norms), olmo2 (post-norm layers: no norm feeds attention) and bloom (ALiBi,
    fused head-interleaved qkv, an embedding LayerNorm off the layers)."""
    _small_battery(family, model_factory, corpus_dir, tmp_path)
