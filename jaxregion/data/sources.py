"""Sources of documents, one language each, always streamed.

A source spec is what follows ``LANG=`` on the command line or in a YAML config:

* a path: ``.txt`` (one document per non-empty line, or blank-line separated with
  ``doc_sep=blank``), ``.jsonl``/``.ndjson`` (a string field), ``.parquet`` (a string
  column); text and JSONL may be ``.gz`` or ``.zst`` compressed. A directory written by
  ``datasets.Dataset.save_to_disk`` is read with ``load_from_disk``.
* ``tfds:NAME[/CONFIG]:SPLIT[:FIELD]`` -- a TFDS dataset prepared as array_record, read with
  ``tfds.data_source`` (no TensorFlow needed).
* ``hf:NAME[:CONFIG]:SPLIT[:FIELD]`` -- a Hugging Face hub dataset, streamed; or
  ``hf:/path/to/dir[:SPLIT][:FIELD]`` for a ``save_to_disk`` directory.
* ``synthetic:LANG[:N_DOCS][:SEED]`` -- the built-in artificial languages.

Options go in keyword arguments or a ``?key=value&...`` suffix: ``doc_sep``, ``field``,
``data_dir`` (TFDS). Memory never grows with the corpus: everything is read in chunks.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from jaxregion.errors import UserError

SCHEMES = ("tfds", "hf", "synthetic", "file")
OPTIONS = ("doc_sep", "field", "data_dir")
_CHUNK = 1 << 20
_SPLIT_NAMES = {"train", "test", "validation", "valid", "dev", "eval", "all"}


@runtime_checkable
class Source(Protocol):
    """Anything with a ``name`` and a fresh document iterator per call."""

    @property
    def name(self) -> str: ...

    def documents(self) -> Iterator[str]: ...


class _Base:
    """Shared behaviour: a source that yields nothing is an error, not a silent no-op."""

    name: str

    def documents(self) -> Iterator[str]:
        n = 0
        for doc in self._iter():
            n += 1
            yield doc
        if n == 0:
            raise UserError(f"{self.name}: no documents found; check the source is not empty "
                            "and the field/split are right")

    def _iter(self) -> Iterator[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ---------------------------------------------------------------------------------- files ---

def _datasets(name: str):
    """The optional ``datasets`` package, or a UserError saying how to get it."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"{name}: hf: sources need the `datasets` package; "
                        "pip install 'jaxregion[hf]'") from None
    return datasets


def _compression(path: str) -> str:
    low = path.lower()
    return "gzip" if low.endswith(".gz") else "zstd" if low.endswith(".zst") else ""


def _zstd_chunks(path: str, f) -> Iterator[bytes]:
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj, pending = dctx.decompressobj(), False
    while raw := f.read(_CHUNK):
        while raw:
            try:
                out = obj.decompress(raw)
            except zstandard.ZstdError as e:
                raise UserError(f"{path}: corrupt zstd stream ({e}); re-download or "
                                "re-compress the file") from None
            pending = True
            if out:
                yield out
            if obj.eof:  # frame finished; any rest belongs to the next frame
                raw, obj, pending = obj.unused_data, dctx.decompressobj(), False
            else:
                raw = b""
    if pending:
        raise UserError(f"{path}: truncated or corrupt zstd stream (file ends mid-frame); "
                        "re-download or re-compress the file")


def _byte_chunks(path: str) -> Iterator[bytes]:
    """The decompressed bytes of ``path`` in ~1 MiB chunks, with readable errors."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
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
                raise UserError(f"{path}: truncated or corrupt gzip stream ({e}); re-download "
                                "or re-compress the file") from None
            return
        while chunk := f.read(_CHUNK):
            yield chunk


def _lines(path: str) -> Iterator[str]:
    """Lines of a (maybe compressed) UTF-8 file without their line ends, streamed."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    rest, offset = "", 0
    for chunk in _byte_chunks(path):
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not valid UTF-8 near byte {offset + e.start}; "
                            "re-encode it as UTF-8") from None
        offset += len(chunk)
        parts = (rest + text).split("\n")
        rest = parts.pop()
        for line in parts:
            yield line[:-1] if line.endswith("\r") else line
    try:
        rest += decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8 at the end of the file (cut mid-character); "
                        "re-encode it as UTF-8") from None
    if rest:
        yield rest[:-1] if rest.endswith("\r") else rest


