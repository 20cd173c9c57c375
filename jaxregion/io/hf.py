"""Hugging Face checkpoints in and out: lazy loading, shape checks, export.

Loading goes tensor by tensor: the abstract NNX model first (from config.json, checked
against the safetensors headers), then each tensor of its state is read, cast and placed on
its own, so peak host memory stays near
the result plus one tensor. With ``shardings`` each device gets only its slice, read straight
from the file. Export streams one tensor at a time into safetensors that transformers loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from huggingface_hub import snapshot_download

from jaxregion import models, safety
from jaxregion.data.tokenizer import load_tokenizer as _load
from jaxregion.errors import UserError
from jaxregion.io import gguf_import
from jaxregion.io import safetensors_io as st
from jaxregion.io.atomic import write_json
from jaxregion.models import spec
from jaxregion.models.config import ModelConfig, from_hf_dict
from jaxregion.models.module import CausalLM
from jaxregion.models.registry import family
from jaxregion.parallel.distributed import barrier, fetch
from jaxregion.tree import flatten

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve(model: str) -> str:
    """A local directory for ``model``: the path itself, or a hub snapshot (safetensors only)."""
    if os.path.isdir(model):
        return model
    if os.path.exists(model):
        raise UserError(f"--model {model}: not a directory; give an HF checkpoint directory")
    if not _HUB_ID.match(model):
        raise UserError(f"--model {model}: no such directory (nor a hub id like org/name)")
    from jaxregion.io.hub import go_offline_if_unreachable

    go_offline_if_unreachable()
    try:
        return snapshot_download(
            model, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
        )
    except Exception as e:  # offline, unknown repo, gated, ...
        raise UserError(
            f"--model {model}: no such local directory, and the hub download failed "
            f"({type(e).__name__}); download it where there is network and pass the directory"
        ) from None


def _read_json(path: str, bad: str) -> object:
    """A checkpoint's JSON file; undecodable or absurdly nested content is one line saying
    ``bad``, never a traceback."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: {bad} ({str(e)[:200]})") from None
    except RecursionError:
        raise UserError(f"{path}: {bad} (nested too deeply)") from None


def load_config(path: str) -> ModelConfig:
    """The model config of a checkpoint directory (or of its config.json file, or of a GGUF
    file); no weights."""
    if gguf_import.is_gguf(path):
        return from_hf_dict(gguf_import.open_gguf(path).config, path)
    cfg_path = path if os.path.isfile(path) else os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise UserError(f"{cfg_path}: missing; an HF checkpoint directory needs config.json")
    d = _read_json(cfg_path, "not valid JSON")
    safety.reading(cfg_path)
    return from_hf_dict(d, cfg_path)


