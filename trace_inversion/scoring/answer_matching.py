"""Answer extraction and matching: the one matcher for consistency filtering and evaluation.

``extract_final_answer(text)`` finds the answer a full text (a response or a trace)
arrives at and says how: ``(answer or None, method)``, method one of ``METHODS``.
``extract_answer(text)`` is its answer alone. ``answers_match(given, found)`` compares
two answers: True, False, or None when it cannot verify (nothing to compare, a letter
against a value, two texts in different words, math-verify cannot parse or times out).
None is never silently treated as False. ``consistency_verdict(given, text)`` extracts
both and compares them, with a reason.

Extraction takes the LAST stated answer of a text that changes its mind:

1. ``boxed`` / ``final_phrase``: the last ``\\boxed{}`` and the last answer statement
   ("final answer is", "the answer is", "**Answer:**", "Answer: C", a "### Answer"
   heading, "the correct option is"); whichever comes later wins, so an R1-style early
   boxed guess followed by "so the final answer is 10" gives 10. Statements that are
   not answers ("the answer is correct") are skipped. In a ``<think>...</think>`` text
   the part after ``</think>`` is read first.
2. A short text that is an answer as a whole is taken whole: ``choice`` (``C``,
   ``(C)``, ``\\textbf{(D) }42``, ``ACD``), ``expression`` (``1+2x``,
   ``(x-1)(x+1)``, ``\\sqrt{12}``, ``$\\frac{3}{4}$``, ``5 cm``), ``text`` (``Paris``).
3. Otherwise, in the last paragraph that states something (cut off: a trailing check
   that only confirms, "Let me verify: ... ✓"; a justification after "because" /
   "since" / ", where"; a rejected value ", not 5"): a count with its list
   (``3 solutions (1, 5, 9)``), an emphasised letter (``**(C)**``), the last bold value
   (``**42**``), every root of "x = 3 or x = -1", the value a plain-text last line ends
   on (``... -> 7``, ``(x, y) = (3, 4)``), else math-verify's own extraction
   (``math_verify.parse`` with ``LatexExtractionConfig(boxed_match_priority=0)`` and
   ``ExprExtractionConfig()``: the rightmost LaTeX environment or number): ``latex``
   or ``expression``. A chain of equalities gives its last side; ``x \\approx y`` its
   exact side.

Comparison, cheapest first: normalised strings, multiple-choice letters (a letter with
its value in the reference also matches the value), a count with its list, text answers
(different wording: None; a closed pair of opposites such as yes/no: False), plain
numbers (with separators, ``%``, degrees, currency and units dropped; a percentage
matches both 50 and 0.5), then math-verify on both sides with these additions on a
False: degrees against radians, a decimal approximation with at least 3 significant
digits (a coarser one: None), units of one dimension (``50 mm`` = ``5 cm``), the value
side of ``\\angle A = 45^\\circ``, and ``\\log`` read as ``\\ln``.

Timeouts: math-verify's own timeouts use ``signal.alarm``, which only works in a
process's main thread (in any other thread math-verify raises ValueError, which used to
turn every comparison into "cannot verify"). Here math-verify always runs with its own
timeouts off, under one deadline per call: a ``SIGALRM`` timer in the main thread
(distilabel's local runner calls ``process`` in the main thread of its worker
processes), and in any other thread a watchdog thread that is abandoned when the deadline
passes (the verdict is then None). After ``_MAX_ABANDONED`` abandoned calls a process
stops calling math-verify (verdicts needing it are None) rather than pile up stuck
threads. A call that hits the deadline is never a False.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
import time
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Optional

METHODS = ("boxed", "final_phrase", "latex", "expression", "choice", "text", "none")

# ----------------------------------------------------------------------------- extraction

_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Answer statements. A line-start label needs a colon ("Answer: C", "**Answer:** 24",
# "Short answer: x = 4", "Result: 6") unless the line is only a heading ("### Answer").
_PHRASE = re.compile(
    r"\bfinal\s+answers?\b(?:\s*(?:\*\*|__))?\s*(?:is|are|:|：|=|should\s+be|would\s+be|will\s+be|must\s+be)?"
    r"|\b(?:the|my|correct|right|true)\s+answers?\s+(?:is|are|should\s+be|would\s+be|must\s+be|will\s+be|=)"
    r"|\bcorrect\s+(?:options?|choices?|answers?)\s+(?:is|are)\b"
    r"|^[ \t>#*_]*(?:[A-Za-z]+[ \t]+)?(?:answers?|result)[ \t]*(?:\*\*|__)?[ \t]*[:：](?:[ \t]*(?:\*\*|__))?"
    r"|(?:\*\*|__)[ \t]*(?:final[ \t]+)?answers?[ \t]*[:：](?:[ \t]*(?:\*\*|__))?"
    r"|^[ \t>#*_]*(?:final[ \t]+)?answer[ \t*_]*$",
    re.I | re.M)
_LEADING_WORDS = re.compile(
    r"^(?:(?:is|are|:|=|then|therefore|thus|so|probably|likely|clearly|indeed|just|simply|definitely|"
    r"actually|still|exactly|approximately|about|around|roughly|given\s+by|equal\s+to|option|choice)\b[\s:,]*)+",
    re.I)
_NOT_ANSWERS = re.compile(
    r"^(?:correct|incorrect|right|wrong|not|that|this|these|those|as\b|below|above|given|the\s+same|consistent|"
    r"inconsistent|verified|confirmed|clear|obvious|in\b|to\b|of\b|for\b|reasonable|plausible|unchanged|valid|"
    r"invalid|what|which|how|why|whether|if\b|where|when|one\s+of|among|an?\s+(?:integer|number|expression|"
    r"answer|fraction)\b)", re.I)
_CUT = re.compile(
    r"\s*\((?:i\.e\.|e\.g\.|that is)[^)]*\)|\s+I\s+hope\b.*|\s+[—–]\s.*|\s--\s.*|;.*|,?\s+(?:because|since|which|where|"
    r"as\s+(?:required|expected|shown|computed))\b.*|\.(?=\s|$).*|\n.*", re.S)
_ENVS = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\$])\$(?!\$)(.+?)(?<!\\)\$", re.S)
_MD = re.compile(r"\*\*|__|`")
_CHOICE_ONE = re.compile(
    r"^(?:(?:option|choice)\s*)?(?:\(([A-Ea-e])\)|([A-E])(?=$|[).:\s]))\)?[.:]?\s*(?P<val>.*)$", re.S)
_CHOICE_MULTI = re.compile(r"^\(?[A-E]\)?(?:\s*(?:,|and|&|or)?\s*\(?[A-E]\)?)+$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_EMPH_CHOICE = re.compile(
    r"(?:\*\*|__|\\textbf\{)\s*\(([A-E])\)\s*(?:\*\*|__|\})|\(([A-E])\)\s+is\s+(?:the\s+)?(?:correct|right)\b")
_BOLD = re.compile(r"\*\*([^*\n]+?)\*\*|\\textbf\{([^{}\n]+)\}")
# The value a plain-text last line ends on: "add 4 -> 7" (the toy world), "3+4=7",
# "So (x, y) = (3, 4)", "Total: 5 + 5 + 5 = 15."
_STEP_VALUE = re.compile(r"(?:->|=)\s*(?P<v>[-+]?[\w.,()\[\]{}^*/+\- ]{1,40}?)\s*\.?\s*$")
_COUNT_LIST = re.compile(
    r"\b(?P<count>\d+)\s+(?P<noun>(?:[A-Za-z-]+\s+){0,3}?[A-Za-z-]+)\s*(?:\(|:|,\s*namely)\s*"
    r"(?P<items>-?\d+(?:\.\d+)?(?:\s*(?:,\s*and|,|and|&)\s*-?\d+(?:\.\d+)?)*)\s*\)?")
_LIST_ITEMS = re.compile(r"-?\d+(?:\.\d+)?")
# "x = 3 or x = -1" in plain text: every root, not the last one
_OR_LIST = re.compile(
    r"\b([A-Za-z])\s*=\s*-?\d+(?:[./]\d+)?(?:\s*(?:,\s*or|,\s*and|,|or|and)\s*\1\s*=\s*-?\d+(?:[./]\d+)?)+")
_WORD = re.compile(r"[A-Za-z]{2,}")
_STOPWORDS = frozenset(
    "i have has had is are was were the so thus we there of to it its this that then therefore be get got let me my "
    "not and or in on for with by at from as here answer problem sure how what which idea think need find can will "
    "would should do does am you your our us they them he she his her if when where why because since step first "
    "next now also just".split())


def last_boxed(text: Optional[str]) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (nested braces handled)."""
    spans = _boxed_spans(text) if text else []
    return spans[-1][2] if spans else None


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    out = []
    for m in _BOXED_START.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append((m.start(), i, text[m.end():i - 1].strip()))
    return out


