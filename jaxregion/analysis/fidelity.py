"""Language fidelity: does the edited model still write in the prompt's language?

Why: removing a language's region should make the model drift out of that language; the
share of continuations identified as the prompt's language measures it. Real languages are
identified by py3langid (langid.py's model: 97 ISO 639-1 codes, shipped inside the wheel,
nothing downloaded). langid cannot know the synthetic languages, so those are identified
from their own ground truth (:mod:`jaxregion.data.synthetic`): each word votes for the
languages that can emit it (or, for a form no language emits, whose alphabet spells it);
shared names and numerals do not vote.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from jaxregion.data import synthetic
from jaxregion.errors import UserError

# A word: a run of Latin letters, or a run of other letters (scripts without spaces, such as
# the synthetic CJK, glue names to words: the split at the script change separates them).
_WORD = re.compile(r"[A-Za-z\u00C0-\u024F]+|[^\sA-Za-z\u00C0-\u024F\d.,?!]+")


@functools.lru_cache(maxsize=1)
def _langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE)


def langid_languages() -> list[str]:
    """The ISO 639-1 codes py3langid can tell apart."""
    return sorted(_langid().labels)


def _iso(lang: str) -> str:
    """``en``, ``EN``, ``en_Latn``, ``eng-US`` -> the leading code, lower case."""
    return re.split(r"[_\-]", lang.strip())[0].lower()


def check_language(lang: str) -> None:
    """A language fidelity can be measured for: synthetic, or known to langid."""
    if lang in synthetic.LANGUAGES or _iso(lang) in _langid().labels:
        return
    raise UserError(
        f"language {lang!r}: not a synthetic language "
        f"({', '.join(synthetic.LANGUAGES)}) and not among py3langid's ISO 639-1 "
        "codes; name prompts by ISO code "
        "(e.g. en, zh, ar)"
    )


def identify_synthetic(text: str) -> str | None:
    """The synthetic language most of ``text``'s words belong to; None when no word votes."""
    votes = dict.fromkeys(synthetic.LANGUAGES, 0.0)
    for word in _WORD.findall(text):
        if word in synthetic.SHARED_WORDS:
            continue
        langs = [c for c, s in synthetic.LANGUAGES.items() if word in s.words]
        if not langs:  # a new or cut-off form: whose letters spell it?
            langs = [c for c, s in synthetic.LANGUAGES.items() if set(word) <= s.alphabet]
        for c in langs:
            votes[c] += 1.0 / len(langs)
    best = max(votes, key=votes.__getitem__)
    return best if votes[best] > 0 else None


def identify(text: str, lang_space: str = "langid") -> str | None:
    """The language of ``text``: ``lang_space`` "langid" (ISO codes) or "synthetic"."""
    if lang_space == "synthetic":
        return identify_synthetic(text)
    if not text.strip():
        return None
    return _langid().classify(text)[0]


def fidelity(continuations: Sequence[str], lang: str) -> float:
    """Share of ``continuations`` identified as ``lang`` (an empty one counts as a miss)."""
    check_language(lang)
    if not continuations:
        raise UserError(f"language {lang!r}: no continuations to measure fidelity on")
    if lang in synthetic.LANGUAGES:
        hits = sum(identify_synthetic(t) == lang for t in continuations)
    else:
        hits = sum(identify(t) == _iso(lang) for t in continuations)
    return hits / len(continuations)
