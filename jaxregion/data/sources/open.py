"""Spec strings to sources: ``open_source``, ``sources_from_dir``, ``parse_lang_spec``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from jaxregion.data import synthetic
from jaxregion.data.sources.base import (
    _SPLIT_NAMES,
    OPTIONS,
    SCHEMES,
    Source,
    _Base,
    _split_colons,
)
from jaxregion.data.sources.files import JsonlSource, ParquetSource, TextFileSource
from jaxregion.data.sources.remote import (
    HfDiskSource,
    HfHubSource,
    TfdsSource,
    _is_saved_dataset,
)
from jaxregion.errors import UserError
from jaxregion.safety import check_name, excerpt


class SyntheticSource(_Base):
    """Documents of one built-in artificial language (see :mod:`jaxregion.data.synthetic`)."""

    def __init__(self, lang: str, n_docs: int = 10000, seed: int = 0):
        if lang not in synthetic.LANGUAGES:
            raise UserError(
                f"synthetic:{lang}: unknown synthetic language; choose one of "
                f"{', '.join(synthetic.LANGUAGES)}"
            )
        self.lang, self.n_docs, self.seed = lang, n_docs, seed

    @property
    def name(self) -> str:
        return f"synthetic:{self.lang}:{self.n_docs}:{self.seed}"

    def _iter(self) -> Iterator[str]:
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
            raise UserError(
                f"{spec!r}: bad option {item!r}; options are "
                f"{', '.join(o + '=...' for o in OPTIONS)}"
            )
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
        raise UserError(
            f"{path}: is a directory, not a file or a saved HF dataset; for a "
            "directory of LANG.txt files use --corpus DIR"
        )
    low = path.lower()
    for ext in (".gz", ".zst"):
        if low.endswith(ext):
            low = low[: -len(ext)]
    if low.endswith((".jsonl", ".ndjson", ".json")):
        return JsonlSource(path, field or "text")
    if low.endswith(".parquet"):
        return ParquetSource(path, field or "text")
    if field is not None:
        raise UserError(
            f"{path}: field={field!r} only applies to .jsonl/.parquet/tfds/hf "
            "sources; remove it or use one of those"
        )
    return TextFileSource(path, doc_sep or "line")


def _open_synthetic(spec: str, parts: list[str], field: str | None, data_dir: str | None) -> Source:
    """``synthetic:LANG[:N_DOCS][:SEED]``."""
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise UserError(f"{spec!r}: expected synthetic:LANG[:N_DOCS][:SEED]")
    n_docs = _int(spec, "N_DOCS", parts[1]) if len(parts) > 1 else 10000
    seed = _int(spec, "SEED", parts[2]) if len(parts) > 2 else 0
    return SyntheticSource(parts[0], n_docs, seed)


def _open_tfds(spec: str, parts: list[str], field: str | None, data_dir: str | None) -> Source:
    """``tfds:NAME[/CONFIG]:SPLIT[:FIELD]``."""
    if len(parts) not in (2, 3) or not all(parts):
        raise UserError(
            f"{spec!r}: expected tfds:NAME[/CONFIG]:SPLIT[:FIELD], e.g. tfds:wiki40b/ar:test:text"
        )
    return TfdsSource(
        parts[0], parts[1], field or (parts[2] if len(parts) > 2 else "text"), data_dir
    )


def _open_hf(spec: str, parts: list[str], field: str | None, data_dir: str | None) -> Source:
    """``hf:/path/to/dir[:SPLIT][:FIELD]`` (a saved dataset) or
    ``hf:NAME[:CONFIG]:SPLIT[:FIELD]`` (the Hub; a middle part that is no split name is
    the config)."""
    if parts[0].startswith(("/", ".", "~")) or _is_saved_dataset(parts[0]):
        path = os.path.expanduser(parts[0])
        if len(parts) > 3:
            raise UserError(f"{spec!r}: expected hf:/path/to/dir[:SPLIT][:FIELD]")
        split = parts[1] or None if len(parts) > 1 else None
        return HfDiskSource(path, split, field or (parts[2] if len(parts) > 2 else "text"))
    if not 2 <= len(parts) <= 4 or not all(parts):
        raise UserError(
            f"{spec!r}: expected hf:NAME[:CONFIG]:SPLIT[:FIELD], e.g. "
            "hf:wikimedia/wikipedia:20231101.ar:train:text"
        )
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


_OPENERS = {"synthetic": _open_synthetic, "tfds": _open_tfds, "hf": _open_hf}


def open_source(
    spec: str, *, doc_sep: str | None = None, field: str | None = None, data_dir: str | None = None
) -> Source:
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
    scheme, rest = m.group(1).lower(), base[m.end() :]
    if scheme not in SCHEMES:
        raise UserError(
            f"{spec!r}: unknown source scheme {m.group(1)!r}; supported: "
            f"{', '.join(s + ':' for s in SCHEMES)} or a path to "
            ".txt/.jsonl/.parquet (.gz/.zst) files"
        )
    if scheme == "file":
        return _open_path(rest, doc_sep, field)
    return _OPENERS[scheme](spec, _split_colons(rest), field, data_dir)


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
        raise UserError(
            f"{directory}: no LANG.{split}.txt or LANG.txt files (e.g. "
            f"ar.{split}.txt); write some or use --text LANG=SOURCE"
        )
    return out


def parse_lang_spec(arg: str) -> tuple[str, str]:
    """``"ar=path/ar.txt"`` -> ``("ar", "path/ar.txt")``."""
    if "=" not in arg:
        raise UserError(f"--text {arg!r}: expected LANG=SOURCE, e.g. --text ar=data/ar.txt")
    lang, spec = arg.split("=", 1)
    lang, spec = lang.strip(), spec.strip()
    if not lang or not spec:
        raise UserError(f"--text {arg!r}: expected LANG=SOURCE, e.g. --text ar=data/ar.txt")
    return check_name(lang, f"--text {excerpt(arg)}"), spec