def _strip_delims(s: str) -> str:
    """Math delimiters removed; several environments joined by commas/and/or become one list."""
    envs = list(_ENVS.finditer(s))
    if len(envs) > 1:
        between = [s[a.end():b.start()] for a, b in zip(envs, envs[1:])]
        if all(re.fullmatch(r"\s*(?:,|,?\s*and|,?\s*or)?\s*", x) for x in between):
            inner = ", ".join(next(g for g in e.groups() if g is not None).strip() for e in envs)
            return (s[:envs[0].start()] + inner + s[envs[-1].end():]).strip()
    return _ENVS.sub(lambda m: next(g for g in m.groups() if g is not None).strip(), s).strip()


def _split_top(s: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        elif ch == sep and depth <= 0:
            prev, nxt = s[i - 1] if i else "", s[i + 1] if i + 1 < len(s) else ""
            if sep == "=" and (prev in "<>!=:" or nxt == "="):
                continue
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _variable_free(s: str) -> bool:
    t = re.sub(r"\\(?:begin|end)\{[A-Za-z*]+\}|\\[A-Za-z]+", " ", s)
    return not re.search(r"[A-Za-z]", t) and bool(re.search(r"\d", s))


def _is_equation_side(s: str) -> bool:
    """Is ``s`` the left side of an equation answer (``y - 2x``, ``x^2 + y^2``, ``x``)
    rather than a named quantity (``\\angle ABC``, ``\\frac{\\mathbf{v}\\cdot\\mathbf{w}}{...}``,
    ``P(A)``) whose value is on the right?"""
    t = re.sub(r"\\(?:frac|dfrac|tfrac|sqrt|cdot|times|left|right)\b|\\[,;:! ]", "", s)
    if re.search(r"\\[A-Za-z]+|[A-Za-z]{2,}|\(", t):
        return False
    return bool(re.search(r"[a-z]", t))


def _tidy(s: str) -> str:
    """An extracted answer string cleaned: no markdown or delimiters, the exact side of
    an approximation, the last side of a chain of equalities (or of ``2 \\cdot 3 = 6``)."""
    s = _MD.sub("", s).strip()
    s = _strip_delims(s)
    s = s.strip().rstrip(".,;:✓").strip()
    if s.endswith("!") and not re.search(r"\d!$", s) or re.search(r"\d!!$", s):
        s = s[:-1].strip()  # an exclamation, not a factorial
    for approx in ("\\approx", "≈"):
        if approx in s:
            before, _, after = s.partition(approx)
            s = before.strip() or after.strip()
    if "=" in s and not re.search(r"(?<!\\),(?!\d{3}(?!\d))", s):
        sides = _split_top(s, "=")
        if len(sides) >= 3 and sides[-1]:
            s = sides[-1]
        elif len(sides) == 2 and sides[1] and (_variable_free(sides[0]) or (
                _variable_free(sides[1]) and not _is_equation_side(sides[0]))):
            s = sides[1]
    return s.strip().rstrip(".,;:").strip()


def _phrase_content(text: str, m: re.Match) -> Optional[str]:
    rest = text[m.end():]
    line = rest.split("\n", 1)[0]
    if not _MD.sub("", line).strip(" \t:*_"):
        following = [ln for ln in rest.split("\n")[1:] if ln.strip()]
        line = following[0] if following else ""
    c = _MD.sub("", line).strip()
    c = _LEADING_WORDS.sub("", c).strip()
    if not c or _NOT_ANSWERS.match(c):
        return None
    c = re.sub(r"^an?\s+(?=[a-z])", "", c)
    # Sentence ends and asides are cut outside math only.
    envs = [(e.start(), e.end()) for e in _ENVS.finditer(c)]
    pos = 0
    while True:
        cut = _CUT.search(c, pos)
        if cut is None:
            break
        if any(a < cut.start() < b for a, b in envs):
            pos = cut.start() + 1
            continue
        c = c[:cut.start()]
        break
    c = _tidy(c)
    if not c or len(c) > 200 or len(_WORD.findall(_TEXT_WRAP.sub(" ", c))) > 8:
        return None
    return c


def _last_phrase(text: str) -> Optional[tuple[int, str]]:
    for m in reversed(list(_PHRASE.finditer(text))):
        c = _phrase_content(text, m)
        if c:
            return m.start(), c
    return None


def _classify_whole(text: str) -> Optional[tuple[str, str]]:
    """A short text that is an answer as a whole: (answer, method) or None."""
    t = text.strip()
    if not t or len(t) > 120 or "\n" in t.strip():
        return None
    t = _MD.sub("", t).strip()
    inner = _strip_delims(t).strip().rstrip(".").strip()
    if not inner or inner.count("{") != inner.count("}") or "\\boxed" in inner or "\\fbox" in inner:
        return None
    if _choice_info(inner):
        return inner, "choice"
    words = _WORD.findall(re.sub(r"\\(?:begin|end)\{[A-Za-z*]+\}|\\[A-Za-z]+", " ", _TEXT_WRAP.sub(r" \1 ", inner)))
    if not words:
        return inner, "expression"
    if re.match(r"^[-+]?\\?\$?\s*\d", inner) and len(words) <= 3 and not (
            {w.lower() for w in words} & _STOPWORDS):
        return inner, "expression"  # a value with its unit: 5 cm, 45 dollars, 9.8 m/s^2
    if not re.search(r"\d", inner) and len(words) <= 5 and not ({w.lower() for w in words} & _STOPWORDS) \
            and not re.search(r"[=<>^_+*/]", _TEXT_WRAP.sub(r"\1", inner)):
        return inner, "text"
    return None


_VERIFY_CUE = re.compile(
    r"(?:(?<=[.!?:])\s+|^)(?:(?:now|so|ok(?:ay)?),?\s+)?(?:let\s+me|let's|let\s+us|i'll|i\s+will|we\s+can)\s+"
    r"(?:verify|check|double[- ]check|confirm)\b|(?:(?<=[.!?])\s+|^)(?:\*\*)?(?:verification|check)(?:\*\*)?\s*:",
    re.I | re.M)
_CONFIRMS = re.compile(r"✓|✔|\b(?:yes|correct|confirmed?|matches|checks\s+out|consistent|works)\b", re.I)
_CORRECTS = re.compile(r"\b(?:wait|actually|mistake|wrong|instead|incorrect|not\s+right)\b|\bno\b,", re.I)


def _cut_confirmation(p: str) -> str:
    """A paragraph without a trailing check that only confirms what it already stated
    ("So n = 6. Let me verify: 6 * 7 / 2 = 21 ✓"); a check that corrects is kept."""
    cues = list(_VERIFY_CUE.finditer(p))
    if cues:
        tail = p[cues[-1].start():]
        if _CONFIRMS.search(tail) and not _CORRECTS.search(tail):
            return p[:cues[-1].start()].rstrip()
    return p


def _region(body: str) -> str:
    """The last paragraph that states something (a digit, math or emphasis), without a
    trailing confirmation check or justification ("..., because ...")."""
    paras = [p for p in re.split(r"\n\s*\n", body) if p.strip()]
    region = ""
    for p in reversed(paras):
        p = _cut_confirmation(p)
        if re.search(r"\d|\\|\$|\*\*", p):
            region = p
            break
    region = region[-2000:]
    region = re.sub(r"(?<=\S),?\s+(?:because|since)\b[^\n]*|(?<=\S),\s+where\b[^\n]*", "", region)
    # "3 + 4 = 7, not 5" / "7 (not 5)": the rejected value is not the answer
    return re.sub(r",\s*(?:and\s+)?not\s+(?=[-$\\\d])[^\s,;]*?(?=[.,;]?(?:\s|$))|\s*\(not\s+[^()]*\)", "", region)


def _from_region(body: str) -> Optional[tuple[str, str]]:
    region = _region(body)
    if not region:
        return None
    last_sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z])", region.strip())[-1]
    for m in reversed(list(_COUNT_LIST.finditer(last_sentence))):
        if int(m.group("count")) == len(_LIST_ITEMS.findall(m.group("items"))):
            return f"{m.group('count')} {m.group('noun')}: {m.group('items')}", "expression"
    choices = list(_EMPH_CHOICE.finditer(region))
    if choices:
        m = choices[-1]
        return m.group(1) or m.group(2), "choice"
    has_math = bool(re.search(r"\d|\$|\\\(|\\\[", _BOLD.sub("", region)))
    for m in reversed(list(_BOLD.finditer(region))):
        raw = (m.group(1) or m.group(2) or "").strip()
        if not raw or raw.endswith(":") or region[m.end():m.end() + 1] == ":":
            continue
        val = _tidy(raw)
        whole = _classify_whole(val) if val else None
        if whole and (whole[1] != "text" or not has_math):
            return whole
    assignments = list(_OR_LIST.finditer(last_sentence))
    if assignments:
        return ", ".join(re.sub(r"\s+", " ", a.group(0).strip()) for a in
                         re.finditer(r"[A-Za-z]\s*=\s*-?\d+(?:[./]\d+)?", assignments[-1].group(0))), "expression"
    lines = [ln for ln in region.strip().splitlines() if ln.strip()]
    if lines and not re.search(r"\$|\\\(|\\\[", lines[-1]):
        step = _STEP_VALUE.search(lines[-1])
        v = step.group("v").strip() if step else ""
        if v and re.search(r"\d", v) and not re.search(r"[A-Za-z]{2,}", v) and v.count("(") == v.count(")"):
            return v, "expression"
    found = _mv_extract_guarded(region)
    if found:
        if re.search(r"(?<![\d.])" + re.escape(found) + r"\s*(?:\\?%|percent\b|per\s+cent\b)", region):
            found += "\\%"  # math-verify's string for "25%" is "25"
        key = normalize(found)
        in_env = any(key in normalize(next(g for g in e.groups() if g is not None)) for e in _ENVS.finditer(region))
        return found, "latex" if in_env else "expression"
    return None


