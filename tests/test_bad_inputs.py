"""A matrix of mistaken or hostile inputs across every command (issue 11).

Each case runs the CLI in-process and must: exit 2, print exactly one stderr line that names
the file, key or value at fault (and says ``error:``), show no traceback, and change nothing
outside its own output directory (the whole workspace, inputs included, is hashed before
and after). Most cases fail before any model weights are read, so the matrix is fast.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from treesnap import diff, snapshot

from jaxregion.cli.main import main
from jaxregion.parallel import distributed

W = SimpleNamespace()  # the workspace: paths filled in by the `world` fixture


# --- the workspace -------------------------------------------------------------------------
def _copy_model(src: str, name: str, **config_edits) -> str:
    d = os.path.join(W.root, name)
    shutil.copytree(src, d)
    if config_edits:
        p = os.path.join(d, "config.json")
        cfg = json.load(open(p))
        cfg.update(config_edits)
        with open(p, "w") as f:
            f.write(json.dumps(cfg))  # NaN/Infinity stay as JSON.parse-able literals
    return d


def _raw_config(src: str, name: str, text: str) -> str:
    d = os.path.join(W.root, name)
    shutil.copytree(src, d)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(text)
    return d


def _raw_weights(
    src: str, name: str, header: object | bytes, data: bytes = b"\0" * 64, n: int | None = None
) -> str:
    d = os.path.join(W.root, name)
    shutil.copytree(src, d)
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(blob) if n is None else n) + blob + data)
    return d


def _index_model(src: str, name: str, weight_map: object) -> str:
    d = os.path.join(W.root, name)
    shutil.copytree(src, d)
    os.replace(os.path.join(d, "model.safetensors"), os.path.join(d, "shard-1.safetensors"))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return d


def _yaml(name: str, text: str) -> str:
    p = os.path.join(W.root, "cfg", name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text)
    return p


def _region_variant(name: str, **meta_edits) -> str:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(W.region, framework="np") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta.update(meta_edits)
    p = os.path.join(W.root, "regions", name)
    save_file(tensors, p, metadata=meta)
    return p


@pytest.fixture(scope="module")
def world(tmp_path_factory, model_factory, corpus_dir):
    from jaxregion.io import hf
    from jaxregion.models import abstract_params
    from jaxregion.regions import random as random_region
    from jaxregion.regions import save_region, save_scores
    from jaxregion.tree import flatten, unflatten

    W.root = str(tmp_path_factory.mktemp("world"))
    W.out = os.path.join(W.root, "out")
    good = model_factory("llama_mha")
    W.model = _copy_model(good, "model")
    os.makedirs(os.path.join(W.root, "data"))
    for lang in ("lat", "rom"):
        shutil.copy(os.path.join(corpus_dir, f"{lang}.txt"), os.path.join(W.root, "data"))
    W.lat, W.rom = (os.path.join(W.root, "data", f"{x}.txt") for x in ("lat", "rom"))
    with open(os.path.join(W.root, "data", "bad-utf8.txt"), "wb") as f:
        f.write(b"hello\n\xff\xfe world\n")
    with gzip.open(os.path.join(W.root, "data", "long.txt.gz"), "wb", compresslevel=1) as f:
        for _ in range(20):  # one 20 MiB line, beyond MAX_DOC_CHARS
            f.write(b"a" * (1 << 20))
    # importance files: two good languages, and directories mixing seq_len / dtype
    ck = hf.open_checkpoint(W.model)
    shapes = {n: tuple(x.shape) for n, x in flatten(abstract_params(ck.config)).items()}
    rng = np.random.default_rng(0)

    def scores_dir(name, metas):
        d = os.path.join(W.root, name)
        os.makedirs(d)
        for lang, extra in metas.items():
            tree = unflatten(
                {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
            )
            meta = {
                "language": lang,
                "estimator": "taylor",
                "seq_len": "16",
                "dtype": "float32",
                **extra,
            }
            save_scores(os.path.join(d, f"{lang}.safetensors"), tree, meta)
        return d

    W.scores = scores_dir("scores", {"lat": {}, "rom": {}})
    W.mixed_len = scores_dir("mixed_len", {"lat": {}, "rom": {"seq_len": "64"}})
    W.mixed_dtype = scores_dir("mixed_dtype", {"lat": {}, "rom": {"dtype": "bfloat16"}})
    os.makedirs(os.path.join(W.root, "regions"))
    W.region = os.path.join(W.root, "regions", "good.safetensors")
    tmpl = unflatten({n: np.zeros(s, np.float32) for n, s in shapes.items()})
    save_region(W.region, random_region(tmpl, 0.05, seed=0))
    W.region2 = os.path.join(W.root, "regions", "good2.safetensors")
    save_region(W.region2, random_region(tmpl, 0.05, seed=1))
    meta = json.loads(_region_meta(W.region)["meta"])
    W.r_shapes_list = _region_variant("shapes_list.safetensors", shapes="[[1, 2]]")
    shp = json.loads(_region_meta(W.region)["shapes"])
    first = next(iter(shp))
    W.r_neg_dims = _region_variant("neg.safetensors", shapes=json.dumps({**shp, first: [-1, 4]}))
    W.r_ratio = _region_variant("ratio.safetensors", meta=json.dumps({**meta, "ratio": "abc"}))
    W.r_meta_list = _region_variant("metalist.safetensors", meta="[1, 2]")
    W.r_shapes_bad = _region_variant("shapesbad.safetensors", shapes="{not json")
    # model directories with one thing wrong each
    W.m = {}
    for name, edits in {
        "eps_neg": {"rms_norm_eps": -1},
        "eps_zero": {"rms_norm_eps": 0},
        "heads0": {"num_attention_heads": 0},
        "layers_huge": {"num_hidden_layers": 10**9},
        "layers_bool": {"num_hidden_layers": True},
        "vocab_str": {"vocab_size": "abc"},
        "theta_neg": {"rope_parameters": {"rope_type": "default", "rope_theta": -5.0}},
        "kv3": {"num_key_value_heads": 3},
        "eps_nan": {"rms_norm_eps": float("nan")},
        "maxpos_neg": {"max_position_embeddings": -1},
        "hidden_odd": {"hidden_size": 66, "head_dim": None},
        "mt_list": {"model_type": ["x"]},
    }.items():
        W.m[name] = _copy_model(W.model, f"m_{name}", **edits)
    W.m["cfg_list"] = _raw_config(W.model, "m_cfg_list", "[1, 2, 3]")
    W.m["cfg_deep"] = _raw_config(W.model, "m_cfg_deep", "[" * 100000 + "]" * 100000)
    t = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}
    for name, header, kw in [
        ("st_list", [1, 2], {}),
        ("st_deep", b"[" * 200000 + b"]" * 200000, {}),
        ("st_dtype", {"w": {**t, "dtype": "F8X"}}, {}),
        ("st_overflow", {"w": {**t, "shape": [2**40, 2**40, 2**40]}}, {}),
        ("st_negoff", {"w": {**t, "data_offsets": [-64, 0]}}, {}),
        (
            "st_overlap",
            {
                "a": {**t, "shape": [2, 4], "data_offsets": [0, 32]},
                "b": {**t, "shape": [2, 4], "data_offsets": [16, 48]},
            },
            {},
        ),
        ("st_beyond", {"w": {**t, "shape": [40, 40], "data_offsets": [0, 6400]}}, {}),
        ("st_hugelen", {"w": t}, {"n": 2**40}),
        ("st_meta", {"__metadata__": {"a": 1}, "w": t}, {}),
        ("st_shape_bool", {"w": {**t, "shape": [True, 16]}}, {}),
        ("st_entry", {"w": "nope"}, {}),
    ]:
        W.m[name] = _raw_weights(W.model, f"m_{name}", header, **kw)
    from safetensors.numpy import load_file, save_file

    nan_dir = _copy_model(W.model, "m_nan_weights")
    weights = load_file(os.path.join(nan_dir, "model.safetensors"))
    for k in weights:
        if "layers.0.mlp.down_proj" in k:
            weights[k][0, 0] = np.nan
    save_file(weights, os.path.join(nan_dir, "model.safetensors"), metadata={"format": "pt"})
    W.m["nan_weights"] = nan_dir
    secret = os.path.join(W.root, "secret.bin")
    with open(secret, "wb") as f:
        f.write(b"SECRETBYTES-0123456789")
    W.m["idx_nonstr"] = _index_model(W.model, "m_idx_nonstr", {"lm_head.weight": 5})
    W.m["idx_outside"] = _index_model(W.model, "m_idx_outside", {"lm_head.weight": secret})
    W.m["idx_dotdot"] = _index_model(W.model, "m_idx_dotdot", {"lm_head.weight": "../secret.bin"})
    W.m["idx_list"] = _index_model(W.model, "m_idx_list", ["a", "b"])
    # YAML configs
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    W.y = {
        "bomb": _yaml("bomb.yaml", bomb),
        "notmap": _yaml("notmap.yaml", "- 1\n- 2\n"),
        "lang_dotdot": _yaml(
            "ld.yaml",
            f"model: {W.model}\nlanguages: {{'../../evil': "
            f"{W.lat}, rom: {W.rom}}}\nout: {W.out}/e\n",
        ),
        "lang_abs": _yaml(
            "la.yaml",
            f"model: {W.model}\nlanguages: {{lat: {W.lat}, rom: "
            f"{W.rom}}}\neval_languages: {{'/tmp/x': {W.lat}}}\n"
            f"out: {W.out}/e\n",
        ),
        "seed_bool": _yaml(
            "sb.yaml",
            f"model: {W.model}\nlanguages: {{lat: {W.lat}, rom: "
            f"{W.rom}}}\nrandom_seeds: [true, 2]\nout: {W.out}/e\n",
        ),
        "ratio_str": _yaml(
            "rs.yaml",
            f"model: {W.model}\nlanguages: {{lat: {W.lat}, rom: "
            f"{W.rom}}}\nratio: abc\nout: {W.out}/e\n",
        ),
        "unknown": _yaml(
            "uk.yaml",
            f"model: {W.model}\nlanguages: {{lat: {W.lat}, rom: {W.rom}}}\nbogus_key: 1\n",
        ),
        "huge": _yaml("huge.yaml", "a: " + "x" * (2 << 20) + "\n"),
        "f_target": _yaml(
            "ft.yaml",
            f"model: {W.model}\ntarget: '../t'\ntarget_train: "
            f"{W.lat}\nevals: {{'../t': {W.lat}, rom: {W.rom}}}\n"
            "settings: [{name: none}]\n",
        ),
        "f_setting": _yaml(
            "fs.yaml",
            f"model: {W.model}\ntarget: lat\ntarget_train: {W.lat}\n"
            f"evals: {{lat: {W.lat}, rom: {W.rom}}}\n"
            "settings: [{name: '../../s'}]\n",
        ),
        "pre_bool": _yaml("pb.yaml", "batch_size: true\n"),
    }
    _world23(W)
    return W


def _world23(w: SimpleNamespace) -> None:
    """Inputs of issue 23's cases: tasks, halves, user directories, odd files."""
    import pathlib

    from safetensors.numpy import load_file, save_file
    from test_lm_eval import write_tasks

    w.tasks = os.path.join(w.root, "tasks")
    os.makedirs(w.tasks)
    write_tasks(pathlib.Path(w.tasks))
    w.tasks_bad = os.path.join(w.root, "tasks_bad")
    os.makedirs(w.tasks_bad)
    with open(os.path.join(w.tasks_bad, "jr_bad.yaml"), "w") as f:
        f.write("task: jr_bad\ndataset_path: json\n  output_type: [unclosed\n")
    # an importance directory with split halves
    w.scores_h = os.path.join(w.root, "scores_h")
    shutil.copytree(w.scores, w.scores_h)
    os.makedirs(os.path.join(w.scores_h, ".halves"))
    for lang in ("lat", "rom"):
        shutil.copy(
            os.path.join(w.scores, f"{lang}.safetensors"),
            os.path.join(w.scores_h, ".halves", f"{lang}.safetensors"),
        )
    # a user's sharded checkpoint and another user directory (not made by jaxregion)
    weights = load_file(os.path.join(w.model, "model.safetensors"))
    w.sharded = _index_model(w.model, "user_sharded", {k: "shard-1.safetensors" for k in weights})
    w.userdir = os.path.join(w.root, "userdir")
    os.makedirs(w.userdir)
    with open(os.path.join(w.userdir, "config.json"), "w") as f:
        f.write('{"mine": true}\n')
    w.loop = os.path.join(w.root, "loop")
    os.symlink(w.loop, w.loop)  # a symlink loop
    w.afile = os.path.join(w.root, "afile")
    with open(w.afile, "w") as f:
        f.write("a file, not a directory\n")
    w.adir = os.path.join(w.root, "adir")
    os.makedirs(w.adir)
    # an int8 tensor inside a float32 checkpoint
    int8_dir = _copy_model(w.model, "m_int8")
    wt = load_file(os.path.join(int8_dir, "model.safetensors"))
    k = next(k for k in wt if "layers.0.mlp.up_proj" in k)
    wt[k] = np.clip(wt[k] * 100, -127, 127).astype(np.int8)
    save_file(wt, os.path.join(int8_dir, "model.safetensors"), metadata={"format": "pt"})
    w.m["int8"] = int8_dir
    # a region file without a tensor its shapes metadata lists
    from safetensors import safe_open

    with safe_open(w.region, framework="np") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    w.dropped = sorted(tensors)[0]
    del tensors[w.dropped]
    w.r_missing = os.path.join(w.root, "regions", "missing.safetensors")
    save_file(tensors, w.r_missing, metadata=meta)
    # prompts: a lone surrogate in a row, and a FIFO without a writer
    w.prompts_sur = os.path.join(w.root, "data", "sur.jsonl")
    with open(w.prompts_sur, "w") as f:
        f.write('{"prompt": "fine"}\n{"prompt": "bad \\ud800 row"}\n')
    w.fifo = os.path.join(w.root, "data", "fifo.jsonl")
    os.mkfifo(w.fifo)
    w.y["dup"] = _yaml(
        "dup.yaml",
        f"model: {w.model}\nlanguages:\n  lat: {w.lat}\n"
        f"  rom: {w.rom}\n  lat: {w.rom}\nout: {w.out}/e\nseq_len: 16\n",
    )
    w.y["factors"] = _yaml(
        "factors.yaml",
        f"model: {w.model}\nlanguages: {{lat: {w.lat}, "
        f"rom: {w.rom}}}\nout: {w.out}/e\nseq_len: 16\n"
        "dims: {factors: [4.0, 1e39]}\n",
    )


