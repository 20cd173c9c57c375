"""Sources of documents, one language each, always streamed.

A source spec is what follows ``LANG=`` on the command line or in a YAML config. Here: a path
to a ``.txt`` file, one document per non-empty line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from jaxregion.errors import UserError


@dataclass(frozen=True)
class TextFileSource:
    """A UTF-8 text file with one document per non-empty line."""

    path: str

    @property
    def name(self) -> str:
        return self.path

    def documents(self) -> Iterator[str]:
        if not os.path.isfile(self.path):
            raise UserError(f"{self.path}: no such text file")
        try:
            with open(self.path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    line = line.rstrip("\n").rstrip("\r")
                    if line.strip():
                        yield line
        except UnicodeDecodeError as e:
            raise UserError(
                f"{self.path}: not valid UTF-8 near byte {e.start}; re-encode it as UTF-8"
            ) from None


def open_source(spec: str) -> TextFileSource:
    """The source for ``spec`` (the part after ``LANG=``)."""
    return TextFileSource(spec)


def parse_lang_spec(arg: str) -> tuple[str, str]:
    """``"ar=path/ar.txt"`` -> ``("ar", "path/ar.txt")``."""
    if "=" not in arg:
        raise UserError(f"--text {arg!r}: expected LANG=SOURCE, e.g. --text ar=data/ar.txt")
    lang, spec = arg.split("=", 1)
    lang, spec = lang.strip(), spec.strip()
    if not lang or not spec:
        raise UserError(f"--text {arg!r}: expected LANG=SOURCE, e.g. --text ar=data/ar.txt")
    return lang, spec
