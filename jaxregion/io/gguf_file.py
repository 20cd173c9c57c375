"""The GGUF container (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): header,
metadata and tensor table, every read checked against the file's size.

Why our own reader: ``gguf.GGUFReader`` takes ~35 s on a 262k-token vocabulary (a numpy
view per string); this one reads the header with ``struct`` in well under a second. Tensor
data stays a view of the mapped file until :mod:`jaxregion.io.gguf_import` dequantizes it with
``gguf.quants`` (the same function on the same bytes as transformers' loader).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from jaxregion import safety
from jaxregion.errors import UserError

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_NP = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}


@dataclass(frozen=True)
class Tensor:
    """One tensor of the file: ``dims`` in ggml order (fastest first), raw bytes as stored."""

    name: str
    dims: tuple[int, ...]
    qtype: object  # gguf.GGMLQuantizationType
    data: np.ndarray  # uint8 view of the mapped file


@dataclass(frozen=True)
class GgufFile:
    path: str
    fields: dict[str, object]
    tensors: tuple[Tensor, ...]


class _Cursor:
    """Little-endian reads from the mapped file; running past its end is a UserError."""

    def __init__(self, path: str, buf: np.ndarray):
        self.path, self.buf, self.pos = path, buf, 0

    def take(self, fmt: str) -> object:
        try:
            (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise self.truncated() from None
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise self.truncated()
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(
                f"{self.path}: corrupt GGUF file (a string at byte {self.pos - n} is not UTF-8)"
            ) from None

    def value(self, vtype: int) -> object:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype != 9:
            raise UserError(
                f"{self.path}: corrupt GGUF file (metadata value type {vtype} at "
                f"byte {self.pos - 4})"
            )
        etype, n = self.take("<I"), self.take("<Q")
        if etype in _NP:
            size = np.dtype(_NP[etype]).itemsize * n
            if self.pos + size > len(self.buf):
                raise self.truncated()
            out = np.frombuffer(self.buf, _NP[etype], n, self.pos).tolist()
            self.pos += size
            return out
        if n > len(self.buf):
            raise self.truncated()
        return [self.value(etype) for _ in range(n)]

    def truncated(self) -> UserError:
        return UserError(
            f"{self.path}: truncated or corrupt GGUF file (ends at byte "
            f"{len(self.buf)}, needs more at byte {self.pos})"
        )


def read_gguf(path: str) -> GgufFile:
    """The parsed file: header, metadata and tensor table checked; tensor data mapped."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such GGUF file")
    buf = (
        np.memmap(path, mode="r", dtype=np.uint8)
        if os.path.getsize(path)
        else np.zeros(0, np.uint8)
    )
    c = _Cursor(path, buf)
    if bytes(buf[:4]) != b"GGUF":
        raise UserError(f"{path}: not a GGUF file (bad magic number)")
    c.pos = 4
    version = c.take("<I")
    if version not in (2, 3):
        raise UserError(f"{path}: GGUF version {version} is not supported (2, 3; little-endian)")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    if max(n_tensors, n_kv) > len(buf):
        raise c.truncated()
    fields = {}
    for _ in range(n_kv):
        key = c.string()
        fields[key] = c.value(c.take("<I"))
    table = []
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.take("<I")
        if n_dims > 8:
            raise UserError(
                f"{path}: corrupt GGUF file (tensor {safety.excerpt(name)} has {n_dims} dimensions)"
            )
        dims = tuple(c.take("<Q") for _ in range(n_dims))
        table.append((name, dims, c.take("<I"), c.take("<Q")))
    align = fields.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise UserError(f"{path}: corrupt GGUF file (general.alignment {align!r})")
    start = -(-c.pos // align) * align
    return GgufFile(path, fields, tuple(_tensor(path, buf, start, *e) for e in table))


def _tensor(
    path: str,
    buf: np.ndarray,
    start: int,
    name: str,
    dims: tuple[int, ...],
    raw_type: int,
    offset: int,
) -> Tensor:
    """One table entry checked against the file: known type, whole blocks, data inside."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(raw_type)
    except ValueError:
        raise UserError(
            f"{path}: tensor {safety.excerpt(name)} has unknown type id "
            f"{raw_type} (not a ggml type this gguf package knows)"
        ) from None
    block, size = GGML_QUANT_SIZES[qtype]
    if not dims or dims[0] % block:
        raise UserError(
            f"{path}: corrupt GGUF file (tensor {safety.excerpt(name)} of shape "
            f"{list(dims)} is not whole {qtype.name} blocks of {block})"
        )
    n = int(np.prod(dims, dtype=object))
    nbytes = n // block * size
    at = start + offset
    if at + nbytes > len(buf):
        raise UserError(
            f"{path}: truncated GGUF file (tensor {safety.excerpt(name)} needs "
            f"bytes {at}..{at + nbytes}, the file has {len(buf)})"
        )
    rows = tuple(reversed(dims[1:]))
    return Tensor(name, dims, qtype, buf[at : at + nbytes].reshape(*rows, dims[0] // block * size))
