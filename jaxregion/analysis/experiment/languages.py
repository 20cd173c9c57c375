"""Language family and script, to order languages so related ones sit together in matrices.

Covers the paper's 30 evaluation languages and the built-in synthetic languages (family
"synthetic", script from their design); anything else sorts last, by code.
"""

from __future__ import annotations

from collections.abc import Iterable

from jaxregion.data import synthetic

#: code -> (family, branch, script), for the paper's 30 languages.
PAPER_LANGUAGES: dict[str, tuple[str, str, str]] = {
    "en": ("Indo-European", "Germanic", "Latin"),
    "de": ("Indo-European", "Germanic", "Latin"),
    "nl": ("Indo-European", "Germanic", "Latin"),
    "da": ("Indo-European", "Germanic", "Latin"),
    "no": ("Indo-European", "Germanic", "Latin"),
    "sv": ("Indo-European", "Germanic", "Latin"),
    "fr": ("Indo-European", "Romance", "Latin"),
    "es": ("Indo-European", "Romance", "Latin"),
    "it": ("Indo-European", "Romance", "Latin"),
    "pt": ("Indo-European", "Romance", "Latin"),
    "ro": ("Indo-European", "Romance", "Latin"),
    "cs": ("Indo-European", "Slavic", "Latin"),
    "pl": ("Indo-European", "Slavic", "Latin"),
    "ru": ("Indo-European", "Slavic", "Cyrillic"),
    "uk": ("Indo-European", "Slavic", "Cyrillic"),
    "el": ("Indo-European", "Hellenic", "Greek"),
    "fa": ("Indo-European", "Iranian", "Arabic"),
    "fi": ("Uralic", "Finnic", "Latin"),
    "hu": ("Uralic", "Ugric", "Latin"),
    "tr": ("Turkic", "Oghuz", "Latin"),
    "ar": ("Afro-Asiatic", "Semitic", "Arabic"),
    "sw": ("Niger-Congo", "Bantu", "Latin"),
    "id": ("Austronesian", "Malayic", "Latin"),
    "ms": ("Austronesian", "Malayic", "Latin"),
    "vi": ("Austroasiatic", "Vietic", "Latin"),
    "ml": ("Dravidian", "South", "Malayalam"),
    "ta": ("Dravidian", "South", "Tamil"),
    "zh": ("Sino-Tibetan", "Sinitic", "Han"),
    "ja": ("Japonic", "Japanese", "Kana+Han"),
    "ko": ("Koreanic", "Korean", "Hangul"),
}


def describe(code: str) -> tuple[str, str, str] | None:
    """(family, branch, script) of a language code, or None when unknown."""
    if code in PAPER_LANGUAGES:
        return PAPER_LANGUAGES[code]
    if code in synthetic.LANGUAGES:
        script = synthetic.LANGUAGES[code].script
        return ("synthetic", script, script)  # grouped by script
    return None


def order(codes: Iterable[str]) -> list[str]:
    """Codes sorted by family, branch, script, then code; unknown codes last, by code."""
    codes = list(dict.fromkeys(codes))
    known = sorted((c for c in codes if describe(c) is not None), key=lambda c: (*describe(c), c))
    return known + sorted(c for c in codes if describe(c) is None)


def label(code: str) -> str:
    """``code (family, script)`` for table headers and plot ticks."""
    d = describe(code)
    return code if d is None else f"{code} ({d[0]}, {d[2]})"
