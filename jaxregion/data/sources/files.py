"""Local files: text (plain, gzip, zstd), JSONL and Parquet, read in chunks."""

from __future__ import annotations

import codecs
import gzip
import json
import os
import zlib
from collections.abc import Iterator

import zstandard

from jaxregion.data.sources.base import _CHUNK, _as_text, _Base, _missing_field
from jaxregion.errors import UserError
from jaxregion.safety import reading


def _compression(path: str) -> str:
    low = path.lower()
    return "gzip" if low.endswith(".gz") else "zstd" if low.endswith(".zst") else ""


def _zstd_chunks(path: str, f) -> Iterator[bytes]:
    dctx = zstandard.ZstdDecompressor()
    obj, pending = dctx.decompressobj(), False
    while raw := f.read(_CHUNK):
        while raw:
            try:
                out = obj.decompress(raw)
            except zstandard.ZstdError as e:
                raise UserError(
                    f"{path}: corrupt zstd stream ({e}); re-download or re-compress the file"
                ) from None
            pending = True
            if out:
                yield out
            if obj.eof:  # frame finished; any rest belongs to the next frame
                raw, obj, pending = obj.unused_data, dctx.decompressobj(), False
            else:
                raw = b""
    if pending:
        raise UserError(
            f"{path}: truncated or corrupt zstd stream (file ends mid-frame); "
            "re-download or re-compress the file"
        )


def _byte_chunks(path: str) -> Iterator[bytes]:
    """The decompressed bytes of ``path`` in ~1 MiB chunks, with readable errors."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    reading(path)
    kind = _compression(path)
    with open(path, "rb") as f:
        if kind == "zstd":
            yield from _zstd_chunks(path, f)
            return
        if kind == "gzip":
            g = gzip.GzipFile(fileobj=f)
            try:
                while chunk := g.read(_CHUNK):
                    yield chunk
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                raise UserError(
                    f"{path}: truncated or corrupt gzip stream ({e}); re-download "
                    "or re-compress the file"
                ) from None
            return
        while chunk := f.read(_CHUNK):
            yield chunk


MAX_DOC_CHARS = 16 * 1024 * 1024
"""The longest line (and document) read from a file, in characters: beyond it the file is
refused with one line, so one huge line never costs unbounded memory."""


def _too_long(path: str) -> UserError:
    return UserError(
        f"{path}: a line or document is longer than {MAX_DOC_CHARS} characters "
        "(jaxregion.data.sources.files.MAX_DOC_CHARS); split the text into "
        "documents of sensible size"
    )


def _lines(path: str) -> Iterator[str]:
    """Lines of a (maybe compressed) UTF-8 file without their line ends, streamed. Linear in
    the file size however long a line is (pieces are joined once, at the line end)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    pieces: list[str] = []
    held, offset = 0, 0
    for chunk in _byte_chunks(path):
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as e:
            raise UserError(
                f"{path}: not valid UTF-8 near byte {offset + e.start}; re-encode it as UTF-8"
            ) from None
        offset += len(chunk)
        parts = text.split("\n")
        if len(parts) > 1:
            first = "".join([*pieces, parts[0]])
            if len(first) > MAX_DOC_CHARS:
                raise _too_long(path)
            pieces, held = [], 0
            for line in [first, *parts[1:-1]]:
                if len(line) > MAX_DOC_CHARS:
                    raise _too_long(path)
                yield line[:-1] if line.endswith("\r") else line
        pieces.append(parts[-1])
        held += len(parts[-1])
        if held > MAX_DOC_CHARS:
            raise _too_long(path)
    try:
        pieces.append(decoder.decode(b"", final=True))
    except UnicodeDecodeError:
        raise UserError(
            f"{path}: not valid UTF-8 at the end of the file (cut mid-character); "
            "re-encode it as UTF-8"
        ) from None
    rest = "".join(pieces)
    if len(rest) > MAX_DOC_CHARS:
        raise _too_long(path)
    if rest:
        yield rest[:-1] if rest.endswith("\r") else rest


class TextFileSource(_Base):
    """A UTF-8 text file (maybe .gz/.zst): one document per non-empty line, or per paragraph."""

    def __init__(self, path: str, doc_sep: str = "line"):
        if doc_sep not in ("line", "blank"):
            raise UserError(
                f"{path}: doc_sep={doc_sep!r} is not supported; use 'line' "
                "(one document per line) or 'blank' (blank-line separated)"
            )
        self.path, self.doc_sep = path, doc_sep

    @property
    def name(self) -> str:
        return self.path

    def _iter(self) -> Iterator[str]:
        if self.doc_sep == "line":
            for line in _lines(self.path):
                if line.strip():
                    yield line
            return
        para: list[str] = []
        size = 0
        for line in _lines(self.path):
            if line.strip():
                para.append(line)
                size += len(line) + 1
                if size > MAX_DOC_CHARS:
                    raise _too_long(self.path)
            elif para:
                size = 0
                yield "\n".join(para)
                para = []
        if para:
            yield "\n".join(para)


class JsonlSource(_Base):
    """JSON Lines (maybe .gz/.zst): one object per line, the document in ``field``."""

    def __init__(self, path: str, field: str = "text"):
        self.path, self.field = path, field

    @property
    def name(self) -> str:
        return self.path

    def _iter(self) -> Iterator[str]:
        for lineno, line in enumerate(_lines(self.path), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{self.path}:{lineno}: not valid JSON ({e.msg}); "
                    "expected one JSON object per line"
                ) from None
            if not isinstance(obj, dict):
                raise UserError(
                    f"{self.path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            if self.field not in obj:
                raise _missing_field(self.path, self.field, obj.keys(), f" on line {lineno}")
            text = _as_text(self.path, self.field, obj[self.field], f" on line {lineno}")
            if text and text.strip():
                yield text


class ParquetSource(_Base):
    """A Parquet file, read one record batch of ``field`` at a time."""

    def __init__(self, path: str, field: str = "text", batch_size: int = 1024):
        self.path, self.field, self.batch_size = path, field, batch_size

    @property
    def name(self) -> str:
        return self.path

    def _iter(self) -> Iterator[str]:
        # deferred: pyarrow.parquet costs ~80 ms on every command; parquet sources only
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not os.path.isfile(self.path):
            raise UserError(f"{self.path}: no such file")
        reading(self.path)
        try:
            pf = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"{self.path}: not a readable Parquet file ({e})") from None
        names = pf.schema_arrow.names
        if self.field not in names:
            raise _missing_field(self.path, self.field, names)
        for batch in pf.iter_batches(batch_size=self.batch_size, columns=[self.field]):
            for value in batch.column(0).to_pylist():
                text = _as_text(self.path, self.field, value)
                if text and text.strip():
                    yield text
