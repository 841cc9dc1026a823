"""Summary style report: do the simulated summaries look like the target's?

Pure functions. Tokens are counted with one fixed rule (words and single punctuation
marks, ``\\w+|[^\\w\\s]``) so figures are comparable across models and tokenizers.
"""

from __future__ import annotations

import re
import statistics
from typing import Optional, Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")
_BOLD_HEADER = re.compile(r"^\s*\*\*[^*\n]+\*\*", re.M)
_FIRST_PERSON = re.compile(r"\b(I|I'm|I've|I'll|I'd|me|my|myself)\b|\b(Me|My)\b")
_LATEX = re.compile(r"\\[A-Za-z]+|\$[^$\n]+\$|\\\(|\\\[")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s", re.M)


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text or ""))


def style_report(summaries: Sequence[Optional[str]], traces: Optional[Sequence[Optional[str]]] = None) -> dict:
    """Figures over the non-empty summaries (and their traces, for compression).

    Returns n, median/mean tokens, the share of summaries with bold section headers,
    first-person language, LaTeX, numbered lists, and the median compression ratio
    (summary tokens / trace tokens) when traces are given.
    """
    pairs = [(s, traces[i] if traces is not None else None) for i, s in enumerate(summaries) if s and s.strip()]
    n = len(pairs)
    if n == 0:
        return {"n": 0, "n_empty": len(summaries)}
    toks = [count_tokens(s) for s, _ in pairs]

    def share(rx: re.Pattern) -> float:
        return round(sum(1 for s, _ in pairs if rx.search(s)) / n, 4)

    out = {
        "n": n,
        "n_empty": len(summaries) - n,
        "median_tokens": statistics.median(toks),
        "mean_tokens": round(statistics.fmean(toks), 2),
        "share_bold_headers": share(_BOLD_HEADER),
        "share_first_person": share(_FIRST_PERSON),
        "share_latex": share(_LATEX),
        "share_numbered_list": share(_NUMBERED),
    }
    ratios = [count_tokens(s) / count_tokens(t) for s, t in pairs if t and count_tokens(t)]
    if ratios:
        out["median_compression"] = round(statistics.median(ratios), 4)
    return out


def format_report(reports: dict[str, dict]) -> str:
    """A markdown table comparing named reports (e.g. compressor vs target)."""
    keys = ["n", "median_tokens", "share_bold_headers", "share_first_person", "share_latex",
            "share_numbered_list", "median_compression"]
    lines = ["| source | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, r in reports.items():
        lines.append(f"| {name} | " + " | ".join(str(r.get(k, "—")) for k in keys) + " |")
    return "\n".join(lines)
