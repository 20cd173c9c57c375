"""GGUF files in: a llama.cpp checkpoint read as an HF checkpoint, without torch.

Why: real pretrained models often ship only as GGUF. :mod:`jaxregion.io.gguf_file` parses the
file, the ``gguf`` package (numpy) dequantizes every type it supports, and the family tables
(``GGUF`` in each family file, see :mod:`jaxregion.models.gguf_table`) turn GGUF names into
HF names and undo llama.cpp's layout changes, so the tensors equal transformers' GGUF
loader's bit for bit. The config is built from the metadata through transformers' config
class (its defaults, as its GGUF loader does), and the tokenizer from the metadata with
transformers' torch-free GGUF builders.

Nothing is cached: a ``.gguf`` given as ``--model`` is read in memory each time;
``jaxregion convert`` writes an ordinary HF directory once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from jaxregion import safety
from jaxregion.errors import UserError
from jaxregion.io.gguf_file import GgufFile, read_gguf
from jaxregion.models.gguf_table import GgufArch
from jaxregion.models.registry import families

SUFFIX = ".gguf"
_TOKEN_KEYS = {
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "unk_token_id": "unknown_token_id",
    "pad_token_id": "padding_token_id",
}


def is_gguf(model: str) -> bool:
    """Whether ``--model`` names a GGUF file (by its suffix: the file may not exist yet)."""
    return isinstance(model, str) and model.lower().endswith(SUFFIX)


def archs() -> dict[str, GgufArch]:
    """``{GGUF architecture: its entry}`` over every family table."""
    return {g.arch: g for fam in families().values() for g in getattr(fam, "GGUF", ())}


def _field(reader: GgufFile, key: str, default: object = None) -> object:
    return reader.fields.get(key, default)


def _transform(name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    """Undo one llama.cpp layout change (the operations of transformers' GGUF loader)."""
    if name == "minus_one":
        return w - 1
    if name == "transpose":
        return w.T
    heads = cfg["num_attention_heads"] if name == "rope_q" else cfg["num_key_value_heads"]
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


@dataclass(frozen=True)
class _Info:
    """A GGUF tensor as loading sees it: every type dequantizes to float32 on read (integer
    tensors are refused when the file is opened)."""

    shape: tuple[int, ...]
    dtype: np.dtype = np.dtype(np.float32)


class GgufTensors:
    """The tensors of one GGUF file under their HF names, dequantized to float32 on read.

    The interface of :class:`jaxregion.io.safetensors_io.SafetensorsFile` that loading uses."""

    def __init__(self, path: str, reader, entry: GgufArch, config: dict):
        self.path, self._reader, self._config = path, reader, config
        layers = int(
            config["num_hidden_layers"] if "num_hidden_layers" in config else config["n_layer"]
        )
        by_gguf = {}
        for hf_t, g_t in entry.names.items():
            for i in range(layers) if "{i}" in hf_t else (None,):
                by_gguf[g_t.format(i=i)] = (hf_t.format(i=i), entry.transforms.get(g_t))
        self._src: dict[str, tuple[object, str | None]] = {}
        self.tensors: dict[str, _Info] = {}
        for t in reader.tensors:
            if t.name not in by_gguf:
                raise UserError(
                    f"{path}: tensor {safety.excerpt(t.name)} has no place in the "
                    f"{entry.model_type} family's table (an unsupported variant "
                    f"of GGUF architecture {entry.arch!r})"
                )
            hf_name, tr = by_gguf[t.name]
            shape = tuple(reversed(t.dims))
            self.tensors[hf_name] = _Info(shape[::-1] if tr == "transpose" else shape)
            self._src[hf_name] = (t, tr)

    def keys(self):
        return self.tensors.keys()

    def read(self, key: str) -> np.ndarray:
        """The float32 tensor ``key``: dequantized, then llama.cpp's layout change undone."""
        from gguf.quants import dequantize

        t, tr = self._src[key]
        try:
            w = dequantize(t.data, t.qtype)
        except NotImplementedError:
            raise UserError(
                f"{self.path}: tensor {t.name} has type {t.qtype.name}, which "
                "the gguf package cannot dequantize"
            ) from None
        if tr is not None:
            w = _transform(tr, w, self._config)
        return np.ascontiguousarray(w, dtype=np.float32)

    def read_slice(self, key: str, idx: tuple[slice, ...]) -> np.ndarray:
        return np.ascontiguousarray(self.read(key)[idx])


def _check_types(path: str, reader) -> None:
    """Every tensor of a type ``gguf`` can dequantize: checked before anything is loaded."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import _type_traits

    ok = {Q.F32, Q.F16, *_type_traits}
    for t in reader.tensors:
        if t.qtype not in ok:
            raise UserError(
                f"{path}: tensor {t.name} has type {t.qtype.name}, which the "
                "gguf package cannot dequantize"
            )


def _scalar(path: str, key: str, value: object) -> object:
    if isinstance(value, list):
        raise UserError(
            f"{path}: metadata {key} holds one value per layer "
            f"({safety.excerpt(value)}); such models are not supported"
        )
    return value


def hf_config(path: str, reader, entry: GgufArch) -> dict:
    """The config.json dict transformers builds for this file (its config class' defaults)."""
    from transformers import AutoConfig  # deferred: ~1.2 s; no torch needed

    d: dict[str, object] = {"model_type": entry.model_type}
    for hf_key, g_key in entry.config.items():
        v = _field(reader, f"{entry.arch}.{g_key}")
        if v is not None:
            d[hf_key] = _scalar(path, f"{entry.arch}.{g_key}", v)
    d.update({k: v for k, v in entry.defaults.items() if k not in d})
    names = {t.name for t in reader.tensors}
    d["tie_word_embeddings"] = entry.head not in names
    for hf_key, g_key in _TOKEN_KEYS.items():
        v = _field(reader, f"tokenizer.ggml.{g_key}")
        if v is not None:
            d[hf_key] = int(v)
    if "vocab_size" not in d and "tokenizer.ggml.tokens" in reader.fields:
        d["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"])
    d.update(_rope_scaling(reader, entry.arch))
    d["architectures"] = [entry.architecture]
    try:
        out = AutoConfig.for_model(**d).to_diff_dict()
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(
            f"{path}: metadata does not make a valid {entry.model_type} config "
            f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
        ) from None
    for k in ("_name_or_path", "transformers_version"):
        out.pop(k, None)
    return out


def _rope_scaling(reader, arch: str) -> dict:
    """``rope_scaling`` from ``{arch}.rope.scaling.*`` (linear and yarn files), else nothing."""
    kind = _field(reader, f"{arch}.rope.scaling.type")
    factor = _field(reader, f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or factor is None:
        return {}
    out = {"rope_type": kind, "factor": float(factor)}
    orig = _field(reader, f"{arch}.rope.scaling.original_context_length")
    if orig is not None:
        out["original_max_position_embeddings"] = int(orig)
    return {"rope_scaling": out}


@dataclass
class GgufCheckpoint:
    """A GGUF file, parsed: its config.json dict, its tensors and its architecture entry."""

    path: str
    config: dict
    tensors: GgufTensors
    entry: GgufArch
    reader: object

    @cached_property
    def tokenizer(self):
        return tokenizer_from(self.path, self.reader, self.entry.arch)


def load_tokenizer(path: str):
    """The tokenizer of a GGUF file (its metadata only: no config, no tensors)."""
    reader = read_gguf(path)
    safety.reading(path)
    return tokenizer_from(path, reader, str(_field(reader, "general.architecture")))


def open_gguf(path: str) -> GgufCheckpoint:
    """Parse ``path``: metadata, tensor table and types are checked; no tensor is read."""
    reader = read_gguf(path)
    safety.reading(path)
    arch = _field(reader, "general.architecture")
    known = archs()
    if arch not in known:
        raise UserError(
            f"{path}: GGUF architecture {safety.excerpt(arch)} has no jaxregion "
            f"family (supported: {', '.join(sorted(known))})"
        )
    _check_types(path, reader)
    entry = known[str(arch)]
    config = hf_config(path, reader, entry)
    return GgufCheckpoint(path, config, GgufTensors(path, reader, entry, config), entry, reader)


# --- the tokenizer --------------------------------------------------------------------------
def _tokenizer_parts(reader) -> tuple[dict, dict]:
    """``(tokenizer_dict, tokenizer_config)`` as transformers' ``get_gguf_tokenizer`` makes
    them, read with ``gguf`` (transformers' own GGUF reader imports torch)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        _SPECIAL_TOKENS,
        GGUF_TOKENIZER_MAPPING,
    )

    grouped = {
        group: {
            name: _field(reader, f"tokenizer.{key}")
            for key, name in renames.items()
            if f"tokenizer.{key}" in reader.fields
        }
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tok, conf = grouped["tokenizer"], grouped["tokenizer_config"]
    if tok.get("tokenizer_type") == "llama":
        conf.setdefault("add_bos_token", True)
    elif tok.get("tokenizer_type") == "gemma4":
        conf["add_bos_token"] = False
    for name, key in _SPECIAL_TOKENS.items():
        i = _field(reader, f"tokenizer.ggml.{key}")
        conf[name] = tok["tokens"][i] if i is not None else None
    return tok, conf


def tokenizer_from(path: str, reader, arch: str):
    """The HF tokenizer the file's metadata describes (encodes as transformers' GGUF one)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    if "tokenizer.ggml.tokens" not in reader.fields:
        raise UserError(f"{path}: holds no tokenizer (no tokenizer.ggml.tokens)")
    tok, conf = _tokenizer_parts(reader)
    try:
        backend, extra = convert_gguf_tokenizer(arch, tok)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{path}: cannot build its tokenizer "
            f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
        ) from None
    return TokenizersBackend(tokenizer_object=backend, **{**conf, **extra})


