"""Answer extraction and matching: the one matcher for consistency filtering and evaluation.

``extract_answer(text)`` finds the answer a text (a trace or a response) arrives at;
``answers_match(given, found)`` compares two answers and returns True, False, or None
when it cannot verify (nothing to compare, or neither side parses as mathematics and the
strings differ). None is never silently treated as False.

Order of checks, cheapest first: normalised string equality, multiple-choice letters,
then math-verify on both sides (wrapped in ``$...$`` as it expects) under a timeout.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional

_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*[:\s]*(?P<ans>[^\n]+?)\s*(?:\.\s*$|$)", re.I | re.M)
_ARROW_OR_EQ = re.compile(r"(?:->|=)\s*(-?\d+(?:\.\d+)?)\s*$", re.M)
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:/\d+)?")
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?[.:)]?$")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORDS = re.compile(r"[a-z][a-z'\-]+")  # after normalize (lowercase, no spaces)
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (nested braces handled)."""
    if not text:
        return None
    starts = [m.end() for m in _BOXED_START.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            return text[start:i - 1].strip()
    return None


def extract_answer(text: Optional[str]) -> Optional[str]:
    """The answer a text arrives at: the last ``\\boxed{}``; else an "answer is X"
    phrase; else the value of the last step (``... -> 7`` / ``... = 7``); else the
    last number. None if there is none."""
    if not text or not text.strip():
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrases = list(_ANSWER_IS.finditer(text))
    if phrases:
        return phrases[-1].group("ans").strip().rstrip(".").strip("$ ")
    steps = _ARROW_OR_EQ.findall(text)
    if steps:
        return steps[-1]
    nums = _NUMBER.findall(text)
    return nums[-1] if nums else None


def normalize(ans: str) -> str:
    s = ans.strip()
    inner = last_boxed(s)
    if inner is not None:
        s = inner
    s = _TEXT_WRAP.sub(r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "").replace("\\ ", "")
    s = s.strip().strip("$").strip().rstrip(".").strip()
    s = re.sub(r"\s+", "", s).lower()
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    return s


def _choice(s: str) -> Optional[str]:
    m = _CHOICE.match(s.strip())
    return m.group(1).upper() if m else None


@lru_cache(maxsize=65536)
def _parse_math(ans: str, timeout: int):
    from math_verify import parse

    text = ans if ans.strip().startswith(("$", "\\boxed")) else f"${ans}$"
    try:
        return tuple(parse(text, parsing_timeout=timeout))
    except Exception:
        return ()


def answers_match(given: Optional[str], found: Optional[str], timeout: int = 5) -> Optional[bool]:
    """Is ``found`` the same answer as ``given`` (the reference)? None = cannot verify."""
    if given is None or found is None or not str(given).strip() or not str(found).strip():
        return None
    g, f = normalize(str(given)), normalize(str(found))
    if g == f:
        return True
    cg, cf = _choice(g), _choice(f)
    if cg and cf:
        return cg == cf
    if cg or cf:  # a letter against something else: not comparable
        return None
    if _PLAIN_NUMBER.fullmatch(g) and _PLAIN_NUMBER.fullmatch(f):
        # Two plain numbers need no parser (math-verify costs ~1 ms a pair); same
        # rounding as math-verify's default (6 decimals).
        return round(float(g), 6) == round(float(f), 6)
    if _WORDS.fullmatch(g) or _WORDS.fullmatch(f):
        # Words are not mathematics (math-verify would read "paris" as p*a*r*i*s);
        # different strings may still mean the same thing, so this cannot be verified.
        return None
    pg, pf = _parse_math(str(given), timeout), _parse_math(str(found), timeout)
    if not pg or not pf:
        return None
    from math_verify import verify

    try:
        return bool(verify(list(pg), list(pf), timeout_seconds=timeout))
    except Exception:
        return None


def consistency_verdict(given_answer: Optional[str], text: Optional[str], timeout: int = 5) -> tuple[Optional[bool], str]:
    """(verdict, reason) for "does this trace arrive at the given answer?"."""
    target = extract_answer(given_answer) if given_answer else None
    if target is None:
        return None, "cannot verify: no answer in the target's response"
    found = extract_answer(text)
    if found is None:
        return None, "cannot verify: no answer found in the trace"
    ok = answers_match(target, found, timeout)
    if ok is None:
        return None, f"cannot verify: could not compare {found[:40]!r} with {target[:40]!r}"
    return ok, "consistent" if ok else f"inconsistent: trace reaches {found[:40]!r}, target answered {target[:40]!r}"
