"""GGUF import on tiny files written here with ``gguf.GGUFWriter``, for every family that has
GGUF names: the names agree with the gguf package's own map, every tensor equals
transformers' GGUF loader bit for bit (F32, F16 and the types gguf can quantize; the
K-quants of the real files are in test_real_models.py), float32 logits agree with
transformers within 1e-4, and bad files are one line and exit 2 with nothing written.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from jaxregion.cli.main import main
from jaxregion.io import gguf_import

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

# config.json of each tiny model (the HF side); the GGUF metadata is written from it with
# the family table's key map, the tensors with llama.cpp's layout (the inverse transforms)
BASE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    vocab_size=128,
)
TINY = {
    "llama": dict(BASE, head_dim=16),
    "qwen2": BASE,
    # transformers reads no head_dim from a qwen3 GGUF: its default (128), as in every Qwen3
    "qwen3": dict(BASE, head_dim=128),
    "gemma": dict(BASE, head_dim=16),
    "gemma2": dict(
        BASE,
        head_dim=16,
        sliding_window=4,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    ),
    "gemma3": dict(BASE, head_dim=16, sliding_window=4),
    "phi3": dict(BASE, intermediate_size=96),
    # transformers reads a gpt2 GGUF's context_length as n_ctx, so n_positions stays 1024
    "gpt2": dict(
        n_layer=2,
        n_positions=1024,
        n_embd=64,
        n_inner=256,
        n_head=4,
        layer_norm_epsilon=1e-5,
        vocab_size=128,
    ),
}
NO_TRANSFORMERS = {"gemma"}  # transformers' GGUF loader has no gemma (1) architecture


def _inverse(name: str, w: np.ndarray, d: dict) -> np.ndarray:
    """llama.cpp's layout change (what gguf_import undoes)."""
    if name == "minus_one":
        return w + 1
    if name == "transpose":
        return np.ascontiguousarray(w.T)
    heads = d["num_attention_heads"] if name == "rope_q" else d["num_key_value_heads"]
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def tiny_config(arch: str) -> dict:
    """config.json of the tiny ``arch`` model."""
    entry = gguf_import.archs()[arch]
    return dict(TINY[arch], model_type=entry.model_type, tie_word_embeddings=True)


def write_tiny(
    path: str,
    arch: str,
    qtype=Q.F32,
    *,
    d: dict | None = None,
    seed: int = 0,
    tensors=None,
    arch_name: str | None = None,
    extra_tensors: dict | None = None,
) -> dict:
    """A tiny random model of ``arch`` as a GGUF file; returns ``{hf name: float32 array}``:
    what reading an F32 file must give (``1 + w`` norms come back as ``(1 + w) - 1``)."""
    from jaxregion.models.config import from_hf_dict
    from jaxregion.models.spec import shapes

    entry = gguf_import.archs()[arch]
    d = d or tiny_config(arch)
    cfg = from_hf_dict(d)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, arch_name or arch)
    for hf_key, g_key in entry.config.items():
        v = d.get(hf_key)
        if isinstance(v, float):
            w.add_float32(f"{arch}.{g_key}", v)
        elif isinstance(v, int):
            w.add_uint32(f"{arch}.{g_key}", v)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(d["vocab_size"])])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    layers = cfg.num_layers
    names = {
        h.format(i=i): (g.format(i=i), entry.transforms.get(g))
        for h, g in entry.names.items()
        for i in (range(layers) if "{i}" in h else (None,))
    }
    out = {}
    for name, shape in (tensors or shapes(cfg)).items():
        g_name, tr = names[name]
        arr = (rng.standard_normal(shape) * 0.5).astype(np.float32)
        stored = _inverse(tr, arr, d) if tr else arr
        out[name] = stored - 1 if tr == "minus_one" else arr
        if qtype == Q.F32 or stored.ndim == 1:
            w.add_tensor(g_name, stored)
        elif qtype == Q.F16:
            w.add_tensor(g_name, stored.astype(np.float16))
        else:
            w.add_tensor(g_name, gguf.quants.quantize(stored, qtype), raw_dtype=qtype)
    for g_name, arr in (extra_tensors or {}).items():
        w.add_tensor(g_name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_names_agree_with_the_gguf_package():
    """Each table's GGUF names are the ones gguf's TensorNameMap gives for its HF names."""
    from gguf.constants import MODEL_ARCH_NAMES

    arch_ids = {v: k for k, v in MODEL_ARCH_NAMES.items()}
    for arch, entry in gguf_import.archs().items():
        m = gguf.get_tensor_name_map(arch_ids[arch], 3)
        for hf, g in entry.names.items():
            base, _, suffix = hf.format(i=1).rpartition(".")
            assert m.get_name(base) + "." + suffix == g.format(i=1), (arch, hf)


@pytest.mark.parametrize("arch", list(TINY))
@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0, Q.Q5_1, Q.Q4_0])
def test_tensors_equal_transformers_bitwise(tmp_path, arch, qtype):
    path = str(tmp_path / f"{arch}.gguf")
    written = write_tiny(path, arch, qtype)  # the K-quants: in the real-model tier
    ours = gguf_import.open_gguf(path).tensors
    assert set(ours.keys()) == set(written)
    if qtype == Q.F32:  # stored exactly: the transforms invert llama.cpp's
        for n, arr in written.items():
            assert np.array_equal(ours.read(n), arr), n
    if arch in NO_TRANSFORMERS:
        return
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    meta = load_gguf_checkpoint(path)["config"]
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.for_model(**meta))
    ref = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    assert set(ref) == set(written)
    for n, t in ref.items():
        assert np.array_equal(
            ours.read(n).view(np.uint32), t.numpy().astype(np.float32).view(np.uint32)
        ), n