# --- convert ------------------------------------------------------------------------------
def save_tokenizer(tok, out_dir: str) -> None:
    """Write ``tok`` as ordinary HF tokenizer files (tokenizer.json, tokenizer_config.json)."""
    tok.save_pretrained(out_dir)


def convert(path: str, out: str, dtype: str = "float32") -> dict:
    """Write the GGUF file ``path`` as an HF directory ``out``: config.json,
    model.safetensors (``dtype``) and the tokenizer files. Atomic: everything goes into a
    sibling temp directory renamed onto ``out`` at the end; an existing ``out`` is refused."""
    from jaxregion.io.safetensors_io import DTYPES, write
    from jaxregion.models.config import from_hf_dict
    from jaxregion.models.spec import check_shapes, shapes

    if os.path.lexists(out):
        raise UserError(
            f"--out {out}: already exists; remove it or choose a new directory "
            "(convert never writes into an existing one)"
        )
    safety.check_output(out)
    g = open_gguf(path)
    cfg = from_hf_dict(g.config, path)
    problems = check_shapes({k: v.shape for k, v in g.tensors.tensors.items()}, cfg, path)
    if problems:
        raise UserError(
            f"{path}: checkpoint does not match its GGUF metadata: " + "; ".join(problems[:20])
        )
    tok = g.tokenizer
    dt = DTYPES["BF16" if dtype == "bfloat16" else "F32"]
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-convert-", dir=parent)
    try:
        tensors = {
            n: (dt, s, lambda n=n: g.tensors.read(n).astype(dt)) for n, s in shapes(cfg).items()
        }
        write(os.path.join(tmp, "model.safetensors"), tensors, {"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump({**g.config, "dtype": dtype, "torch_dtype": dtype}, f, indent=2)
        save_tokenizer(tok, tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "model_type": cfg.model_type,
        "tensors": len(tensors),
        "dtype": dtype,
        "architecture": g.entry.arch,
    }


def _umask() -> int:
    old = os.umask(0o22)
    os.umask(old)
    return old