def _region_meta(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return dict(f.metadata())


# --- the cases ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    argv: tuple  # strings, or callables of the workspace
    must: str  # a substring of the one error line (the file, key or value at fault)
    kind: str = ""  # issue 23's kind of failure (see KINDS); "" for older cases
    before_work: bool = False  # refused before any checkpoint is opened


def _ev(*extra, model=lambda w: w.model, text=lambda w: f"lat={w.lat}"):
    return ("eval", "--model", model, "--text", text, "--seq-len", "16", "--max-seqs", "2", *extra)


def _imp(text, *extra, out=lambda w: f"{w.out}/imp"):
    return (
        "importance",
        "--model",
        lambda w: w.model,
        "--text",
        text,
        "--seq-len",
        "16",
        "--max-seqs",
        "2",
        "--estimator",
        "magnitude",
        "--out",
        out,
        *extra,
    )


def _tr(*extra, text=lambda w: f"lat={w.lat}"):
    return (
        "train",
        "--model",
        lambda w: w.model,
        "--text",
        text,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--max-seqs",
        "4",
        "--ckpt-dir",
        lambda w: f"{w.out}/ck",
        "--no-progress",
        *extra,
    )


def _m(name):
    return _ev(model=lambda w: w.m[name])


def _rg(kind, *extra):
    return (
        "regions",
        kind,
        "--importance",
        lambda w: w.scores,
        "--ratio",
        "0.05",
        "--out",
        lambda w: f"{w.out}/r.safetensors",
        *extra,
    )


PERT = "model.layers.0.mlp.down_proj.weight[0,0]"
CASES: dict[str, object] = {
    # names are data, never paths
    "imp lang abs path": Case(_imp(lambda w: f"{w.root}/victim={w.lat}"), "language name"),
    "imp lang dotdot": Case(_imp(lambda w: f"../../x={w.lat}"), "'../../x'"),
    "imp lang slash": Case(_imp(lambda w: f"a/b={w.lat}"), "'a/b'"),
    "imp lang dot": Case(_imp(lambda w: f".hidden={w.lat}"), "'.hidden'"),
    "imp lang space": Case(_imp(lambda w: f"e n={w.lat}"), "'e n'"),
    "imp lang too long": Case(_imp(lambda w: f"{'x' * 65}={w.lat}"), "at most 64"),
    "imp lang empty": Case(_imp(lambda w: f"={w.lat}"), "LANG=SOURCE"),
    "eval lang dotdot": Case(_ev(text=lambda w: f"../x={w.lat}"), "'../x'"),
    "train lang slash": Case(_tr(text=lambda w: f"a/b={w.lat}"), "'a/b'"),
    "train eval lang": Case(_tr("--eval", lambda w: f"../e={w.lat}"), "'../e'"),
    "experiment lang key": Case(("experiment", lambda w: w.y["lang_dotdot"]), "'../../evil'"),
    "experiment eval key": Case(("experiment", lambda w: w.y["lang_abs"]), "'/tmp/x'"),
    "forgetting target": Case(("forgetting", lambda w: w.y["f_target"]), "'../t'"),
    "forgetting setting": Case(("forgetting", lambda w: w.y["f_setting"]), "'../../s'"),
    "regions langs": Case(_rg("core", "--langs", "../lat,rom"), "'../lat'"),
    "regions lang": Case(
        (
            "regions",
            "top",
            "--importance",
            lambda w: w.scores,
            "--lang",
            "../x",
            "--out",
            lambda w: f"{w.out}/r.safetensors",
        ),
        "'../x'",
    ),
    # config.json numbers
    "eps negative": Case(_m("eps_neg"), "rms_norm_eps"),
    "eps zero": Case(_m("eps_zero"), "rms_norm_eps"),
    "eps nan": Case(_m("eps_nan"), "rms_norm_eps"),
    "heads zero": Case(_m("heads0"), "num_attention_heads"),
    "layers 1e9": Case(_m("layers_huge"), "1000000000 layers"),
    "layers bool": Case(_m("layers_bool"), "num_hidden_layers"),
    "vocab str": Case(_m("vocab_str"), "vocab_size"),
    "rope_theta negative": Case(_m("theta_neg"), "rope_theta"),
    "kv heads not dividing": Case(_m("kv3"), "num_key_value_heads"),
    "max positions negative": Case(_m("maxpos_neg"), "max_position_embeddings"),
    "hidden not multiple of heads": Case(_m("hidden_odd"), "not a multiple"),
    "model_type list": Case(_m("mt_list"), "model_type"),
    "config.json a list": Case(_m("cfg_list"), "expected a JSON object"),
    "config.json deep": Case(_m("cfg_deep"), "config.json"),
    "NaN weights: eval": Case(_m("nan_weights"), "the loss is nan"),
    "NaN weights: importance": Case(
        (
            "importance",
            "--model",
            lambda w: w.m["nan_weights"],
            "--text",
            lambda w: f"lat={w.lat}",
            "--seq-len",
            "16",
            "--estimator",
            "magnitude",
            "--out",
            lambda w: f"{w.out}/imp",
        ),
        "not finite",
    ),
    # safetensors headers
    "st header a list": Case(_m("st_list"), "not an object"),
    "st header deep": Case(_m("st_deep"), "nested too deeply"),
    "st unknown dtype": Case(_m("st_dtype"), "F8X"),
    "st shape overflow": Case(_m("st_overflow"), "needs"),
    "st negative offset": Case(_m("st_negoff"), "data_offsets"),
    "st overlap": Case(_m("st_overlap"), "overlap"),
    "st beyond file": Case(_m("st_beyond"), "truncated or corrupt"),
    "st header length": Case(_m("st_hugelen"), "limit"),
    "st metadata types": Case(_m("st_meta"), "__metadata__"),
    "st shape bool": Case(_m("st_shape_bool"), "bad shape"),
    "st entry not object": Case(_m("st_entry"), "not an object"),
    # index files
    "index non-string": Case(_m("idx_nonstr"), "lm_head.weight"),
    "index absolute": Case(_m("idx_outside"), "beside the index"),
    "index dotdot": Case(_m("idx_dotdot"), "../secret.bin"),
    "index list": Case(_m("idx_list"), "weight_map"),
    # interventions
    "perturb nan": Case(_ev("--perturb", f"{PERT}*nan"), "not a finite"),
    "perturb inf": Case(_ev("--perturb", f"{PERT}=inf"), "not a finite"),
    "region-op noise -inf": Case(
        _ev("--region", lambda w: w.region, "--region-op", "noise:-inf"), "noise:-inf"
    ),
    "region-op scale nan": Case(
        _ev("--region", lambda w: w.region, "--region-op", "scale:nan"), "scale:nan"
    ),
    "region-op noise negative": Case(
        _ev("--region", lambda w: w.region, "--region-op", "noise:-1"), "noise:-1"
    ),
    "region-op unknown": Case(_ev("--region", lambda w: w.region, "--region-op", "melt"), "'melt'"),
    # importance files that cannot be combined
    "mixed seq_len": Case(
        (
            "regions",
            "core",
            "--importance",
            lambda w: w.mixed_len,
            "--ratio",
            "0.05",
            "--out",
            lambda w: f"{w.out}/r.safetensors",
        ),
        "seq_len",
    ),
    "mixed dtype": Case(
        (
            "regions",
            "core",
            "--importance",
            lambda w: w.mixed_dtype,
            "--ratio",
            "0.05",
            "--out",
            lambda w: f"{w.out}/r.safetensors",
        ),
        "dtype",
    ),
    # region-file metadata
    "region shapes list": Case(("regions", "stats", lambda w: w.r_shapes_list), "shapes"),
    "region negative dims": Case(("regions", "stats", lambda w: w.r_neg_dims), "shapes["),
    "region ratio abc": Case(("regions", "stats", lambda w: w.r_ratio), "ratio"),
    "region meta list": Case(("regions", "stats", lambda w: w.r_meta_list), "meta"),
    "region shapes not json": Case(("regions", "stats", lambda w: w.r_shapes_bad), "shapes"),
    "eval region ratio abc": Case(_ev("--region", lambda w: w.r_ratio), "ratio"),
    # outputs never replace inputs
    "regions out = score file": Case(
        _rg("core")[:-2] + ("--out", lambda w: f"{w.scores}/lat.safetensors"), "lat.safetensors"
    ),
    "eval json = config.json": Case(
        _ev("--json", lambda w: f"{w.model}/config.json"), "config.json"
    ),
    "eval json = text": Case(_ev("--json", lambda w: w.lat), "lat.txt"),
    "stats json = region": Case(
        ("regions", "stats", lambda w: w.region, "--json", lambda w: w.region), "good.safetensors"
    ),
    "compare json = input": Case(
        (
            "regions",
            "compare",
            lambda w: w.region,
            lambda w: w.region2,
            "--json",
            lambda w: w.region2,
        ),
        "good2.safetensors",
    ),
    "importance lang=model": Case(
        _imp(lambda w: f"model={w.lat}", out=lambda w: w.model), "is an input", before_work=True
    ),
    "eval json symlink to input": Case(_ev("--json", lambda w: f"{w.out}/link.json"), "link.json"),
    # YAML
    "yaml alias bomb": Case(("experiment", lambda w: w.y["bomb"]), "expands to more than"),
    "yaml not a mapping": Case(("experiment", lambda w: w.y["notmap"]), "expected a mapping"),
    "yaml unknown key": Case(("experiment", lambda w: w.y["unknown"]), "bogus_key"),
    "yaml too large": Case(("experiment", lambda w: w.y["huge"]), "larger than"),
    "yaml ratio abc": Case(("experiment", lambda w: w.y["ratio_str"]), "ratio"),
    # text
    "text bad utf-8": Case(_ev(text=lambda w: f"lat={w.root}/data/bad-utf8.txt"), "UTF-8"),
    "text 20 MiB line": Case(_ev(text=lambda w: f"lat={w.root}/data/long.txt.gz"), "longer than"),
    "text missing": Case(_ev(text=lambda w: f"lat={w.root}/data/nope.txt"), "nope.txt"),
    # other flags
    "coordinator without port": Case(
        ("regions", "stats", lambda w: w.region, "--coordinator", "nohost"), "HOST:PORT"
    ),
    "mesh malformed on regions": Case(
        ("regions", "stats", lambda w: w.region, "--mesh", "data"), "--mesh"
    ),
    "coordinator unreachable": Case(
        (
            "regions",
            "stats",
            lambda w: w.region,
            "--coordinator",
            "127.0.0.1:1",
            "--num-processes",
            "2",
            "--process-id",
            "1",
        ),
        "127.0.0.1:1",
    ),
    "hub model offline": Case(_ev(model="nobody-here/no-such-model"), "nobody-here"),
    "hub dataset offline": Case(_ev(text="lat=hf:nobody-here/no-such-data:train"), "nobody-here"),
    "model missing dir": Case(_ev(model=lambda w: f"{w.root}/nope"), "nope"),
    "train steps 0": Case(_tr()[:5] + ("--steps", "0") + _tr()[7:], "--steps"),
    "train lr nan": Case(_tr("--lr", "nan"), "--lr"),
    # numeric options (issue 10's validation layer)
    "eval batch-size -3": Case(_ev("--batch-size", "-3"), "batch"),
    "eval batch-size 0": Case(_ev("--batch-size", "0"), "batch"),
    "train eval-batch-size -1": Case(
        _tr("--eval", lambda w: f"lat={w.lat}", "--eval-batch-size", "-1"), "batch"
    ),
    "eval seed 2**70": Case(
        _ev("--region", lambda w: w.region, "--region-op", "noise:0.1", "--seed", str(2**70)),
        "--seed",
    ),
    "importance batch-size 0": Case(
        _imp(lambda w: f"lat={w.lat}", "--batch-size", "0"), "--batch-size"
    ),
    "eval seq-len 0": Case(_ev("--seq-len", "0"), "--seq-len"),
    "eval max-seqs -1": Case(_ev("--max-seqs", "-1"), "--max-seqs"),
    # numeric checks of the config layer (YAML booleans are not integers)
    "yaml seed true": Case(("experiment", lambda w: w.y["seed_bool"]), "random_seeds"),
    "pretrain yaml batch_size true": Case(
        (
            "pretrain",
            "--config",
            lambda w: w.y["pre_bool"],
            "--tokenizer",
            lambda w: w.model,
            "--out",
            lambda w: f"{w.out}/pre",
            "--ckpt-dir",
            lambda w: f"{w.out}/pck",
            "--steps",
            "1",
            "--text",
            lambda w: f"lat={w.lat}",
        ),
        "batch_size",
    ),
}


# --- issue 23: every case that failed when tried as a new user would ------------------------
KINDS = ("overwrite/delete", "stale/wrong numbers", "tracebacks/hangs", "late/unclear")
OW, WRONG, TB, LATE = KINDS


def _gen(*extra, model=lambda w: w.model):
    return ("generate", "--model", model, "--max-new-tokens", "2", *extra)


def _tasks(*extra, include=lambda w: w.tasks):
    return (
        "tasks",
        "--model",
        lambda w: w.model,
        "--tasks",
        "jr_mc",
        "--include-path",
        include,
        "--limit",
        "2",
        *extra,
    )


CASES23: dict[str, Case] = {
    "eval json = tokenizer.json": Case(
        _ev("--json", lambda w: f"{w.model}/tokenizer.json"), "tokenizer.json", OW, True
    ),
    "generate json = tokenizer_config": Case(
        _gen("--prompt", "Ana", "--json", lambda w: f"{w.model}/tokenizer_config.json"),
        "tokenizer_config.json",
        OW,
        True,
    ),
    "tasks json = tokenizer.json": Case(
        _tasks("--json", lambda w: f"{w.model}/tokenizer.json"), "tokenizer.json", OW, True
    ),
    "tasks json = task yaml": Case(
        _tasks("--json", lambda w: f"{w.tasks}/jr_mc.yaml"), "jr_mc.yaml", OW, True
    ),
    "regions out = split half": Case(
        (
            "regions",
            "core",
            "--importance",
            lambda w: w.scores_h,
            "--ratio",
            "0.05",
            "--out",
            lambda w: f"{w.scores_h}/.halves/lat.safetensors",
        ),
        ".halves",
        OW,
        True,
    ),
    "train export = user's sharded ckpt": Case(
        _tr("--export", lambda w: w.sharded), "--force", OW, True
    ),
    "train export = user's directory": Case(
        _tr("--export", lambda w: w.userdir), "--force", OW, True
    ),
    "yaml duplicate key": Case(("experiment", lambda w: w.y["dup"]), "lines 3 and 5", WRONG),
    "generate temperature 1e-40": Case(
        _gen("--prompt", "Ana", "--temperature", "1e-40"), "--temperature", WRONG, True
    ),
    "perturb *1e39": Case(_ev("--perturb", f"{PERT}*1e39"), "--perturb", WRONG, True),
    "region-op set:1e39": Case(
        _ev("--region", lambda w: w.region, "--region-op", "set:1e39"), "--region-op", WRONG, True
    ),
    "dims --factors 1e39": Case(
        (
            "dims",
            "--model",
            lambda w: w.model,
            "--text",
            lambda w: f"lat={w.lat}",
            "--factors",
            "4,1e39",
        ),
        "--factors",
        WRONG,
        True,
    ),
    "yaml dims.factors 1e39": Case(
        ("experiment", lambda w: w.y["factors"]), "dims.factors", WRONG, True
    ),
    "int8 tensor in float32 ckpt": Case(_m("int8"), "int8", WRONG),
    "region file lacks a tensor": Case(
        ("regions", "stats", lambda w: w.r_missing), "missing.safetensors", WRONG
    ),
    "prompt lone surrogate": Case(_gen("--prompt", "Ana \udcff"), "--prompt", TB, True),
    "prompts row lone surrogate": Case(
        _gen("--prompts", lambda w: w.prompts_sur), "sur.jsonl:2", TB, True
    ),
    "text arg not UTF-8": Case(
        _ev(text=lambda w: f"lat={w.root}/data/\udcffx.txt"), "--text", TB, True
    ),
    "prompts FIFO": Case(_gen("--prompts", lambda w: w.fifo), "fifo.jsonl", TB, True),
    "train export = model dir": Case(_tr("--export", lambda w: w.model), "--export", LATE, True),
    "train export symlink loop": Case(_tr("--export", lambda w: w.loop), "loop", LATE, True),
    "eval json onto a directory": Case(_ev("--json", lambda w: w.adir), "adir", LATE, True),
    "eval json under a file": Case(
        _ev("--json", lambda w: f"{w.afile}/o.json"), "afile", LATE, True
    ),
    "tasks malformed yaml": Case(
        (
            "tasks",
            "--model",
            lambda w: w.model,
            "--tasks",
            "jr_bad",
            "--include-path",
            lambda w: w.tasks_bad,
        ),
        "jr_bad.yaml",
        LATE,
    ),
}
CASES.update(CASES23)

PARAMS = [pytest.param(c, id=n) for n, c in CASES.items()]


def test_matrix_is_large_enough():
    assert len(CASES) >= 60


def _no_work(*_a, **_k):
    raise AssertionError("a checkpoint was opened before the refusal")


class Hang(BaseException):
    """Raised by SIGALRM in a hanging case (no OSError: the CLI must not catch it)."""


def _timeout(*_a):
    raise Hang("the command still runs after 60 s")


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input(world, case, capsys, monkeypatch):
    import signal

    from jaxregion.io import hf

    w = world
    if os.path.isdir(w.out):
        shutil.rmtree(w.out)
    os.makedirs(w.out)
    os.symlink(os.path.join(w.model, "config.json"), os.path.join(w.out, "link.json"))
    argv = [a(w) if callable(a) else a for a in case.argv]
    before = snapshot(w.root, w.out)
    distributed.shutdown()  # in-process: let each case join (or refuse) the run afresh
    monkeypatch.setenv("JAXREGION_INIT_TIMEOUT", "2")
    if case.before_work:
        monkeypatch.setattr(hf, "open_checkpoint", _no_work)
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(60)
    try:
        code = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0], err
    assert case.must in lines[0], lines[0]
    assert "SECRETBYTES" not in err
    after = snapshot(w.root, w.out)
    assert after == before, f"changed outside --out: {diff(before, after)[:5]}"
    if case.before_work:
        assert sorted(os.listdir(w.out)) == ["link.json"], os.listdir(w.out)
    assert os.readlink(os.path.join(w.out, "link.json")) == os.path.join(w.model, "config.json")


def test_disk_full_is_one_line(world, capsys, monkeypatch):
    """safetensors reports a failed write as SafetensorError, which is no OSError."""
    import safetensors

    from jaxregion.regions import files

    def full(*_a, **_k):
        raise safetensors.SafetensorError("Error while serializing: No space left on device")

    monkeypatch.setattr(files, "save_file", full)
    w = world
    shutil.rmtree(w.out, ignore_errors=True)
    os.makedirs(w.out)
    distributed.shutdown()
    capsys.readouterr()
    code = main(
        [
            "regions",
            "core",
            "--importance",
            w.scores,
            "--ratio",
            "0.05",
            "--out",
            f"{w.out}/r.safetensors",
        ]
    )
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "No space left" in lines[0], err
    assert os.listdir(w.out) == []  # no temporary file left behind