@pytest.mark.parametrize("arch", [a for a in TINY if a not in NO_TRANSFORMERS])
def test_logits_match_transformers(tmp_path, arch):
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    from transformers import AutoModelForCausalLM

    from jaxregion.io import hf
    from jaxregion.models import apply

    path = tmp_path / f"{arch}.gguf"
    write_tiny(str(path), arch)
    cfg, params = hf.load(str(path))
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12))
    model = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    out = np.asarray(apply(params, jnp.asarray(tokens), cfg))
    assert np.abs(out - ref).max() < 1e-4


# --- bad files: one line, exit 2, nothing written -------------------------------------------
def _tree(root: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.join(d, f)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def _patched(src: str, dst: str, edit) -> str:
    with open(src, "rb") as f:
        data = bytearray(f.read())
    with open(dst, "wb") as f:
        f.write(edit(data))
    return dst


def _type_offset(data: bytearray, name: bytes) -> int:
    """Where the ggml type id of tensor ``name`` sits in the tensor table."""
    at = data.index(name) + len(name)
    n_dims = int.from_bytes(data[at : at + 4], "little")
    return at + 4 + 8 * n_dims


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("gguf_bad")
    good = str(root / "good.gguf")
    write_tiny(good, "llama", Q.Q8_0)
    size = os.path.getsize(good)
    files = {
        "truncated": _patched(good, str(root / "trunc.gguf"), lambda b: b[: size // 2]),
        "truncated header": _patched(good, str(root / "trunc_h.gguf"), lambda b: b[:40]),
        "bad magic": _patched(good, str(root / "magic.gguf"), lambda b: b"GGUX" + b[4:]),
        "empty": _patched(good, str(root / "empty.gguf"), lambda b: b""),
    }

    def unknown_type(b):
        at = _type_offset(b, b"blk.0.attn_q.weight")
        b[at : at + 4] = (250).to_bytes(4, "little")
        return b

    files["unknown type"] = _patched(good, str(root / "qtype.gguf"), unknown_type)
    shapes = {"model.layers.0.self_attn.q_proj.weight": (64, 32)}
    from jaxregion.models.config import from_hf_dict
    from jaxregion.models.spec import shapes as all_shapes

    s = all_shapes(from_hf_dict(tiny_config("llama")))
    files["shape"] = str(root / "shape.gguf")
    write_tiny(files["shape"], "llama", tensors={**s, **shapes})
    files["arch"] = str(root / "arch.gguf")
    write_tiny(files["arch"], "llama", arch_name="mamba")
    files["extra tensor"] = str(root / "extra.gguf")
    write_tiny(
        files["extra tensor"], "llama", extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)}
    )
    files["int tensor"] = str(root / "int.gguf")
    write_tiny(
        files["int tensor"], "llama", extra_tensors={"blk.0.attn_q.bias": np.ones(64, np.int32)}
    )
    files["good"] = good
    return files


BAD = {
    "truncated": "truncated",
    "truncated header": "truncated",
    "bad magic": "bad magic number",
    "empty": "bad magic number",
    "unknown type": "unknown type id 250",
    "shape": "model.layers.0.self_attn.q_proj.weight has shape [64, 32], expected [64, 64]",
    "arch": "GGUF architecture 'mamba' has no jaxregion family",
    "extra tensor": "rope_freqs.weight",
    "int tensor": "cannot dequantize",
}


@pytest.mark.parametrize("command", ["convert", "eval"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_gguf_is_one_line(bad_files, tmp_path, capsys, case, command):
    out = str(tmp_path / "out")
    argv = (
        ["convert", bad_files[case], "--out", out]
        if command == "convert"
        else [
            "eval",
            "--model",
            bad_files[case],
            "--text",
            f"x={bad_files['good']}",
            "--json",
            out + ".json",
        ]
    )
    before = _tree(os.path.dirname(bad_files[case]))
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0] and BAD[case] in lines[0], lines[0]
    assert not os.path.exists(out) and not os.path.exists(out + ".json")
    assert os.listdir(tmp_path) == []  # no temp directory left behind either
    assert _tree(os.path.dirname(bad_files[case])) == before


def test_convert_refuses_an_existing_output(bad_files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", bad_files["good"], "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"]
    assert main(["convert", bad_files["good"], "--out", bad_files["good"]]) == 2


# --- every command takes a .gguf: end to end on a tiny file with a working tokenizer -------
def _with_tokenizer(path: str, tokenizer_dir: str) -> None:
    """A tiny llama GGUF whose metadata carries the test session's byte-level BPE."""
    import json

    tj = json.load(open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tj["added_tokens"] if t["special"]}
    d = dict(tiny_config("llama"), vocab_size=len(tokens))
    entry = gguf_import.archs()["llama"]
    from jaxregion.models.config import from_hf_dict
    from jaxregion.models.spec import shapes

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    for hf_key, g_key in entry.config.items():
        v = d.get(hf_key)
        if isinstance(v, float):
            w.add_float32(f"llama.{g_key}", v)
        elif isinstance(v, int):
            w.add_uint32(f"llama.{g_key}", v)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]])
    w.add_bos_token_id(vocab["<s>"])
    w.add_eos_token_id(vocab["</s>"])
    w.add_pad_token_id(vocab["<pad>"])
    w.add_add_bos_token(True)
    names = {
        h.format(i=i): g.format(i=i)
        for h, g in entry.names.items()
        for i in (range(d["num_hidden_layers"]) if "{i}" in h else (None,))
    }
    for name, shape in shapes(from_hf_dict(d)).items():
        w.add_tensor(names[name], (rng.standard_normal(shape) * 0.1).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.slow
def test_commands_take_a_gguf_model(tmp_path, tokenizer_dir, corpus_dir):
    """eval on the .gguf equals eval on its converted HF directory; train starts from a
    .gguf and exports an HF directory that loads; convert writes bfloat16 on request."""
    import json

    from conftest import run_cli

    from jaxregion.io import hf

    model = str(tmp_path / "tiny.gguf")
    _with_tokenizer(model, tokenizer_dir)
    text = f"lat={os.path.join(corpus_dir, 'lat.txt')}"
    out = str(tmp_path / "hf")
    code, _, err = run_cli("convert", model, "--out", out)
    assert code == 0, err
    results = []
    for m in (model, out):
        js = str(tmp_path / f"eval{len(results)}.json")
        code, _, err = run_cli(
            "eval",
            "--model",
            m,
            "--text",
            text,
            "--seq-len",
            "16",
            "--max-seqs",
            "4",
            "--batch-size",
            "4",
            "--json",
            js,
        )
        assert code == 0, err
        results.append(json.load(open(js)))
    assert results[0]["perplexity"] == results[1]["perplexity"]
    assert results[0]["bits_per_byte"] == results[1]["bits_per_byte"]
    export = str(tmp_path / "trained")
    code, _, err = run_cli(
        "train",
        "--model",
        model,
        "--text",
        text,
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--ckpt-dir",
        str(tmp_path / "ck"),
        "--export",
        export,
    )
    assert code == 0, err
    hf.load_tokenizer(export)
    assert hf.open_checkpoint(export).config == hf.open_checkpoint(out).config
    code, _, err = run_cli("convert", model, "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16")
    assert code == 0, err
    _, a = hf.load(str(tmp_path / "bf16"))
    _, b = hf.load(model)
    import jax
    import jax.numpy as jnp

    same = jax.tree.map(
        lambda x, y: bool(jnp.array_equal(x, y.astype(jnp.bfloat16).astype(jnp.float32))), a, b
    )
    assert all(jax.tree.leaves(same))
