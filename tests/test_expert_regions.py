"""Expert-level regions: whole experts (their fused slices and router rows) ranked by summed
|score| or by routing share, per layer or globally, stored as element masks."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli

from jaxregion import regions as R
from jaxregion.io import hf
from jaxregion.models import abstract_params
from jaxregion.tree import flatten, unflatten

PARTS = ("mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def _cfg(model_factory):
    return hf.load_config(model_factory("mixtral"))


def _scores(cfg, planted: dict[int, int], lang_seed: int) -> dict:
    """Random |scores| below 1, and 5.0 on every element of the planted (layer: expert)."""
    rng = np.random.default_rng(lang_seed)
    flat = {
        n: rng.random(s.shape).astype(np.float32) for n, s in flatten(abstract_params(cfg)).items()
    }
    for i, e in planted.items():
        for p in PARTS:
            flat[f"model.layers.{i}.{p}"][e] = 5.0
    return unflatten({n: jnp.asarray(v) for n, v in flat.items()})


def _experts_in(region) -> set[tuple[int, int]]:
    """The (layer, expert) pairs whose every element is selected, checked to be whole."""
    st = R.stats(region)
    out = set()
    for k, c in st["by_expert"].items():
        assert c["selected"] in (0, c["numel"]), k  # whole experts only
        if c["selected"]:
            layer, e = map(int, k.split("."))
            out.add((layer, e))
    return out


def test_core_experts_by_importance_per_layer_and_global(model_factory, tmp_path):
    cfg = _cfg(model_factory)
    scores = {"aa": _scores(cfg, {0: 4, 1: 2}, 0), "bb": _scores(cfg, {0: 4, 1: 2}, 1)}
    per_layer = R.core(scores, ratio=1 / 8, scope="per-layer", granularity="expert")
    assert _experts_in(per_layer) == {(0, 4), (1, 2)}
    glob = R.core(scores, ratio=2 / 16, scope="global", granularity="expert")
    assert _experts_in(glob) == {(0, 4), (1, 2)}
    flat = flatten(per_layer.mask)
    assert not any(
        bool(np.asarray(v).any()) for n, v in flat.items() if not n.endswith(PARTS)
    )  # attention, norms: nothing
    # the file format is unchanged: an element mask, read back bit for bit
    path = str(tmp_path / "r.safetensors")
    R.save_region(path, per_layer)
    back = R.load_region(path)
    for n in R.universe_of(per_layer):
        np.testing.assert_array_equal(np.asarray(flatten(back.mask)[n]), np.asarray(flat[n]))
    assert back.meta["granularity"] == "expert"
    # region algebra works on them as on any mask
    bottom = R.bottom(scores, ratio=1 / 8, scope="per-layer", granularity="expert")
    assert not _experts_in(R.intersection(per_layer, bottom))
    rand = R.random(scores["aa"], ratio=2 / 8, seed=3, scope="per-layer", granularity="expert")
    assert len(_experts_in(rand)) == 4 and {li for li, _ in _experts_in(rand)} == {0, 1}


def test_experts_by_routing_share(model_factory):
    cfg = _cfg(model_factory)
    template = abstract_params(cfg)
    shares = {"aa": np.full((2, 8), 0.1), "bb": np.full((2, 8), 0.1)}
    shares["aa"][:, 3] = 1.0
    shares["bb"][:, 5] = 1.0
    shares["bb"][:, 3] = 0.5
    top = R.experts_by_routing("top", template, shares, 1 / 8, "per-layer", "aa")
    assert _experts_in(top) == {(0, 3), (1, 3)}
    core = R.experts_by_routing("core", template, shares, 1 / 8, "per-layer")
    assert _experts_in(core) == {(0, 3), (1, 3)}  # 1.5 beats bb's 1.1 at expert 5
    mono = R.experts_by_routing("monolingual", template, shares, 2 / 8, "per-layer", "bb")
    # bb's top-2 are 5 and 3; aa's are 3 and 0 (ties: lower index): only 5 is bb's alone
    assert _experts_in(mono) == {(0, 5), (1, 5)}
    assert top.meta["expert_rank"] == "routing"


def test_regions_cli_expert_granularity(model_factory, tmp_path):
    """The CLI: routing rank from an experts.json; stats list experts; bad input is one line
    with exit 2 (dense model, per-tensor scope, routing table of another shape)."""
    moe = model_factory("mixtral")
    routing = tmp_path / "experts.json"
    shares = np.full((2, 8), 0.1)
    shares[:, 6] = 0.9
    routing.write_text(json.dumps({"topk_share": {"aa": shares.tolist()}}))
    out = tmp_path / "r.safetensors"
    code, _, err = run_cli(
        "regions",
        "core",
        "--granularity",
        "expert",
        "--expert-rank",
        "routing",
        "--routing",
        str(routing),
        "--model",
        moe,
        "--ratio",
        "0.125",
        "--scope",
        "per-layer",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert _experts_in(R.load_region(str(out))) == {(0, 6), (1, 6)}
    code, stdout, err = run_cli("regions", "stats", str(out), "--json", str(tmp_path / "s.json"))
    assert code == 0, err
    st = json.loads((tmp_path / "s.json").read_text())
    assert {k for k, v in st["by_expert"].items() if v["selected"]} == {"0.6", "1.6"}
    bad_shape = tmp_path / "bad.json"
    bad_shape.write_text(json.dumps({"topk_share": {"aa": [[0.5] * 4]}}))
    for args in (
        ["random", "--model", model_factory("llama_mha"), "--scope", "per-layer"],
        ["random", "--model", moe, "--scope", "per-tensor"],
        [
            "core",
            "--expert-rank",
            "routing",
            "--routing",
            str(bad_shape),
            "--model",
            moe,
            "--scope",
            "per-layer",
        ],
    ):
        code, _, err = run_cli(
            "regions", *args, "--granularity", "expert", "--out", str(tmp_path / "x.safetensors")
        )
        assert code == 2 and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("kind", ["core", "random"])
def test_dense_model_refuses_expert_granularity(kind, model_factory):
    from jaxregion.errors import UserError

    template = abstract_params(hf.load_config(model_factory("llama_mha")))
    with pytest.raises(UserError, match="dense model"):
        R.select(
            kind,
            {"aa": template} if kind == "core" else None,
            template=template,
            ratio=0.5,
            scope="per-layer",
            granularity="expert",
        )
