"""A small, lazy safetensors reader and streaming writer.

Why our own: the numpy backend of ``safetensors`` has no bfloat16, and we want to read one
tensor (or one slice of one tensor) at a time so peak host memory stays near a single tensor.
The format is simple: ``u64 header_len | JSON header | raw little-endian data``.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from jaxregion.errors import UserError
from jaxregion.io.atomic import atomic_path
from jaxregion.safety import excerpt

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def _corrupt(path: str, why: str) -> UserError:
    return UserError(f"{path}: corrupt safetensors header ({why}); re-export the file")


def _validate_header(
    path: str, header: object, data_size: int, base: int
) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """Check a parsed header as the safetensors library does: a dict at the top, string
    metadata, known dtypes, non-negative shapes whose byte size matches the offsets, offsets
    ordered, non-overlapping and inside the data section."""
    if not isinstance(header, dict):
        raise _corrupt(path, f"the header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    spans, tensors = [], {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        shown = excerpt(name)
        if not isinstance(h, dict):
            raise _corrupt(path, f"entry {shown} is not an object")
        dtype, shape, offs = h.get("dtype"), h.get("shape"), h.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise _corrupt(path, f"entry {shown} has unknown dtype {excerpt(dtype)}")
        if not isinstance(shape, list) or len(shape) > 64 or not all(_is_count(d) for d in shape):
            raise _corrupt(
                path, f"entry {shown} has a bad shape (need a list of non-negative integers)"
            )
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(_is_count(x) for x in offs)
            or offs[0] > offs[1]
        ):
            raise _corrupt(
                path, f"entry {shown} has bad data_offsets (need [begin, end], 0 <= begin <= end)"
            )
        nbytes = DTYPES[dtype].itemsize * math.prod(shape) if 0 not in shape else 0
        if nbytes > data_size or offs[1] > data_size:  # exact ints: no int64 wrap-around
            raise UserError(
                f"{path}: tensor {shown} is truncated or corrupt (needs "
                f"{nbytes} bytes at {base + offs[0]}, the file has "
                f"{base + data_size}); re-download it"
            )
        if offs[1] - offs[0] != nbytes:
            raise _corrupt(
                path,
                f"tensor {shown} needs {nbytes} bytes for shape {shape}, "
                f"its offsets span {offs[1] - offs[0]}",
            )
        spans.append((offs[0], offs[1], name))
        tensors[name] = TensorInfo(DTYPES[dtype], tuple(shape), base + offs[0], nbytes)
    spans.sort()
    for (_, e1, a), (b2, _, b) in zip(spans, spans[1:], strict=False):
        if b2 < e1:
            raise _corrupt(path, f"tensors {excerpt(a)} and {excerpt(b)} overlap")
    return dict(meta), tensors


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class SafetensorsFile:
    """Header parsed eagerly and validated; tensors read on demand."""

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise ValueError("file shorter than its 8-byte header length")
                (n,) = struct.unpack("<Q", raw)
                if n > _MAX_HEADER:
                    raise ValueError(f"header length {n} is beyond the {_MAX_HEADER}-byte limit")
                if n > size - 8:
                    raise ValueError(f"header length {n} exceeds the file size {size}")
                header = json.loads(f.read(n).decode("utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise UserError(f"{path}: is a directory, not a safetensors file") from None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            why = "header nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
            raise UserError(f"{path}: corrupt safetensors file ({why}); re-export it") from None
        self.metadata, self.tensors = _validate_header(path, header, size - 8 - n, 8 + n)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def read(self, name: str) -> np.ndarray:
        """The whole tensor, in a fresh buffer (no mmap left resident)."""
        info = self.tensors[name]
        out = np.empty(info.shape, dtype=info.dtype)
        with open(self.path, "rb") as f:
            f.seek(info.start)
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != info.nbytes:
            raise UserError(f"{self.path}: tensor {name} is truncated; re-download it")
        return out

    def read_slice(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """One slice of a tensor through a short-lived mmap: only its pages are touched."""
        info = self.tensors[name]
        if info.nbytes == 0:
            return np.empty(info.shape, info.dtype)[index]
        with open(self.path, "rb") as f:
            page = mmap.ALLOCATIONGRANULARITY
            offset = info.start - info.start % page
            mm = mmap.mmap(
                f.fileno(),
                info.start + info.nbytes - offset,
                offset=offset,
                access=mmap.ACCESS_READ,
            )
            try:
                arr = np.ndarray(info.shape, info.dtype, buffer=mm, offset=info.start - offset)
                out = np.array(arr[index])
                del arr
            finally:
                mm.close()
        return out


TensorSource = np.ndarray | Callable[[], np.ndarray]


def read_metadata(path: str) -> dict[str, str] | None:
    """A safetensors file's ``__metadata__`` (header only), or None when ``path`` is not a
    readable safetensors file."""
    try:
        return dict(SafetensorsFile(path).metadata)
    except UserError:
        return None


def write(
    path: str,
    tensors: Mapping[str, tuple[np.dtype, tuple[int, ...], TensorSource]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write tensors one at a time: ``{name: (dtype, shape, array or thunk)}``; atomic."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, (dtype, shape, _) in tensors.items():
        dtype = np.dtype(dtype)
        if dtype not in _NAMES:
            raise UserError(f"{name}: dtype {dtype} cannot be stored in safetensors")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {
            "dtype": _NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, (dtype, shape, src) in tensors.items():
            arr = np.ascontiguousarray(src() if callable(src) else src)
            if arr.dtype != np.dtype(dtype) or tuple(arr.shape) != tuple(shape):
                raise ValueError(
                    f"{name}: got {arr.dtype}{list(arr.shape)}, "
                    f"declared {np.dtype(dtype)}{list(shape)}"
                )
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
            del arr


def save_dict(
    path: str, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Convenience: write in-memory numpy arrays."""
    write(path, {k: (v.dtype, v.shape, v) for k, v in arrays.items()}, metadata)