def _extract(text: Optional[str]) -> tuple[Optional[str], str]:
    if not text or not text.strip():
        return None, "none"
    bodies = [text]
    if "</think>" in text:
        head, _, tail = text.rpartition("</think>")
        bodies = [tail, head.split("<think>", 1)[-1]] if tail.strip() else [head.split("<think>", 1)[-1]]
    elif "<think>" in text:
        bodies = [text.split("<think>", 1)[-1]]
    for body in bodies:  # the answer after </think> first, then the reasoning
        found = _extract_body(body)
        if found:
            return found
    return None, "none"


def _extract_body(body: str) -> Optional[tuple[str, str]]:
    boxes = [b for b in _boxed_spans(body) if b[2]]
    phrase = _last_phrase(body)
    if boxes and (phrase is None or boxes[-1][0] >= phrase[0]):
        return boxes[-1][2], "boxed"
    if phrase is not None:
        c = phrase[1]
        return c, "choice" if _choice_info(_clean_text_wrappers(c)) else "final_phrase"
    return _classify_whole(body) or _from_region(body)


@lru_cache(maxsize=256)  # small: a row's target answer is looked up once per sample
def extract_final_answer(text: Optional[str]) -> tuple[Optional[str], str]:
    """``(answer, method)`` of a full text: the last stated answer and how it was found
    (one of ``METHODS``); ``(None, "none")`` when the text states none."""
    answer, method = _extract(text)
    if answer is None or not answer.strip():
        return None, "none"
    return answer.strip(), method


