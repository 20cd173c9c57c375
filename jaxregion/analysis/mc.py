"""A multiple-choice task built from the synthetic languages' ground truth, run by lm-eval.

Why: perplexity says how surprised a model is, not whether it still *knows* a language. The
synthetic languages have ground truth, so a task can ask exactly that: given a sentence of
language L, which of 4 candidates is the well-formed next sentence of L? The 3 distractors
are the true sentence with its words shuffled (word order broken), with the letters inside
each word shuffled (morphology broken), and a sentence of another language. Chance is 25%.
Each language is an lm-eval ``multiple_choice`` task ``jaxregion_mc_<lang>`` (a jsonl and a
YAML written to a folder, used with ``--include-path``), scored by ``acc`` and by the
byte-length-normalised ``acc_norm``.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from jaxregion.data import synthetic
from jaxregion.errors import UserError
from jaxregion.io.atomic import write_text

_SENTENCE = re.compile(r"[^.?!]+[.?!]")
KINDS = ("gold", "shuffled_words", "shuffled_letters", "other_language")


def task_name(lang: str) -> str:
    return f"jaxregion_mc_{lang}"


def _sentences(doc: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(doc) if s.strip()]


def _words(sentence: str, sep: str) -> tuple[list[str], str]:
    """Words and final punctuation; scripts without spaces are split into characters."""
    body, end = sentence[:-1], sentence[-1]
    return (body.split(sep) if sep else list(body)), end


def _shuffle_words(sentence: str, sep: str, rng: random.Random) -> str:
    words, end = _words(sentence, sep)
    for _ in range(10):
        out = words[:]
        rng.shuffle(out)
        if out != words:
            return sep.join(out) + end
    return ""


def _shuffle_letters(sentence: str, sep: str, rng: random.Random) -> str:
    words, end = _words(sentence, sep)
    if not sep:  # one character per word already: shuffle adjacent pairs' halves instead
        return _shuffle_words(sentence, sep, rng)
    out = []
    for w in words:
        letters = list(w)
        rng.shuffle(letters)
        out.append("".join(letters))
    text = sep.join(out) + end
    return text if text != sentence else ""


def items(lang: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` questions for ``lang``: ``{context, choices, gold, kinds}`` (kinds name each
    choice: gold, shuffled_words, shuffled_letters, other_language)."""
    if lang not in synthetic.LANGUAGES:
        raise UserError(
            f"multiple choice: {lang!r} is not a synthetic language "
            f"({', '.join(synthetic.LANGUAGES)})"
        )
    if n <= 0:
        raise UserError(f"multiple choice: n={n} questions; must be at least 1")
    sep = synthetic.LANGUAGES[lang].word_sep
    others = [c for c in synthetic.LANGUAGES if c != lang]
    rng = random.Random(f"jaxregion-mc:{lang}:{seed}")
    # Held out from training text: seeds far from the corpus seeds (0, 1, ...).
    docs = synthetic.generate(lang, None, seed=10_000_019 + seed)
    foreign = {c: synthetic.generate(c, None, seed=20_000_003 + seed) for c in others}
    out: list[dict] = []
    while len(out) < n:
        sents = _sentences(next(docs))
        if len(sents) < 2:
            continue
        context, gold = sents[0], sents[1]
        other = rng.choice(others)
        distractors = [
            _shuffle_words(gold, sep, rng),
            _shuffle_letters(gold, sep, rng),
            _sentences(next(foreign[other]))[0],
        ]
        if any(not d or d == gold for d in distractors):
            continue
        order = list(range(4))
        rng.shuffle(order)
        cands = [gold, *distractors]
        out.append(
            {
                "context": context,
                "choices": [cands[i] for i in order],
                "gold": order.index(0),
                "kinds": [KINDS[i] for i in order],
                "other_language": other,
            }
        )
    return out


_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
target_delimiter: " "
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_tasks(out_dir: str, langs: Sequence[str], n: int = 50, seed: int = 0) -> list[str]:
    """Write each language's questions (jsonl) and lm-eval YAML into ``out_dir``; return the
    task names (run them with ``include_path=out_dir``)."""
    names = []
    for lang in langs:
        data = os.path.abspath(os.path.join(out_dir, f"{task_name(lang)}.jsonl"))
        write_text(
            data, "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in items(lang, n, seed))
        )
        write_text(
            os.path.join(out_dir, f"{task_name(lang)}.yaml"),
            _YAML.format(task=task_name(lang), data=json.dumps(data)),
        )
        names.append(task_name(lang))
    return names


@dataclass(frozen=True)
class Comparison:
    """Accuracy per language under the base model and two removals, and the verdict."""

    base: dict[str, float]
    core: dict[str, float]
    random: dict[str, float]

    def drops(self) -> tuple[float, float]:
        """Mean accuracy drop (base - removed) over languages: (core, random)."""
        langs = list(self.base)
        mean = lambda d: sum(self.base[k] - d[k] for k in langs) / len(langs)  # noqa: E731
        return mean(self.core), mean(self.random)

    def verdict(self) -> str:
        core, rand = self.drops()
        more = "lowers accuracy more than" if core > rand else "does not lower accuracy more than"
        return (
            f"Removing the core region {more} removing a random region of the same size "
            f"(mean drop {core:+.3f} vs {rand:+.3f}; chance is 0.25)."
        )


def accuracies(
    results: dict, langs: Sequence[str], metric: str = "acc_norm,none"
) -> dict[str, float]:
    """``{lang: accuracy}`` from an lm-eval results dict of these tasks."""
    return {lang: float(results["results"][task_name(lang)][metric]) for lang in langs}


def evaluate_settings(
    session,
    settings: dict[str, dict],
    langs: Sequence[str],
    work_dir: str,
    n: int = 50,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, dict]:
    """``{setting: {lang: acc_norm}}``: the task run through the ``jaxregion`` lm-eval model
    for each params tree in ``settings`` (e.g. base, core removed, random removed). Needs
    the ``tasks`` extra."""
    # deferred: lm-evaluation-harness is an optional extra (the tasks extra)
    from jaxregion.lm_eval import JaxRegionLM, check_tasks, evaluate_lm

    tasks = write_tasks(work_dir, langs, n, seed)
    manager = check_tasks(tasks, work_dir)
    out = {}
    for name, params in settings.items():
        lm = JaxRegionLM.from_session(session, params, batch_size=batch_size)
        out[name] = accuracies(evaluate_lm(lm, tasks, work_dir, manager=manager), langs)
    return out
