"""Language fidelity: langid for real languages, ground truth for the synthetic ones."""

from __future__ import annotations

import pytest

from jaxregion.analysis import fidelity
from jaxregion.data import synthetic
from jaxregion.errors import UserError


def test_real_languages_through_langid():
    texts = [
        "The university was established in 1905 and is located in the city centre.",
        "Die Universität wurde 1905 gegründet und liegt im Stadtzentrum.",
        "La universidad fue fundada en 1905 y está en el centro de la ciudad.",
        "Tertian, ancis tet tet at tete tette",
    ]
    assert fidelity.identify(texts[0]) == "en"
    assert fidelity.fidelity(texts, "en") == 0.25
    assert fidelity.fidelity(texts[1:3], "de_Latn") == 0.5
    assert fidelity.fidelity(["", texts[0]], "EN") == 0.5  # an empty continuation is a miss


def test_langid_model_ships_in_the_wheel():
    import os

    import py3langid

    data = os.path.join(os.path.dirname(py3langid.__file__), "data", "model.npz.xz")
    assert os.path.getsize(data) > 1_000_000
    assert {"en", "zh", "ar", "ru"} <= set(fidelity.langid_languages())


def test_synthetic_languages_by_ground_truth():
    for lang in synthetic.LANGUAGES:
        docs = list(synthetic.generate(lang, 4, seed=9))
        assert fidelity.fidelity(docs, lang) == 1.0
        # Half a document (a cut-off word included) still reads as its language.
        assert fidelity.identify_synthetic(docs[0][: len(docs[0]) // 2]) == lang
    lat = next(synthetic.generate("lat", 1))
    cyr = next(synthetic.generate("cyr", 1))
    assert fidelity.fidelity([lat, cyr, "Ana 42."], "lat") == pytest.approx(1 / 3)
    assert fidelity.identify_synthetic("Ana 42.") is None  # shared words do not vote


def test_unknown_language_is_a_user_error():
    with pytest.raises(UserError, match="xx"):
        fidelity.fidelity(["hello"], "xx")
    with pytest.raises(UserError, match="no continuations"):
        fidelity.fidelity([], "en")