def extract_answer(text: Optional[str]) -> Optional[str]:
    """The answer a text arrives at (see ``extract_final_answer``); None if it states none."""
    return extract_final_answer(text)[0]


# ----------------------------------------------------------------------------- normalisation

_UNICODE = [("−", "-"), ("×", "\\times "), ("·", "\\cdot "), ("π", "\\pi "), ("±", "\\pm "), ("≤", "\\le "),
            ("≥", "\\ge "), ("∞", "\\infty "), ("°", "^\\circ"), ("\u2009", " "), ("\u202f", " ")]
_SQRT_UNI = re.compile(r"√\s*(\([^()]*\)|\{[^{}]*\}|[0-9.]+|[A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree|\s*degrees?\b")
_PERCENT = re.compile(r"\s*(?:\\%|%|\s+percent\b|\s+per\s+cent\b)")
_CURRENCY = re.compile(r"\\\$|(?<![A-Za-z])\$|\\text\{\s*dollars?\s*\}|\bdollars?\b|€|£")
_PLAIN = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_UNIT_TAIL = re.compile(
    r"^(?P<val>.*?[\d}])\s*(?:\\\s|~)?\s*(?:\\(?:text|mathrm|mbox|textrm)\s*\{\s*(?P<u1>[A-Za-z][A-Za-z /.^0-9]*?)\s*\}"
    r"(?P<e1>\^\{?\d\}?)?|(?P<u2>[A-Za-z][A-Za-z./]*(?:\^\{?\d\}?)?(?:\s+[A-Za-z][A-Za-z.]*){0,2}))\s*$")