def weight_files(path: str) -> dict[str, st.SafetensorsFile]:
    """``{checkpoint key: file}`` over the single file or all shards of the index."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        weight_map = _read_index(index)
        safety.reading(index)
        files = {}
        for name in sorted(set(weight_map.values())):
            files[name] = st.SafetensorsFile(os.path.join(path, name))
            safety.reading(files[name].path)
        out = {}
        for key, fname in weight_map.items():
            if key not in files[fname].tensors:
                raise UserError(f"{index}: lists {key} in {fname}, which does not hold it")
            out[key] = files[fname]
        return out
    if os.path.isfile(single):
        f = st.SafetensorsFile(single)
        safety.reading(single)
        return {k: f for k in f.keys()}
    pickled = [
        n
        for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")
        if os.path.exists(os.path.join(path, n))
    ]
    if pickled:
        raise UserError(
            f"{os.path.join(path, pickled[0])}: pickled PyTorch weights are refused (loading them "
            "can execute code). Convert once, in a trusted environment: "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, "
            "safe_serialization=True)"
        )
    raise UserError(f"{path}: no model.safetensors or model.safetensors.index.json found")


def _read_index(index: str) -> dict[str, str]:
    """The ``weight_map`` of an index file: strings naming shard files inside its directory
    (a shard elsewhere is refused before it is opened, so no byte of it is ever shown)."""
    d = _read_json(index, "corrupt index")
    wm = d.get("weight_map") if isinstance(d, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise UserError(f"{index}: corrupt index (no 'weight_map' object of tensor -> file)")
    root = os.path.dirname(os.path.abspath(index))
    for key, fname in wm.items():
        if not isinstance(fname, str) or not fname:
            raise UserError(
                f"{index}: weight_map[{safety.excerpt(key)}] is "
                f"{safety.excerpt(fname)}, not a file name"
            )
        target = os.path.realpath(os.path.join(root, fname))
        if os.path.dirname(target) != os.path.realpath(root) or fname.startswith("/"):
            raise UserError(
                f"{index}: weight_map[{safety.excerpt(key)}] names "
                f"{safety.excerpt(fname)}, which is not a file in the checkpoint "
                "directory; shards must sit beside the index"
            )
    return wm


@dataclass(frozen=True)
class Checkpoint:
    """A local HF checkpoint, inspected but not yet read."""

    path: str
    config: ModelConfig
    files: dict[str, st.SafetensorsFile | Stacked]  # canonical HF name -> file (or GGUF tensors)
    keys: dict[str, str]  # canonical HF name -> key in the file

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: self.files[n].tensors[self.keys[n]].shape for n in self.files}


class Stacked:
    """A fused tensor read from the per-expert tensors it stacks (``parts[e]``: the keys of
    expert ``e``, concatenated on their first axis), with a file's reading interface."""

    def __init__(self, name: str, parts: list[list[str]], raw: dict[str, st.SafetensorsFile]):
        self.path = f"{raw[parts[0][0]].path} ({name} from {len(parts)} per-expert tensors)"
        self.parts = [[(raw[k], k) for k in keys] for keys in parts]
        first = [f.tensors[k] for f, k in self.parts[0]]
        shape = (len(parts), sum(t.shape[0] for t in first), *first[0].shape[1:])
        self.tensors = {name: st.TensorInfo(first[0].dtype, shape, 0, 0)}

    def _expert(self, e: int) -> np.ndarray:
        return np.concatenate([f.read(k) for f, k in self.parts[e]], axis=0)

    def read(self, key: str) -> np.ndarray:
        return np.stack([self._expert(e) for e in range(len(self.parts))])

    def read_slice(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
        experts = range(*index[0].indices(len(self.parts)))
        return np.stack([self._expert(e)[tuple(index[1:])] for e in experts])


def _stack_experts(cfg: ModelConfig, raw: dict[str, st.SafetensorsFile]) -> dict[str, Stacked]:
    """The fused expert tensors of a per-expert checkpoint (the family's ``fused_parts``),
    and those keys removed from ``raw``; a partial set of parts is left for the shape check
    to report."""
    fn = getattr(family(cfg.model_type), "fused_parts", None)
    out = {}
    for name, parts in (fn(cfg) if fn else {}).items():
        keys = [k for e in parts for k in e]
        if name not in raw and all(k in raw for k in keys):
            out[name] = Stacked(name, parts, raw)
            for k in keys:
                del raw[k]
    return out


def open_checkpoint(model: str) -> Checkpoint:
    """Resolve, read config.json and the safetensors headers (or a GGUF file's metadata and
    tensor table), check every shape at once. Per-expert tensors are stacked into the fused
    ones the model holds."""
    if gguf_import.is_gguf(model):
        g = gguf_import.open_gguf(model)
        path, cfg = model, from_hf_dict(g.config, model)
        raw = {k: g.tensors for k in g.tensors.keys()}
    else:
        path = resolve(model)
        cfg = load_config(path)
        raw = weight_files(path)
    files: dict = {}
    keys = {}
    for name, f in _stack_experts(cfg, raw).items():
        files[name], keys[name] = f, name
    for key, f in raw.items():
        name = spec.canonical_name(cfg, key)
        if name is not None:
            files[name], keys[name] = f, key
    ck = Checkpoint(path, cfg, files, keys)
    _check_dtypes(ck)
    problems = spec.check_shapes(ck.shapes, cfg, path)
    if problems:
        shown = "; ".join(problems[:20]) + (
            f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        what = "its GGUF metadata" if gguf_import.is_gguf(path) else "config.json"
        raise UserError(f"{path}: checkpoint does not match {what}: {shown}")
    return ck


def _check_dtypes(ck: Checkpoint) -> None:
    """Checkpoints keep their dtypes: a tensor that is not floating point (an int8 tensor in
    a float32 checkpoint, say) would be silently cast into nonsense weights."""
    dts = {n: ck.files[n].tensors[ck.keys[n]].dtype for n in ck.files}
    floats = [d for d in dts.values() if np.issubdtype(d, np.floating) or d.kind == "V"]
    if not floats:
        return
    main = max(set(floats), key=floats.count)
    for n, d in sorted(dts.items()):
        if not (np.issubdtype(d, np.floating) or d.kind == "V"):
            raise UserError(
                f"{ck.files[n].path}: tensor {ck.keys[n]} is {d}, but the "
                f"checkpoint's weights are {main}; a quantized or corrupt tensor "
                "cannot be cast to weights (dequantize it first)"
            )


Placement = Callable[[str, tuple[int, ...]], "jax.sharding.Sharding | None"]


def model_from_checkpoint(
    ck: Checkpoint, dtype: jnp.dtype = jnp.float32, sharding: Placement | None = None
) -> CausalLM:
    """The model of ``ck``: its abstract module (``nnx.eval_shape``: no memory) with the
    state filled tensor by tensor (slice by slice when sharded), then merged."""
    gdef, state = nnx.split(models.abstract(ck.config))
    slots = {".".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}
    for name, shape in spec.shapes(ck.config).items():
        f, key = ck.files[name], ck.keys[name]
        sh = sharding(name, shape) if sharding else None
        if sh is None:
            arr = f.read(key)
            value = jax.device_put(arr.astype(dtype, copy=False))
            del arr
        else:
            value = _read_sharded(f, key, shape, sh, dtype)
        slots[name].set_value(value)
    return nnx.merge(gdef, state)


def load_params(
    ck: Checkpoint, dtype: jnp.dtype = jnp.float32, sharding: Placement | None = None
) -> dict:
    """The params pytree, read tensor by tensor (and slice by slice when sharded): the
    pure-dict state of :func:`model_from_checkpoint`'s model."""
    return models.params_of(model_from_checkpoint(ck, dtype, sharding))


def _read_sharded(
    f: st.SafetensorsFile,
    key: str,
    shape: tuple[int, ...],
    sh: jax.sharding.Sharding,
    dtype: jnp.dtype,
) -> jax.Array:
    """One tensor placed with ``sh``: this process reads only the slices its own devices
    hold (each distinct slice once, even when several local devices replicate it)."""
    cache: dict[tuple, np.ndarray] = {}

    def read(idx: tuple[slice, ...]) -> np.ndarray:
        k = tuple((s.start, s.stop, s.step) for s in idx)
        if k not in cache:
            cache[k] = f.read_slice(key, idx).astype(dtype, copy=False)
        return cache[k]

    arr = jax.make_array_from_callback(shape, sh, read)
    cache.clear()
    return arr


def load(
    model: str, dtype: str | jnp.dtype = "float32", sharding: Placement | None = None
) -> tuple[ModelConfig, dict]:
    """``(config, params)`` from a local directory or hub id."""
    ck = open_checkpoint(model)
    return ck.config, load_params(ck, jnp.dtype(dtype), sharding)


def load_model(
    model: str, dtype: str | jnp.dtype = "float32", sharding: Placement | None = None
) -> CausalLM:
    """The NNX model of a local directory or hub id (``model.config`` is its config)."""
    return model_from_checkpoint(open_checkpoint(model), jnp.dtype(dtype), sharding)


def load_tokenizer(model: str):
    """The checkpoint's tokenizer (a GGUF file's: built from its metadata), or a UserError
    naming the directory and what is missing."""
    if gguf_import.is_gguf(model):
        return gguf_import.load_tokenizer(model)
    return _load(resolve(model))


def copy_tokenizer(model: str, out_dir: str) -> None:
    """The tokenizer files of ``model`` into ``out_dir`` (a GGUF file's: written from its
    metadata)."""
    if gguf_import.is_gguf(model):
        gguf_import.save_tokenizer(load_tokenizer(model), out_dir)
        return
    src = resolve(model)
    for n in TOKENIZER_FILES:
        p = os.path.join(src, n)
        if os.path.isfile(p) and os.path.abspath(p) != os.path.abspath(os.path.join(out_dir, n)):
            shutil.copyfile(p, os.path.join(out_dir, n))


def export(
    params: dict,
    cfg: ModelConfig,
    out_dir: str,
    tokenizer_from: str | None = None,
    dtype: str | None = None,
) -> None:
    """Write an HF directory: model.safetensors, config.json and the tokenizer files.

    Tensors are gathered to the host one at a time (collectively when they span processes:
    every process calls this; process 0 writes). ``dtype`` casts on the way out. A non-empty
    ``out_dir`` is replaced only when this tool made it (:func:`safety.check_export_dir`).
    """
    safety.check_export_dir(out_dir)
    flat = flatten(params)
    tensors = {}
    for name, arr in flat.items():
        dt = np.dtype(dtype) if dtype else np.dtype(arr.dtype)
        tensors[name] = (dt, tuple(arr.shape), lambda a=arr, dt=dt: fetch(a).astype(dt, copy=False))
    if jax.process_index() == 0:
        safety.claim(out_dir, safety.EXPORT_OWNER)
        st.write(os.path.join(out_dir, "model.safetensors"), tensors, {"format": "pt"})
        config = dict(cfg.hf_config)
        first = next(iter(flat.values()))
        out_dtype = str(np.dtype(dtype)) if dtype else str(np.dtype(first.dtype))
        config["torch_dtype"] = out_dtype
        config["dtype"] = out_dtype
        write_json(os.path.join(out_dir, "config.json"), config)
        if tokenizer_from:
            copy_tokenizer(tokenizer_from, out_dir)
        stale = os.path.join(out_dir, "model.safetensors.index.json")
        if os.path.exists(stale):  # it would name shards of another model
            safety.check_output(stale)
            os.unlink(stale)
    else:  # other processes still take part in gathering, in the same order
        for _, (_, _, thunk) in tensors.items():
            thunk()
    barrier(f"export:{out_dir}")
