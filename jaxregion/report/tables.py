"""Plain Markdown tables: readable in a terminal and in a rendered report.

Numbers are right-aligned, text left-aligned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 1e5 or (x != 0 and abs(x) < 10**-digits):
            return f"{x:.{digits}e}"
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    cells = [[fmt(c, digits) for c in r] for r in rows]
    numeric = [[isinstance(c, (int, float)) and not isinstance(c, bool) for c in r] for r in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
        for i, h in enumerate(headers)
    ]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| "
        + " | ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, nums))
        + " |"
        for r, nums in zip(cells, numeric)
    ]
    return "\n".join([line, sep, *body])


def cell_text(text: str, limit: int = 80) -> str:
    """Free text as one Markdown table cell: newlines shown as ⏎, pipes escaped, truncated
    to ``limit`` characters with an ellipsis (model output may hold anything)."""
    text = text.replace("\r\n", "\n").replace("\n", "⏎").replace("\t", " ")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|")


def eval_table(res: dict) -> str:
    """The perplexity and bits-per-byte table of ``jaxregion eval`` (``runtime.run_eval``'s
    result)."""
    bpb = res.get("bits_per_byte", {})
    rows = [
        (
            k,
            res["windows"][k],
            res["tokens"][k],
            res["loss"][k],
            res["perplexity"][k],
            "—" if bpb.get(k) is None else bpb[k],
        )
        for k in res["perplexity"]
    ]
    return markdown_table(["lang", "windows", "tokens", "loss", "perplexity", "bits/byte"], rows)


def completions_table(rows: list[dict]) -> str:
    """The table of ``jaxregion generate`` (``generate.run_generate``'s rows)."""
    edited = any("edited" in r for r in rows)
    headers = ["prompt", "completion"] + (["edited"] if edited else [])
    table = [
        [cell_text(r["prompt"], 40), cell_text(r["completion"])]
        + ([cell_text(r["edited"]["completion"])] if edited else [])
        for r in rows
    ]
    return markdown_table(headers, table)