class TextFileSource(_Base):
    """A UTF-8 text file (maybe .gz/.zst): one document per non-empty line, or per paragraph."""

    def __init__(self, path: str, doc_sep: str = "line"):
        if doc_sep not in ("line", "blank"):
            raise UserError(f"{path}: doc_sep={doc_sep!r} is not supported; use 'line' "
                            "(one document per line) or 'blank' (blank-line separated)")
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
        for line in _lines(self.path):
            if line.strip():
                para.append(line)
            elif para:
                yield "\n".join(para)
                para = []
        if para:
            yield "\n".join(para)


def _missing_field(name: str, field: str, keys, where: str = "") -> UserError:
    return UserError(f"{name}: field {field!r} not found{where}; available keys: "
                     f"{', '.join(map(str, keys)) or '(none)'}; pass field=KEY")


def _as_text(name: str, field: str, value, where: str = "") -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{name}: field {field!r}{where} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise UserError(f"{name}: field {field!r}{where} holds {type(value).__name__}, not "
                        "text; pick a text field")
    return value


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
                raise UserError(f"{self.path}:{lineno}: not valid JSON ({e.msg}); "
                                "expected one JSON object per line") from None
            if not isinstance(obj, dict):
                raise UserError(f"{self.path}:{lineno}: expected a JSON object, got "
                                f"{type(obj).__name__}")
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
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not os.path.isfile(self.path):
            raise UserError(f"{self.path}: no such file")
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


# ------------------------------------------------------------------------------- datasets ---

def _split_colons(s: str) -> list[str]:
    """Split on ':' outside [...] so TFDS/HF slices like ``train[:1000]`` survive."""
    parts, depth, cur = [], 0, []
    for ch in s:
        depth += (ch == "[") - (ch == "]")
        if ch == ":" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _field_of(name: str, record, field: str, where: str):
    """``record[field]``; a dotted field walks nested feature dicts."""
    value = record
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            keys = value.keys() if isinstance(value, dict) else []
            raise _missing_field(name, field, keys, where)
        value = value[key]
    return value


class TfdsSource(_Base):
    """A TFDS dataset prepared as array_record, read by index ranges (no TensorFlow)."""

    def __init__(self, dataset: str, split: str, field: str = "text",
                 data_dir: str | None = None, batch: int = 256):
        self.dataset, self.split, self.field, self.batch = dataset, split, field, batch
        self.data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None

    @property
    def name(self) -> str:
        return f"tfds:{self.dataset}:{self.split}:{self.field}"

    def _how_to_prepare(self) -> str:
        d = self.data_dir or "~/tensorflow_datasets"
        base = self.dataset.split("/")[0]
        return (f"prepare it with `tfds build {base} --data_dir {d} --file_format "
                f"array_record` (or builder.download_and_prepare(file_format='array_record')), "
                "then pass data_dir= or set TFDS_DATA_DIR")

    def _open(self):
        import tensorflow_datasets as tfds

        try:
            return tfds.data_source(self.dataset, split=self.split, data_dir=self.data_dir,
                                    download=False)
        except Exception as e:  # tfds raises many types; all mean "not usable as given"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "split" in first.lower():
                raise UserError(f"{self.name}: {first}") from None
            raise UserError(f"{self.name}: dataset not prepared or not found in "
                            f"{self.data_dir or 'the default TFDS data_dir'} ({first[:200]}); "
                            f"{self._how_to_prepare()}") from None

    def _iter(self) -> Iterator[str]:
        ds = self._open()
        n = len(ds)
        for start in range(0, n, self.batch):
            idx = list(range(start, min(n, start + self.batch)))
            records = ds.__getitems__(idx) if hasattr(ds, "__getitems__") else [ds[i] for i in idx]
            for i, rec in zip(idx, records):
                where = f" in record {i}"
                text = _as_text(self.name, self.field, _field_of(self.name, rec, self.field,
                                                                 where), where)
                if text and text.strip():
                    yield text


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f))
        for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


