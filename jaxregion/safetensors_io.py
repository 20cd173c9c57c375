"""A small, lazy safetensors reader and streaming writer.

Why our own: the numpy backend of ``safetensors`` has no bfloat16, and we want to read one
tensor (or one slice of one tensor) at a time so peak host memory stays near a single tensor.
The format is simple: ``u64 header_len | JSON header | raw little-endian data``.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from jaxregion.errors import UserError
from jaxregion.io import atomic_path

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
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
                if n > min(size - 8, _MAX_HEADER):
                    raise ValueError(f"header length {n} exceeds the file size {size}")
                header = json.loads(f.read(n).decode("utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: corrupt safetensors file ({e}); re-export it") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.tensors: dict[str, TensorInfo] = {}
        base = 8 + n
        for name, h in header.items():
            try:
                dtype = DTYPES[h["dtype"]]
                shape = tuple(int(d) for d in h["shape"])
                begin, end = (int(x) for x in h["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{path}: corrupt safetensors entry for {name!r}") from None
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if end - begin != nbytes or base + end > size:
                raise UserError(
                    f"{path}: tensor {name} is truncated or corrupt "
                    f"(needs bytes {base + begin}..{base + end}, file has {size}); re-download it"
                )
            self.tensors[name] = TensorInfo(dtype, shape, base + begin, nbytes)

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
            mm = mmap.mmap(f.fileno(), info.start + info.nbytes - offset, offset=offset,
                           access=mmap.ACCESS_READ)
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
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, (dtype, shape, src) in tensors.items():
            arr = np.ascontiguousarray(src() if callable(src) else src)
            if arr.dtype != np.dtype(dtype) or tuple(arr.shape) != tuple(shape):
                raise ValueError(f"{name}: got {arr.dtype}{list(arr.shape)}, "
                                 f"declared {np.dtype(dtype)}{list(shape)}")
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
            del arr


def save_dict(path: str, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None
              = None) -> None:
    """Convenience: write in-memory numpy arrays."""
    write(path, {k: (v.dtype, v.shape, v) for k, v in arrays.items()}, metadata)
