"""Plain Markdown tables: readable in a terminal and in a rendered report.

Numbers are right-aligned, text left-aligned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 1e5 or (x != 0 and abs(x) < 10 ** -digits):
            return f"{x:.{digits}e}"
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    cells = [[fmt(c, digits) for c in r] for r in rows]
    numeric = [[isinstance(c, (int, float)) and not isinstance(c, bool) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) if num else c.ljust(w)
                              for c, w, num in zip(r, widths, nums)) + " |"
            for r, nums in zip(cells, numeric)]
    return "\n".join([line, sep, *body])


def eval_table(res: dict) -> str:
    """The perplexity table of ``jaxregion eval`` (``runtime.run_eval``'s result)."""
    rows = [(k, res["windows"][k], res["tokens"][k], res["loss"][k], res["perplexity"][k])
            for k in res["perplexity"]]
    return markdown_table(["lang", "windows", "tokens", "loss", "perplexity"], rows)