class HfDiskSource(_Base):
    """A directory written by ``Dataset.save_to_disk`` (memory-mapped Arrow, read in batches)."""

    def __init__(self, path: str, split: str | None = None, field: str = "text"):
        self.path, self.split, self.field = path, split, field

    @property
    def name(self) -> str:
        return f"hf:{self.path}" + (f":{self.split}" if self.split else "")

    def _iter(self) -> Iterator[str]:
        datasets = _datasets(self.name)
        if not _is_saved_dataset(self.path):
            raise UserError(f"{self.path}: not a saved HF dataset (no dataset_info.json, "
                            "state.json or dataset_dict.json); save it with "
                            "Dataset.save_to_disk")
        try:
            ds = datasets.load_from_disk(self.path)
        except Exception as e:
            raise UserError(f"{self.path}: cannot load the saved dataset ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            split = self.split or ("train" if "train" in ds else None)
            if split is None and len(ds) == 1:
                split = next(iter(ds))
            if split not in ds:
                raise UserError(f"{self.path}: split {split!r} not found; available splits: "
                                f"{', '.join(ds)}; pass hf:{self.path}:SPLIT")
            ds = ds[split]
        if self.field not in ds.column_names:
            raise _missing_field(self.path, self.field, ds.column_names)
        for batch in ds.select_columns([self.field]).iter(batch_size=1000):
            for value in batch[self.field]:
                text = _as_text(self.path, self.field, value)
                if text and text.strip():
                    yield text


class HfHubSource(_Base):
    """A Hugging Face hub dataset, streamed row by row."""

    def __init__(self, dataset: str, config: str | None, split: str, field: str = "text"):
        self.dataset, self.config, self.split, self.field = dataset, config, split, field

    @property
    def name(self) -> str:
        cfg = f":{self.config}" if self.config else ""
        return f"hf:{self.dataset}{cfg}:{self.split}:{self.field}"

    def _iter(self) -> Iterator[str]:
        datasets = _datasets(self.name)
        try:
            ds = datasets.load_dataset(self.dataset, self.config, split=self.split,
                                       streaming=True)
            rows = iter(ds)
            first = next(rows, None)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{self.name}: cannot open the dataset ({msg[:300]}); check the "
                            "name, config and split, and that the hub (or HF cache) is "
                            "reachable") from None
        if first is None:
            return
        for i, row in enumerate(_chain(first, rows)):
            where = f" in row {i}"
            text = _as_text(self.name, self.field, _field_of(self.name, row, self.field, where),
                            where)
            if text and text.strip():
                yield text


def _chain(first, rest):
    yield first
    yield from rest


class SyntheticSource(_Base):
    """Documents of one built-in artificial language (see :mod:`jaxregion.data.synthetic`)."""

    def __init__(self, lang: str, n_docs: int = 10000, seed: int = 0):
        from jaxregion.data import synthetic

        if lang not in synthetic.LANGUAGES:
            raise UserError(f"synthetic:{lang}: unknown synthetic language; choose one of "
                            f"{', '.join(synthetic.LANGUAGES)}")
        self.lang, self.n_docs, self.seed = lang, n_docs, seed

    @property
    def name(self) -> str:
        return f"synthetic:{self.lang}:{self.n_docs}:{self.seed}"

    def _iter(self) -> Iterator[str]:
        from jaxregion.data import synthetic

        yield from synthetic.generate(self.lang, self.n_docs, self.seed)


# ------------------------------------------------------------------------------ open_source ---

