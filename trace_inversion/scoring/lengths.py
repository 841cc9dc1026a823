"""Length and length-cap statistics of generations, and the optional length filter.

Every generating stage (surrogate, compressor, inverter per draw) reports, in
``stats.json`` and its card: how many generations hit the length cap, and the median
and 90th percentile of their lengths, in tokens of the model's own tokenizer where one
is known, else in word tokens; every result names its unit. An independent replication
of the paper found 21-38% of first inversion draws hitting the cap and inverted traces
2.2-2.6x the true traces' length: these numbers make that visible.

Units:

- model tokens: the model's tokenizer, loaded offline (its ``tokenizer.json`` with the
  ``tokenizers`` library, else ``AutoTokenizer``) from a local model folder, or for a
  local backend (vllm, transformers) from a Hub id already in the local Hugging Face
  cache; special tokens are not added (the text's own tokens). Where a backend reports
  how many tokens it generated, that count is used (``output_length``);
- otherwise (API models, the toy backend, a tokenizer that cannot load) word tokens:
  whitespace split, the paper's own fallback (``evaluate_similarity.py``).

Everything here is a pure function of its arguments except ``length_counter``, which
loads (and caches) a tokenizer. None means "cannot tell".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

WORD_UNIT = "word tokens (whitespace split)"
LOCAL_BACKENDS = ("vllm", "transformers")


def word_count(text: Optional[str]) -> int:
    """Whitespace-split word tokens, as the paper counts lengths without a tokenizer."""
    return len((text or "").split())


@dataclass(frozen=True)
class LengthCounter:
    """How lengths are counted: ``count(text) -> int`` and the unit's name.

    ``short`` is the unit in one word (``tokens`` or ``words``), for reasons such as
    "too long: 812 tokens > 2 x reference 300"."""

    unit: str
    count: Callable[[Optional[str]], int]
    short: str = "words"

    @property
    def model_tokens(self) -> bool:
        return self.short == "tokens"


WORDS = LengthCounter(WORD_UNIT, word_count, "words")


def tokenizer_source(model: Optional[str], backend: Optional[str] = None) -> Optional[str]:
    """Where a model's tokenizer can be loaded offline from, or None (not known).

    A local folder with tokenizer files, whatever the backend; a Hub id for a local
    backend (vllm, transformers: the weights, tokenizer included, are in the local Hub
    cache once the model has run). API and toy models have no tokenizer here."""
    if not model or backend == "toy":
        return None
    p = Path(model).expanduser()
    if p.is_dir():
        names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        return str(p) if any((p / n).exists() for n in names) else None
    if backend in LOCAL_BACKENDS and "/" in model and not model.startswith(("/", ".")):
        return model
    return None


def length_counter(model: Optional[str], backend: Optional[str] = None) -> LengthCounter:
    """The counter for a model: its own tokenizer when ``tokenizer_source`` finds one
    that loads offline, else word tokens (``WORDS``). Never downloads anything; a
    tokenizer is loaded once per process (again when a local folder's files change)."""
    src = tokenizer_source(model, backend)
    if src is None:
        return WORDS
    p = Path(src)
    stamp = tuple(sorted((f.name, f.stat().st_mtime_ns) for f in p.glob("tokenizer*"))) if p.is_dir() else ()
    return _load_counter(src, stamp)


def _tokenizer_file(src: str) -> Optional[str]:
    """The ``tokenizer.json`` of a folder or of a Hub id in the local cache (no download)."""
    p = Path(src)
    if p.is_dir():
        return str(p / "tokenizer.json") if (p / "tokenizer.json").exists() else None
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(src, "tokenizer.json", local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached here
        return None


@lru_cache(maxsize=16)
def _load_counter(src: str, stamp: tuple) -> LengthCounter:
    name = Path(src).name if Path(src).is_dir() else src
    unit = f"tokens ({name} tokenizer)"
    path = _tokenizer_file(src)
    if path is not None:  # the fast tokenizer itself: no transformers (and no torch) in this process
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(path)
        fast.no_truncation()
        fast.no_padding()
        return LengthCounter(unit, lambda t: len(fast.encode(t or "", add_special_tokens=False).ids), "tokens")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the local cache, or not a tokenizer: fall back to words
        return WORDS
    tok.model_max_length = 1 << 40  # counting only: no "sequence longer than the model" warnings
    return LengthCounter(unit, lambda t: len(tok.encode(t or "", add_special_tokens=False)), "tokens")


def counter_for_model(model_cfg) -> LengthCounter:
    """``length_counter`` for a ``ModelConfig`` (None: ``WORDS``)."""
    if model_cfg is None:
        return WORDS
    return length_counter(model_cfg.model, model_cfg.backend)


def counter_for_llm(llm) -> LengthCounter:
    """``length_counter`` for a distilabel LLM: the project's (with a ``cfg``) or any
    other (its ``model_name``; a local folder's tokenizer loads, else word tokens)."""
    cfg = getattr(llm, "cfg", None)
    if cfg is not None and getattr(cfg, "backend", None):
        return length_counter(cfg.model, cfg.backend)
    return length_counter(str(getattr(llm, "model_name", "") or ""), None)


def output_length(text: Optional[str], response: Optional[dict], counter: LengthCounter) -> Optional[int]:
    """A generation's length in ``counter``'s unit: the backend's own count of the tokens
    it generated (``usage.output_tokens`` of a single-sample response) when lengths are
    in model tokens, since decoded text does not always re-tokenize to the same count
    and the cap limits the generated tokens; else ``counter.count(text)``. None: no text."""
    if text is None:
        return None
    if counter.model_tokens and response and not response.get("samples"):
        n = ((response.get("usage") or {}).get("output_tokens"))
        if isinstance(n, int) and n > 0:
            return n
    return counter.count(text)


# ----------------------------------------------------------------------------- cap hits
def cap_hit(output: Optional[str], finish_reason: Optional[str], think: bool = False,
            length: Optional[int] = None, cap: Optional[int] = None) -> Optional[bool]:
    """Did this generation stop at the length cap?

    True: the backend says ``finish_reason == "length"``, or a ``<think>`` block was
    opened (``think``: the model's output is expected to hold one, as a reasoning
    model's does even when the chat template wrote the opening tag) and never closed,
    or (with no finish reason) ``length`` in model tokens reached ``cap``. False: the
    backend gave another finish reason, or a think block was closed. None: no output,
    or nothing to tell by (a backend that reports no finish reason, no think block)."""
    if finish_reason == "length":
        return True
    if output is None:
        return None
    opened = think or "<think>" in output
    if opened and "</think>" not in output:
        return True
    if finish_reason:
        return False
    if cap is not None and length is not None and length >= cap:
        return True
    return False if opened else None


def quantile(values: Sequence[float], q: float) -> Optional[float]:
    """The ``q`` quantile with linear interpolation (numpy's default); None when empty."""
    xs = sorted(values)
    if not xs:
        return None
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def length_stats(texts: Sequence[Optional[str]], finish_reasons: Optional[Sequence[Optional[str]]] = None,
                 counter: Optional[LengthCounter] = None, cap: Optional[int] = None, think: bool = False,
                 output_tokens: Optional[Sequence[Optional[int]]] = None) -> dict:
    """Length and cap statistics of generations (``summarize_lengths``).

    ``texts``: the generations (None: none, e.g. a failed call), counted with
    ``counter`` (default: word tokens); ``finish_reasons``: the backend's, one per text
    (None where not reported); ``cap``: the length cap in model tokens (reported, and
    used when a backend gives no finish reason); ``think``: the outputs should hold a
    ``<think>`` block (a reasoning model's), so an unclosed one is a cap hit;
    ``output_tokens``: the backend's counts of generated tokens, one per text, used
    as in ``output_length``."""
    counter = counter or WORDS
    finish = list(finish_reasons) if finish_reasons is not None else [None] * len(texts)
    reported = list(output_tokens) if output_tokens is not None else [None] * len(texts)
    lengths = [output_length(t, {"usage": {"output_tokens": n}}, counter) for t, n in zip(texts, reported)]
    known_cap = cap if counter.model_tokens else None
    hits = [None if t is None else cap_hit(t, f, think, n, known_cap) for t, f, n in zip(texts, finish, lengths)]
    return summarize_lengths(lengths, hits, counter.unit, cap)


def summarize_lengths(lengths: Sequence[Optional[int]], hits: Sequence[Optional[bool]], unit: str,
                      cap: Optional[int] = None) -> dict:
    """``{"n", "unit", "median", "p90", "mean", "max", "cap", "cap_hits", "cap_hit_rate",
    "cap_unknown"}`` of lengths already counted (None: no generation) and their cap
    hits (``cap_hit``): ``n`` generations, ``cap_hit_rate`` over those whose cap hit can
    be told (None when none can)."""
    present = [n for n in lengths if n is not None]
    told = [bool(h) for h, n in zip(hits, lengths) if n is not None and h is not None]
    return {
        "n": len(present), "unit": unit,
        "median": quantile(present, 0.5), "p90": quantile(present, 0.9),
        "mean": round(sum(present) / len(present), 2) if present else None,
        "max": max(present) if present else None,
        "cap": cap, "cap_hits": sum(told), "cap_hit_rate": round(sum(told) / len(told), 4) if told else None,
        "cap_unknown": len(present) - len(told),
    }


# ----------------------------------------------------------------------------- ratios
def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """``a / b`` rounded, None when either is unknown or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 4)


def length_ratios(lengths: Sequence[Optional[int]], references: Sequence[Optional[int]], paired: bool = True) -> dict:
    """Inverted vs reference trace lengths (same unit for both).

    ``paired`` (the same rows, e.g. true traces): ``median_ratio`` and ``p90_ratio`` of
    per-row ratios over rows where both are known and the reference is non-empty, and
    ``ratio_of_medians`` over those rows. Unpaired (other problems, e.g. the surrogate's
    traces): only ``ratio_of_medians``, over every known length of each side."""
    if not paired:
        a = [x for x in lengths if x is not None]
        b = [x for x in references if x is not None]
        return {"n": len(a), "n_reference": len(b), "median_ratio": None, "p90_ratio": None,
                "ratio_of_medians": ratio(quantile(a, 0.5), quantile(b, 0.5))}
    pairs = [(a, b) for a, b in zip(lengths, references) if a is not None and b]
    per_row = [a / b for a, b in pairs]
    med, p90 = quantile(per_row, 0.5), quantile(per_row, 0.9)
    return {"n": len(pairs), "n_reference": len(pairs),
            "median_ratio": None if med is None else round(med, 4), "p90_ratio": None if p90 is None else round(p90, 4),
            "ratio_of_medians": ratio(quantile([a for a, _ in pairs], 0.5), quantile([b for _, b in pairs], 0.5))}


# ----------------------------------------------------------------------------- the filter
def length_verdict(length: Optional[int], reference: Optional[float], max_ratio: Optional[float],
                   short_unit: str = "words") -> tuple[Optional[bool], str]:
    """The length filter: reject a trace longer than ``max_ratio`` x its reference
    length. (True, reason) keeps, (False, reason) rejects; (None, reason) when it cannot
    tell (no length or no reference); the filter is off when ``max_ratio`` is None."""
    if max_ratio is None:
        return True, "length filter off"
    if length is None or not reference:
        return None, "length: no reference length"
    if length > max_ratio * reference:
        return False, f"too long: {length} {short_unit} > {max_ratio:g} x reference {reference:g}"
    return True, f"length within {max_ratio:g} x reference"