_UNITS = {  # factor to the dimension's base unit
    "mm": ("L", 1e-3), "millimeter": ("L", 1e-3), "millimeters": ("L", 1e-3), "cm": ("L", 1e-2),
    "centimeter": ("L", 1e-2), "centimeters": ("L", 1e-2), "m": ("L", 1.0), "meter": ("L", 1.0),
    "meters": ("L", 1.0), "km": ("L", 1e3), "kilometer": ("L", 1e3), "kilometers": ("L", 1e3),
    "in": ("L", 0.0254), "inch": ("L", 0.0254), "inches": ("L", 0.0254), "ft": ("L", 0.3048),
    "foot": ("L", 0.3048), "feet": ("L", 0.3048), "mg": ("M", 1e-6), "g": ("M", 1e-3), "gram": ("M", 1e-3),
    "grams": ("M", 1e-3), "kg": ("M", 1.0), "kilogram": ("M", 1.0), "kilograms": ("M", 1.0),
    "s": ("T", 1.0), "sec": ("T", 1.0), "second": ("T", 1.0), "seconds": ("T", 1.0), "min": ("T", 60.0),
    "minute": ("T", 60.0), "minutes": ("T", 60.0), "h": ("T", 3600.0), "hr": ("T", 3600.0),
    "hour": ("T", 3600.0), "hours": ("T", 3600.0), "day": ("T", 86400.0), "days": ("T", 86400.0),
    "ml": ("V", 1e-3), "l": ("V", 1.0), "liter": ("V", 1.0), "liters": ("V", 1.0), "litre": ("V", 1.0),
    "litres": ("V", 1.0),
}
_OPPOSITES = [frozenset(p) for p in (("yes", "no"), ("true", "false"), ("even", "odd"), ("increasing", "decreasing"),
                                     ("converges", "diverges"), ("convergent", "divergent"), ("finite", "infinite"),
                                     ("possible", "impossible"), ("always", "never"))]
_WORDS = re.compile(r"[a-z][a-z'\-]+")  # a normalised key (lowercase, no spaces) that is words
_SIMPLE = re.compile(r"[-+]?[A-Za-z0-9]+(?:\.[0-9]+)?")  # needs no preparation


def _clean_text_wrappers(s: str) -> str:
    prev = None
    while prev != s:
        prev, s = s, _TEXT_WRAP.sub(r"\1", s)
    return s


