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

from jaxregion.data.sources.base import OPTIONS, SCHEMES, Source
from jaxregion.data.sources.files import JsonlSource, ParquetSource, TextFileSource
from jaxregion.data.sources.open import (
    SyntheticSource,
    open_source,
    parse_lang_spec,
    sources_from_dir,
)
from jaxregion.data.sources.remote import HfDiskSource, HfHubSource, TfdsSource

__all__ = [
    "OPTIONS",
    "SCHEMES",
    "Source",
    "open_source",
    "parse_lang_spec",
    "sources_from_dir",
    "TextFileSource",
    "JsonlSource",
    "ParquetSource",
    "TfdsSource",
    "HfDiskSource",
    "HfHubSource",
    "SyntheticSource",
]
