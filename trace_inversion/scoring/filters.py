"""Trace filters: each returns (verdict, reason). True keeps, False rejects, None
means the filter cannot tell (kept, and counted separately)."""

from __future__ import annotations

from typing import Optional

from trace_inversion.scoring.style_report import _TOKEN


def empty_verdict(trace: Optional[str]) -> tuple[bool, str]:
    if trace is None or not trace.strip():
        return False, "empty"
    return True, "non-empty"


def truncation_verdict(output: Optional[str], finish_reason: Optional[str]) -> tuple[bool, str]:
    if finish_reason == "length":
        return False, "truncated: length cap hit"
    if output and "<think>" in output and "</think>" not in output:
        return False, "truncated: no closing </think>"
    return True, "complete"


def degeneracy_verdict(trace: Optional[str], n: int = 4, min_tokens: int = 40, min_distinct: float = 0.3,
                       max_line_run: int = 6) -> tuple[bool, str]:
    """Reject degenerate repetition: too few distinct n-grams, or one line repeated
    ``max_line_run`` times in a row."""
    if not trace:
        return True, "not repetitive"
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
    run = best = 1
    for a, b in zip(lines, lines[1:]):
        run = run + 1 if a == b else 1
        best = max(best, run)
    if len(lines) > 1 and best >= max_line_run:
        return False, f"degenerate: a line repeated {best} times in a row"
    toks = _TOKEN.findall(trace)
    if len(toks) >= min_tokens:
        grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
        distinct = len(set(grams)) / len(grams)
        if distinct < min_distinct:
            return False, f"degenerate: only {distinct:.0%} distinct {n}-grams"
    return True, "not repetitive"