def _prep(ans: str) -> str:
    """An answer string ready to compare: inside its box, no delimiters or markdown,
    unicode math spelled in LaTeX, thousands separators removed, spacing macros gone."""
    s = str(ans).strip()
    if _SIMPLE.fullmatch(s):
        return s
    inner = last_boxed(s)
    if inner is not None:
        s = inner
    s = _MD.sub("", s)
    s = _strip_delims(s) if ("$" in s.replace("\\$", "") or "\\(" in s or "\\[" in s) else s
    s = _SQRT_UNI.sub(lambda m: "\\sqrt{" + m.group(1).strip("(){}") + "}", s)
    for a, b in _UNICODE:
        s = s.replace(a, b)
    s = s.replace("{,}", "")
    s = re.sub(r"(?<=\d)\\[,;:!](?=\d{3})", "", s)
    s = re.sub(r"\\left\b|\\right\b", "", s)
    s = re.sub(r"(?<!\\)\\(?:quad|qquad|[,;:! ])", " ", s).replace("~", " ")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.strip().rstrip(".,;:✓").strip()
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s) or re.fullmatch(r"[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "").replace(" ", "")
    return s


def normalize(ans: str) -> str:
    """A key for string equality: prepared, text wrappers off, no spaces, lowercase."""
    s = _clean_text_wrappers(_prep(ans))
    s = re.sub(r"\s+", "", s).lower()
    return s


def _choice_info(s: str) -> Optional[tuple[frozenset, Optional[str]]]:
    """(letters, value) of a multiple-choice answer (``C``, ``(c)``, ``C) 4``, ``\\textbf{(D) }42``,
    ``A, C``, ``ACD``), else None."""
    t = _clean_text_wrappers(_MD.sub("", s)).strip().rstrip(".").strip()
    if not t:
        return None
    if _CHOICE_MULTI.fullmatch(t) and len(re.findall(r"[A-E]", t)) > 1:
        letters = re.findall(r"[A-E]", t)
        if len(set(letters)) == len(letters):
            return frozenset(letters), None
    m = _CHOICE_ONE.match(t)
    if not m:
        return None
    letter = (m.group(1) or m.group(2)).upper()
    val = m.group("val").strip()
    if val and not (m.group(1) or t[1:2] in (")", ".", ":")):
        return None  # "A total of 5" is not a choice
    if val and (len(_WORD.findall(_clean_text_wrappers(val))) > 4 or
                {w.lower() for w in _WORD.findall(val)} & _STOPWORDS):
        return None  # "(B) is correct since ..." is a sentence about a choice, not a choice
    return frozenset([letter]), (val or None)


def _count_list(s: str) -> Optional[tuple[str, str]]:
    """("3", "1, 5, 9") for "3 solutions (1, 5, 9)" / "2 such numbers: 12 and 21"."""
    t = _clean_text_wrappers(s)
    m = _COUNT_LIST.fullmatch(t.strip().rstrip(".").strip())
    if not m:
        return None
    items = _LIST_ITEMS.findall(m.group("items"))
    if int(m.group("count")) != len(items):
        return None
    return m.group("count"), ", ".join(items)


class _Num:
    __slots__ = ("value", "pct", "deg", "decimals", "sig", "unit")

    def __init__(self, value, pct, deg, decimals, sig, unit):
        self.value, self.pct, self.deg, self.decimals, self.sig, self.unit = value, pct, deg, decimals, sig, unit


def _split_unit(s: str) -> tuple[str, Optional[str]]:
    m = _UNIT_TAIL.match(s.strip())
    if not m:
        return s, None
    unit = (m.group("u1") or m.group("u2") or "").strip()
    val = m.group("val").strip()
    if not unit or not val or re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", val)):
        return s, None
    if re.fullmatch(r"[A-Za-z]", unit) and unit.lower() not in _UNITS:
        return s, None  # 2 x is a product, not 2 units of x
    if unit.lower() in ("percent", "per cent"):
        return val + "\\%", None
    return val, unit


def _number(s: str) -> Optional[_Num]:
    """A plain number with its percent / degree / unit marks, else None."""
    t, unit = _split_unit(_clean_text_wrappers(s))
    t = _CURRENCY.sub("", t).strip()
    pct = bool(_PERCENT.search(t))
    t = _PERCENT.sub("", t)
    deg = bool(_DEGREES.search(t))
    t = _DEGREES.sub("", t).strip().replace(" ", "")
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
        t = t.replace(",", "")
    if not _PLAIN.fullmatch(t):
        exact = _exact_fraction(t)
        if exact is None:
            return None
        return _Num(float(exact), pct, deg, 99, 99, unit.lower() if unit else None)
    digits = t.lstrip("+-")
    decimals = len(digits.split(".", 1)[1]) if "." in digits else 0
    sig = len(digits.replace(".", "").lstrip("0")) or 1
    return _Num(float(t), pct, deg, decimals, sig, unit.lower() if unit else None)


_FRAC = re.compile(r"(?P<sign>[-+]?)(?P<whole>\d+)?\\frac(?:\{(?P<n1>[-+]?\d+)\}|(?P<n2>\d))"
                   r"(?:\{(?P<d1>\d+)\}|(?P<d2>\d))")
_SLASH = re.compile(r"(?P<sign>[-+]?)(?P<n>\d+)/(?P<d>\d+)")


def _exact_fraction(t: str) -> Optional[Fraction]:
    """``\frac{3}{4}``, ``-\frac12``, ``2\frac{1}{4}`` (mixed), ``3/4`` as a Fraction (no parser needed)."""
    m = _FRAC.fullmatch(t)
    if m:
        num, den = int(m.group("n1") or m.group("n2")), int(m.group("d1") or m.group("d2"))
        if den == 0 or (m.group("whole") and num < 0):
            return None
        v = Fraction(num, den) + int(m.group("whole") or 0)
        return -v if m.group("sign") == "-" else v
    m = _SLASH.fullmatch(t)
    if m and int(m.group("d")):
        v = Fraction(int(m.group("n")), int(m.group("d")))
        return -v if m.group("sign") == "-" else v
    return None


def _values(n: _Num) -> list[float]:
    vals = [n.value]
    if n.pct:
        vals.append(n.value / 100)
    return vals


def _close(a: float, b: float) -> bool:
    return round(a, 6) == round(b, 6) or math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def _approx_verdict(exact: float, approx: _Num) -> Optional[bool]:
    """Is the decimal ``approx`` the exact value rounded to its places? True with >= 3
    significant digits, None (cannot tell) with fewer, False when it is not."""
    if approx.decimals < 1:
        return False
    if round(exact, approx.decimals) == round(approx.value, approx.decimals):
        return True if approx.sig >= 3 else None
    return False


def _numbers_verdict(g: _Num, f: _Num) -> Optional[bool]:
    if g.unit and f.unit and g.unit != f.unit:
        ug, uf = _UNITS.get(g.unit), _UNITS.get(f.unit)
        if ug and uf and ug[0] == uf[0]:
            return _close(g.value * ug[1], f.value * uf[1])
        if ug and uf:
            return None  # different dimensions: the question decides
    if any(_close(a, b) for a in _values(g) for b in _values(f)):
        return True
    # One is a rounding of the other: the less precise one must carry the decimals.
    lo, hi = (g, f) if g.decimals < f.decimals else (f, g)
    if lo.decimals >= 1 and hi.decimals > lo.decimals:
        return _approx_verdict(hi.value, lo)
    return False


# ----------------------------------------------------------------------------- math-verify, guarded

_MAX_ABANDONED = 4
_abandoned = 0
# Calls that reached math-verify in this process (cache misses), for benchmarks and logs.
STATS = {"math_verify_comparisons": 0, "math_verify_extractions": 0}
_FAILED = object()
log = logging.getLogger(__name__)


class _Deadline(BaseException):
    """Raised by the main-thread timer. A BaseException that math-verify does not catch
    (it catches its own TimeoutException and turns it into False or [])."""


def _quiet_math_verify():
    import math_verify.grader
    import math_verify.parser

    # Timeouts are handled here, around each call; math-verify's "timeout disabled"
    # warning would be noise.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True


_COSTLY = re.compile(
    r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\^\s*\{?\s*-?\d{6,}|\d{5,}\s*!|\\binom\s*\{\s*\d{6,}|\*\*\s*\(?\s*\d+\s*\*\*")


def _too_costly(s: str) -> bool:
    """Inputs whose evaluation can take minutes inside one C call (power towers, huge
    exponents or factorials), where no deadline can interrupt it: not sent to math-verify."""
    return len(s) > 2000 or bool(_COSTLY.search(s))


def _guarded(fn: Callable, *args, timeout: float = 5):
    """``fn(*args)`` with a deadline; ``_FAILED`` on error or timeout."""
    global _abandoned
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        state = {"on": True}

        def on_alarm(signum, frame):
            if state["on"]:
                raise _Deadline()

        old = signal.signal(signal.SIGALRM, on_alarm)
        # The timer repeats: a library's bare ``except:`` may swallow one _Deadline.
        started = time.monotonic()
        prev_delay, _ = signal.setitimer(signal.ITIMER_REAL, timeout, 0.05)
        try:
            return fn(*args)
        except _Deadline:
            log.warning("math-verify hit the %ss deadline; verdict: cannot verify", timeout)
            return _FAILED
        except Exception:
            return _FAILED
        finally:
            while True:  # a last alarm may land here; once off, the handler ignores them
                try:
                    state["on"] = False
                    break
                except _Deadline:
                    continue
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            if prev_delay:  # someone else's timer (pytest-timeout...) was running: give it back
                signal.setitimer(signal.ITIMER_REAL, max(1e-3, prev_delay - (time.monotonic() - started)))
    if _abandoned >= _MAX_ABANDONED:
        return _FAILED
    box: dict = {}

    def run():
        try:
            box["r"] = fn(*args)
        except BaseException:
            box["r"] = _FAILED

    t = threading.Thread(target=run, daemon=True, name="math-verify-call")
    t.start()
    t.join(timeout)
    if t.is_alive():
        _abandoned += 1
        log.warning("math-verify hit the %ss deadline in a worker thread (%d abandoned); verdict: cannot verify",
                    timeout, _abandoned)
        return _FAILED
    return box.get("r", _FAILED)


def _mv_config():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _mv_extract(region: str) -> Optional[str]:
    from math_verify import parse

    _quiet_math_verify()
    region = re.sub(r"\$\s*,\s*(and|or)\s+\$", r"$ \1 $", region)
    res = parse(region, _mv_config(), fallback_mode="first_match", parsing_timeout=None)
    strings = [r for r in res if isinstance(r, str)]
    if not strings:
        return None
    found = strings[-1].replace(" and ", ", ") if " and " in strings[-1] and len(res) > 1 else strings[-1]
    found = _tidy(found)
    return found or None


@lru_cache(maxsize=2048)
def _mv_extract_guarded(region: str, timeout: float = 5) -> Optional[str]:
    if _too_costly(region):
        return None
    STATS["math_verify_extractions"] += 1
    r = _guarded(_mv_extract, region, timeout=timeout)
    return None if r is _FAILED else r


@lru_cache(maxsize=16384)
def _mv_parse(s: str) -> tuple:
    """math-verify's parse of one prepared answer, sympy objects only (empty: no parse).
    Call only under ``_guarded``."""
    from math_verify import parse

    _quiet_math_verify()
    return tuple(x for x in parse(f"${s}$", _mv_config(), parsing_timeout=None) if not isinstance(x, str))


def _mv_compare(g: str, f: str, g_deg: bool, f_deg: bool) -> Optional[bool]:
    from math_verify import verify
    from sympy import Basic, Eq, pi

    _quiet_math_verify()

    pg, pf = _mv_parse(g), _mv_parse(f)
    if not pg or not pf:
        return None
    a, b = pg[0], pf[0]

    def same(x, y) -> bool:
        return bool(verify(x, y, timeout_seconds=None, allow_set_relation_comp=True, raise_on_error=True))

    if same(a, b):
        return True

    def number(x):
        if isinstance(x, Basic) and getattr(x, "is_number", False) and not x.free_symbols and x.is_finite is not False:
            v = complex(x.evalf(30))
            return v.real if abs(v.imag) < 1e-12 else None
        return None

    def rhs(x):  # \angle A = 45^\circ, x = 5: the value side
        return x.rhs if isinstance(x, Eq) and not x.rhs.free_symbols else None

    # the value side of an assignment against a value
    ra, rb = rhs(a), rhs(b)
    if ra is not None and rb is None and same(ra, b):
        return True
    if rb is not None and ra is None and same(a, rb):
        return True
    # degrees against radians
    if g_deg != f_deg:
        deg, rad = (a, b) if g_deg else (b, a)
        dv, rv = number(deg), number(rad)
        if dv is not None and rv is not None and rad.has(pi):
            return _close(dv * math.pi / 180, rv)
    # a decimal approximation of an exact value (3.14 for \pi, 0.333 for \frac13)
    ng, nf = _number(g), _number(f)
    for exact, exact_num, approx in ((a, ng, nf), (b, nf, ng)):
        if approx is not None and exact_num is None and not approx.pct:
            ev = number(exact)
            v = _approx_verdict(ev, approx) if ev is not None else False
            if v is not False:
                return v
    return False


@lru_cache(maxsize=65536)
def _math_verdict(g: str, f: str, timeout: float = 5) -> Optional[bool]:
    if _too_costly(g) or _too_costly(f):
        return None
    STATS["math_verify_comparisons"] += 1
    g_deg, f_deg = bool(_DEGREES.search(g)), bool(_DEGREES.search(f))
    gs, fs = _DEGREES.sub("", g).strip(), _DEGREES.sub("", f).strip()
    r = _guarded(_mv_compare, gs, fs, g_deg, f_deg, timeout=timeout)
    if r is _FAILED:
        return None
    if r is False and ("\\log" in gs) != ("\\log" in fs) and ("\\ln" in gs or "\\ln" in fs):
        r2 = _guarded(_mv_compare, gs.replace("\\log", "\\ln"), fs.replace("\\log", "\\ln"), g_deg, f_deg,
                      timeout=timeout)
        return None if r2 is _FAILED else r2
    return r


# ----------------------------------------------------------------------------- comparison

def answers_match(given: Optional[str], found: Optional[str], timeout: int = 5) -> Optional[bool]:
    """Is ``found`` the same answer as ``given`` (the reference)? None = cannot verify."""
    if given is None or found is None or not str(given).strip() or not str(found).strip():
        return None
    g, f = _prep(str(given)), _prep(str(found))
    if not g or not f:
        return None
    kg, kf = normalize(g), normalize(f)
    if kg == kf:
        return True
    # multiple choice
    cg, cf = _choice_info(g), _choice_info(f)
    if cg and cf:
        return cg[0] == cf[0]
    if cg or cf:
        letters, value = cg or cf
        other = f if cg else g
        if re.fullmatch(r"[a-eA-E]", other):  # a bare lowercase letter against a choice
            return letters == frozenset([other.upper()])
        if value is None:
            return None  # a letter against something else: not comparable
        return answers_match(value, f, timeout) if cg else answers_match(g, value, timeout)
    # a count stated with its list answers both "how many" and "which"
    lg, lf = _count_list(g), _count_list(f)
    if lg or lf:
        count, items = lg or lf
        other = f if lg else g
        verdicts = [answers_match(count, other, timeout) if lf else answers_match(g, count, timeout),
                    answers_match(items, other, timeout) if lf else answers_match(g, items, timeout)]
        if True in verdicts:
            return True
        return False if all(v is False for v in verdicts) else None
    # text answers
    tg, tf = (kg if _WORDS.fullmatch(kg) else None), (kf if _WORDS.fullmatch(kf) else None)
    if tg or tf:
        if tg and tf and any({tg, tf} == p for p in _OPPOSITES):
            return False
        return None  # different words may still mean the same thing
    # plain numbers need no parser
    ng, nf = _number(g), _number(f)
    if ng and nf:
        return _numbers_verdict(ng, nf)
    # units: compare the values
    (vg, ug), (vf, uf) = _split_unit(g), _split_unit(f)
    if ug and uf and ug.lower() != uf.lower() and ug.lower() in _UNITS and uf.lower() in _UNITS:
        return None  # convertible units were handled as plain numbers; anything else: cannot tell
    g2 = _CURRENCY.sub("", _PERCENT.sub("\\%", vg)).strip() or vg
    f2 = _CURRENCY.sub("", _PERCENT.sub("\\%", vf)).strip() or vf
    if len(g2) > 1000 or len(f2) > 1000:
        return None
    return _math_verdict(g2, f2, timeout)


def consistency_verdict(given_answer: Optional[str], text: Optional[str], timeout: int = 5,
                        target: Optional[tuple[Optional[str], str]] = None) -> tuple[Optional[bool], str]:
    """(verdict, reason) for "does this trace arrive at the given answer?".

    ``target``: the ``(answer, method)`` of ``given_answer`` when the caller already ran
    ``extract_final_answer`` on it (once per row, not once per sample)."""
    if target is None:
        target = extract_final_answer(given_answer) if given_answer else (None, "none")
    target, target_method = target
    if target is None:
        return None, "cannot verify: no answer in the target's response"
    found, _ = extract_final_answer(text)
    if found is None:
        if target_method == "text" and text and _mentions(text, target):
            return True, "consistent"
        return None, "cannot verify: no answer found in the trace"
    ok = answers_match(target, found, timeout)
    if ok is None and target_method == "text" and text and _mentions(text, target):
        ok = True  # "Counting forward 100 days lands on a **Sunday**."
    if ok is None:
        return None, f"cannot verify: could not compare {found[:40]!r} with {target[:40]!r}"
    return ok, "consistent" if ok else f"inconsistent: trace reaches {found[:40]!r}, target answered {target[:40]!r}"


def _mentions(text: str, answer: str) -> bool:
    """Does the last paragraph of ``text`` name the text answer ``answer`` (as whole words)?"""
    words = _clean_text_wrappers(answer).strip().lower()
    if len(words) < 3 or any(words in p for p in _OPPOSITES):
        return False  # "no", "true": ordinary words, their mention is not an answer
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    last = _MD.sub("", paras[-1]).lower() if paras else ""
    return bool(words) and re.search(r"(?<![a-z])" + re.escape(words) + r"(?![a-z])", last) is not None \
        and not re.search(r"\bnot\s+" + re.escape(words), last)