def _split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``"a.jsonl?field=body"`` -> ``("a.jsonl", {"field": "body"})``; a real path wins."""
    if "?" not in spec or os.path.exists(spec):
        return spec, {}
    base, query = spec.rsplit("?", 1)
    opts: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or key not in OPTIONS:
            raise UserError(f"{spec!r}: bad option {item!r}; options are "
                            f"{', '.join(o + '=...' for o in OPTIONS)}")
        opts[key] = value
    return base, opts


def _int(spec: str, what: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{spec!r}: {what} must be an integer, got {value!r}") from None


def _open_path(path: str, doc_sep: str | None, field: str | None) -> Source:
    if os.path.isdir(path):
        if _is_saved_dataset(path):
            return HfDiskSource(path, None, field or "text")
        raise UserError(f"{path}: is a directory, not a file or a saved HF dataset; for a "
                        "directory of LANG.txt files use --corpus DIR")
    low = path.lower()
    for ext in (".gz", ".zst"):
        if low.endswith(ext):
            low = low[: -len(ext)]
    if low.endswith((".jsonl", ".ndjson", ".json")):
        return JsonlSource(path, field or "text")
    if low.endswith(".parquet"):
        return ParquetSource(path, field or "text")
    if field is not None:
        raise UserError(f"{path}: field={field!r} only applies to .jsonl/.parquet/tfds/hf "
                        "sources; remove it or use one of those")
    return TextFileSource(path, doc_sep or "line")


def open_source(spec: str, *, doc_sep: str | None = None, field: str | None = None,
                data_dir: str | None = None) -> Source:
    """The source for ``spec`` (the part after ``LANG=``). Keyword args override ``?`` options."""
    spec = spec.strip()
    base, opts = _split_options(spec)
    doc_sep = doc_sep or opts.get("doc_sep")
    field = field or opts.get("field")
    data_dir = data_dir or opts.get("data_dir")
    m = re.match(r"^([A-Za-z][A-Za-z0-9_+.-]*):", base)
    # A one-letter scheme is a Windows drive (C:\...), and an existing path is just a path.
    if not m or len(m.group(1)) == 1 or os.path.exists(base):
        return _open_path(base, doc_sep, field)
    scheme, rest = m.group(1).lower(), base[m.end():]
    if scheme not in SCHEMES:
        raise UserError(f"{spec!r}: unknown source scheme {m.group(1)!r}; supported: "
                        f"{', '.join(s + ':' for s in SCHEMES)} or a path to "
                        ".txt/.jsonl/.parquet (.gz/.zst) files")
    if scheme == "file":
        return _open_path(rest, doc_sep, field)
    parts = _split_colons(rest)
    if scheme == "synthetic":
        if not 1 <= len(parts) <= 3 or not parts[0]:
            raise UserError(f"{spec!r}: expected synthetic:LANG[:N_DOCS][:SEED]")
        n_docs = _int(spec, "N_DOCS", parts[1]) if len(parts) > 1 else 10000
        seed = _int(spec, "SEED", parts[2]) if len(parts) > 2 else 0
        return SyntheticSource(parts[0], n_docs, seed)
    if scheme == "tfds":
        if len(parts) not in (2, 3) or not all(parts):
            raise UserError(f"{spec!r}: expected tfds:NAME[/CONFIG]:SPLIT[:FIELD], e.g. "
                            "tfds:wiki40b/ar:test:text")
        return TfdsSource(parts[0], parts[1], field or (parts[2] if len(parts) > 2 else "text"),
                          data_dir)
    # hf:
    if parts[0].startswith(("/", ".", "~")) or _is_saved_dataset(parts[0]):
        path = os.path.expanduser(parts[0])
        if len(parts) > 3:
            raise UserError(f"{spec!r}: expected hf:/path/to/dir[:SPLIT][:FIELD]")
        split = parts[1] or None if len(parts) > 1 else None
        return HfDiskSource(path, split, field or (parts[2] if len(parts) > 2 else "text"))
    if not 2 <= len(parts) <= 4 or not all(parts):
        raise UserError(f"{spec!r}: expected hf:NAME[:CONFIG]:SPLIT[:FIELD], e.g. "
                        "hf:wikimedia/wikipedia:20231101.ar:train:text")
    config, fld = None, None
    if len(parts) == 4:
        name, config, split, fld = parts
    elif len(parts) == 3:
        looks_split = parts[1].split("[")[0] in _SPLIT_NAMES
        name, split, fld = parts if looks_split else (parts[0], parts[2], None)
        if not looks_split:
            config = parts[1]
    else:
        name, split = parts
    return HfHubSource(name, config, split, field or fld or "text")


def sources_from_dir(directory: str, split: str = "train") -> dict[str, Source]:
    """``LANG.SPLIT.txt`` (else ``LANG.txt``) files in ``directory``, one source per language.

    A plain ``LANG.txt`` is used only when the language has no split-named files at all, so a
    test split never silently reads training text.
    """
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: no such directory")
    pat = re.compile(r"^([A-Za-z0-9_-]+?)(?:\.([A-Za-z0-9_-]+))?\.txt(\.gz|\.zst)?$")
    by_lang: dict[str, dict[str | None, str]] = {}
    for fname in sorted(os.listdir(directory)):
        m = pat.match(fname)
        if m and os.path.isfile(os.path.join(directory, fname)):
            by_lang.setdefault(m.group(1), {}).setdefault(m.group(2), fname)
    out: dict[str, Source] = {}
    for lang, files in by_lang.items():
        fname = files.get(split) or (files.get(None) if set(files) == {None} else None)
        if fname:
            out[lang] = TextFileSource(os.path.join(directory, fname))
    if not out:
        raise UserError(f"{directory}: no LANG.{split}.txt or LANG.txt files (e.g. "
                        f"ar.{split}.txt); write some or use --text LANG=SOURCE")
    return out


def parse_lang_spec(arg: str) -> tuple[str, str]:
    """``"ar=path/ar.txt"`` -> ``("ar", "path/ar.txt")``."""
    if "=" not in arg:
        raise UserError(f"--text {arg!r}: expected LANG=SOURCE, e.g. --text ar=data/ar.txt")
    lang, spec = arg.split("=", 1)
    lang, spec = lang.strip(), spec.strip()
    if not lang or not spec:
        raise UserError(f"--text {arg!r}: expected LANG=SOURCE, e.g. --text ar=data/ar.txt")
    return lang, spec
