"""The toy world: the embedded default's data and its programmatic models.

Problems are chains of arithmetic modulo ``m`` evaluated strictly left to right
("Evaluate left to right modulo 10: 3 + 4 * 7 - 2"). Solving one needs step-by-step
work (each running value feeds the next step) that a tiny transformer can learn when
it sees the steps, and cannot shortcut when it sees only the answer.

Roles, all deterministic in the world seed:

- the **target** solves every problem correctly but *hides* its trace; it exposes the
  final answer and a lossy summary: its *summary policy* reveals the running values of
  steps ``i`` with ``i % summary_every == summary_offset`` (``summary_every: 0``: no
  summary at all), in its ``summary_style``;
- the **surrogate** shows its trace, in a different notation (``6+5->1`` where the
  target writes ``6+5=1``; both keep each step on one line with no spaces, so every
  digit is one token and a step's result is the same token as the next step's first
  operand: ``6+5 -> 1`` (result `` 1``, next operand ``1``) made students copy across
  tokens and learn slower, and a spelled-out ``6 add 5 -> 1`` a tiny model could
  not learn in the demo's budget at all), and is systematically
  weaker: right on its first ``surrogate_reliable_steps`` steps, then wrong with
  probability ``surrogate_error_rate`` per step (errors propagate), like a small model
  that fails on longer chains;
- the **compressor** (the attacker's simulation of the target's summariser) turns any
  trace (either notation) into a summary. By default it follows the target's policy
  exactly; ``compressor_every``, ``compressor_offset``, ``compressor_style`` and
  ``compressor_drop`` make it differ (other steps, other phrasing, values left out): the
  gap between the simulated summaries an inverter trains on and the real target's
  summaries, the paper's central difficulty.

Where the surrogate errs is independent of what the target reveals: with
``surrogate_reliable_steps: 0`` its misconceptions can fall on any step, hidden ones
included, so an inverter that learned from surrogate traces can carry them into steps no
summary corrects.

Every trace is machine-checkable step by step (``check_steps``), which later stages
use to measure what answer-consistency filtering cannot see.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional

OP_NAMES = {"+": "add", "-": "sub", "*": "mul"}
NAME_OPS = {v: k for k, v in OP_NAMES.items()}
PROBLEM_PREFIX = "Evaluate left to right modulo {m}: "
_PROBLEM_RE = re.compile(r"Evaluate left to right modulo (\d+):\s*(.+?)\s*$", re.S)
_TARGET_STEP = re.compile(r"(\d+)\s*([+\-*])\s*(\d+)\s*=\s*(\d+)")
_SURROGATE_STEP = re.compile(r"(\d+)\s*([+\-*])\s*(\d+)\s*->\s*(\d+)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def apply(a: int, op: str, b: int, m: int) -> int:
    if op == "+":
        return (a + b) % m
    if op == "-":
        return (a - b) % m
    if op == "*":
        return (a * b) % m
    raise ValueError(f"unknown operator {op!r}")


@dataclass(frozen=True)
class Problem:
    id: str
    start: int
    steps: tuple[tuple[str, int], ...]
    modulus: int = 10

    @property
    def text(self) -> str:
        body = str(self.start) + "".join(f" {op} {b}" for op, b in self.steps)
        return PROBLEM_PREFIX.format(m=self.modulus) + body

    def values(self) -> list[int]:
        """Running values after each step (the last is the answer)."""
        out, v = [], self.start
        for op, b in self.steps:
            v = apply(v, op, b, self.modulus)
            out.append(v)
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1] if self.steps else self.start


def parse_problem(text: str, pid: str = "") -> Optional[Problem]:
    """Inverse of ``Problem.text``; None if ``text`` is not a toy problem."""
    m = _PROBLEM_RE.search(text or "")
    if not m:
        return None
    tokens = m.group(2).split()
    if len(tokens) % 2 != 1 or not tokens[0].isdigit():
        return None
    steps = []
    for op, b in zip(tokens[1::2], tokens[2::2]):
        if op not in OP_NAMES or not b.isdigit():
            return None
        steps.append((op, int(b)))
    return Problem(pid, int(tokens[0]), tuple(steps), int(m.group(1)))


@dataclass
class ToyWorld:
    """Problem generator plus the target, surrogate and compressor of one world."""

    seed: int = 0
    n_ops: int = 6
    modulus: int = 10
    ops: str = "+-*"
    summary_every: int = 2
    summary_offset: int = 0
    summary_style: str = "gives"
    compressor_every: Optional[int] = None
    compressor_offset: Optional[int] = None
    compressor_style: Optional[str] = None
    compressor_drop: float = 0.0
    surrogate_reliable_steps: int = 3
    surrogate_error_rate: float = 0.3
    surrogate_errors: str = "random"
    inverter_error_rate: float = 0.1
    inverter_forces_answer: float = 0.5
    _seen: set = field(default_factory=set, repr=False)

    @classmethod
    def from_config(cls, cfg) -> "ToyWorld":
        """From a ``ToyWorldConfig`` (or anything with the same attributes)."""
        policy = {k: getattr(cfg, k, getattr(cls, k)) for k in POLICY_FIELDS}
        return cls(seed=cfg.seed, n_ops=cfg.n_ops, modulus=cfg.modulus, ops=cfg.ops, **policy,
                   surrogate_reliable_steps=cfg.surrogate_reliable_steps,
                   surrogate_error_rate=cfg.surrogate_error_rate,
                   surrogate_errors=getattr(cfg, "surrogate_errors", "random"),
                   inverter_error_rate=getattr(cfg, "inverter_error_rate", 0.1),
                   inverter_forces_answer=getattr(cfg, "inverter_forces_answer", 0.5))

    # ------------------------------------------------------------------ problems
    def problem(self, index: int, split: str = "train") -> Problem:
        rng = random.Random(f"toy:{self.seed}:{split}:{index}")
        start = rng.randrange(self.modulus)
        steps = tuple((rng.choice(self.ops), rng.randrange(self.modulus)) for _ in range(self.n_ops))
        return Problem(f"toy-{self.seed}-{split}-{index:07d}", start, steps, self.modulus)

    def problems(self, n: int, split: str = "train", exclude: Optional[set[str]] = None) -> list[Problem]:
        """``n`` distinct problems of ``split``; texts in ``exclude`` are skipped so
        held-out problems never repeat training problems."""
        exclude = exclude or set()
        out, seen, i = [], set(), 0
        while len(out) < n:
            p = self.problem(i, split)
            i += 1
            if p.text in exclude or p.text in seen:
                continue
            seen.add(p.text)
            out.append(p)
            if i > 50 * n + 1000:
                raise ValueError(f"cannot draw {n} distinct problems with n_ops={self.n_ops}, modulus={self.modulus}")
        return out

    def splits(self, n_train: int, n_test: int) -> tuple[list[Problem], list[Problem]]:
        train = self.problems(n_train, "train")
        test = self.problems(n_test, "test", exclude={p.text for p in train})
        return train, test

    # ------------------------------------------------------------------ target
    def target_trace(self, p: Problem) -> str:
        """The hidden trace: one ``a op b = c`` per step."""
        lines, v = [], p.start
        for op, b in p.steps:
            nv = apply(v, op, b, p.modulus)
            lines.append(f"{v}{op}{b}={nv}")
            v = nv
        return "\n".join(lines)

    def summary_from_values(self, values: list[int]) -> str:
        """The target's summary of a trace's running values (its summary policy)."""
        return write_summary(values, self.summary_every, self.summary_offset, self.summary_style)

    def target_response(self, p: Problem) -> dict:
        """What a black-box target exposes: answer text, summary, and (hidden) trace."""
        return {
            "answer": format_answer(p.answer),
            "summary": self.summary_from_values(p.values()),
            "hidden_trace": self.target_trace(p),
        }

    # ------------------------------------------------------------------ surrogate
    def surrogate_trace(self, p: Problem) -> tuple[str, int]:
        """(visible trace in the surrogate's notation, its final answer)."""
        rng = random.Random(f"surrogate:{self.seed}:{p.text}")  # a model sees only the prompt
        lines, v = [], p.start
        for i, (op, b) in enumerate(p.steps):
            nv = apply(v, op, b, p.modulus)
            if i >= self.surrogate_reliable_steps:
                if self.surrogate_errors == "systematic":
                    nv = self._misconception(v, op, b, nv, p.modulus)
                elif rng.random() < self.surrogate_error_rate:
                    nv = (nv + rng.randrange(1, p.modulus)) % p.modulus
            lines.append(f"{v}{op}{b}->{nv}")
            v = nv
        return "\n".join(lines), v

    def _misconception(self, a: int, op: str, b: int, right: int, modulus: int) -> int:
        """``systematic`` errors: a fixed share of facts (a op b) is always wrong, the same
        way, late in a chain: a student of these traces inherits them, it cannot average
        them out."""
        h = int.from_bytes(hashlib.sha256(f"misconception:{self.seed}:{a}{op}{b}".encode()).digest()[:8], "big")
        if (h % 10_000) / 10_000 >= self.surrogate_error_rate:
            return right
        return (right + 1 + (h // 10_000) % (modulus - 1)) % modulus

    def surrogate_response(self, p: Problem) -> str:
        """The surrogate's full output: ``<think>trace</think>`` then the answer."""
        trace, ans = self.surrogate_trace(p)
        return f"<think>\n{trace}\n</think>\n\n{format_answer(ans)}"

    # ------------------------------------------------------------------ inverter
    def invert(self, p: Problem, answer: Optional[str], summary: Optional[str], seed: Optional[int]) -> str:
        """A programmatic inverter (for fast tests of inversion and verified synthesis).

        Writes a surrogate-notation trace. Values the summary reveals are copied; other
        steps are wrong with probability ``inverter_error_rate`` (errors propagate).
        When its steps miss the given answer it "argues to the answer" (writes the given
        answer as the last value anyway) with probability ``inverter_forces_answer``,
        else it ends at its own value: the inconsistency answer-checking can see.
        """
        rng = random.Random(f"inverter:{self.seed}:{p.text}:{answer}:{summary}:{seed}")
        shown = {i: v for i, v in _summary_values(summary or "")}
        lines, v = [], p.start
        for i, (op, b) in enumerate(p.steps, 1):
            nv = apply(v, op, b, p.modulus)
            if i in shown:
                nv = shown[i]
            elif rng.random() < self.inverter_error_rate:
                nv = (nv + rng.randrange(1, p.modulus)) % p.modulus
            lines.append(f"{v}{op}{b}->{nv}")
            v = nv
        given = boxed_value(answer or "") or (answer or "").strip()
        if given.isdigit() and int(given) != v and rng.random() < self.inverter_forces_answer:
            lines[-1] = lines[-1].rsplit("->", 1)[0] + f"->{given}"
        return "\n".join(lines)

    # ------------------------------------------------------------------ compressor
    def compress(self, trace: str) -> str:
        """The compressor's summary of a trace (either notation): the target's policy
        unless the ``compressor_*`` fields differ; ``compressor_drop`` leaves each value
        out with that probability (deterministic in the world seed and the trace), but
        never all of them (a summariser always says something)."""
        values = trace_values(trace)
        every = self.summary_every if self.compressor_every is None else self.compressor_every
        offset = self.summary_offset if self.compressor_offset is None else self.compressor_offset
        style = self.compressor_style or self.summary_style
        drop = set()
        if self.compressor_drop > 0:
            rng = random.Random(f"compressor:{self.seed}:{trace}")
            shown = [i for i in range(1, len(values) + 1) if revealed(i, every, offset)]
            drop = {i for i in shown if rng.random() < self.compressor_drop}
            if shown and len(drop) == len(shown):  # a summariser always says something: keep one value
                drop.discard(rng.choice(shown))
        return write_summary(values, every, offset, style, drop)

    def revealed_steps(self, n_steps: Optional[int] = None, compressor: bool = False) -> list[int]:
        """The 1-based steps whose values the target's summary (or, before any drop, the
        compressor's) reveals in an ``n_steps`` chain; the answer reveals the last step too."""
        n = self.n_ops if n_steps is None else n_steps
        every, offset = self.summary_every, self.summary_offset
        if compressor:
            every = every if self.compressor_every is None else self.compressor_every
            offset = offset if self.compressor_offset is None else self.compressor_offset
        return [i for i in range(1, n + 1) if revealed(i, every, offset)]


# The summary fields of the world (the target's policy and the compressor's).
POLICY_FIELDS = ("summary_every", "summary_offset", "summary_style", "compressor_every", "compressor_offset",
                 "compressor_style", "compressor_drop")
# How a summary writes step i's value v: the target's default and a paraphrase.
SUMMARY_STYLES = {"gives": "step {i} gives {v}", "is": "after step {i} the value is {v}"}
_SUMMARY_VALUE = re.compile(r"step (\d+) gives (\d+)|after step (\d+) the value is (\d+)")


def revealed(i: int, every: int, offset: int) -> bool:
    """Whether a policy (every k-th step from ``offset``; k = 0: none) reveals step i."""
    return every > 0 and i % every == offset % every


def write_summary(values: list[int], every: int, offset: int = 0, style: str = "gives",
                  drop: frozenset | set = frozenset()) -> str:
    fmt = SUMMARY_STYLES[style]
    parts = [fmt.format(i=i, v=v) for i, v in enumerate(values, 1) if revealed(i, every, offset) and i not in drop]
    return "; ".join(parts) + "." if parts else ""


def _summary_values(summary: str) -> list[tuple[int, int]]:
    """(step, value) pairs a summary states, in any style."""
    return [(int(a or c), int(b or d)) for a, b, c, d in _SUMMARY_VALUE.findall(summary)]


def format_answer(value: int | str) -> str:
    return f"The answer is \\boxed{{{value}}}."


def trace_values(trace: str) -> list[int]:
    """Running values written in a trace, in either notation."""
    vals = [int(m.group(4)) for m in _TARGET_STEP.finditer(trace or "")]
    if vals:
        return vals
    return [int(m.group(4)) for m in _SURROGATE_STEP.finditer(trace or "")]


def trace_final_value(trace: str) -> Optional[int]:
    vals = trace_values(trace)
    return vals[-1] if vals else None


def boxed_value(text: str) -> Optional[str]:
    m = _BOXED.findall(text or "")
    return m[-1].strip() if m else None


def check_steps(p: Problem, trace: str) -> dict:
    """Step-by-step check of a trace against the problem.

    Returns ``{"steps": n written, "correct": n right, "all_correct": bool,
    "first_error": index or None}``. A step is right when it applies the problem's
    operation to the running value the trace carries (the previous step's result, the
    start for the first) and computes it correctly; so after one wrong step, later
    steps done right on the wrong value still count as right, and ``all_correct``
    means every step is right and the count matches the problem.
    """
    steps = [(int(a), op, int(b), int(c)) for a, op, b, c in _TARGET_STEP.findall(trace or "")]
    if not steps:
        steps = [(int(a), op, int(b), int(c)) for a, op, b, c in _SURROGATE_STEP.findall(trace or "")]
    correct, first_error, v = 0, None, p.start
    for i, (a, op, b, c) in enumerate(steps):
        ok = i < len(p.steps) and (op, b) == p.steps[i] and a == v and c == apply(a, op, b, p.modulus)
        if ok:
            correct += 1
        elif first_error is None:
            first_error = i
        v = c
    all_ok = len(steps) == len(p.steps) and correct == len(p.steps)
    return {"steps": len(steps), "correct": correct, "all_correct": all_ok, "first_error": first_error}


# The column of a toy row's correct answer (what `evaluate` scores against).
REFERENCE_COLUMN = "reference_answer"


def iter_rows(problems: list[Problem]) -> Iterator[dict]:
    for p in problems:
        yield {"id": p.id, "problem": p.text, REFERENCE_COLUMN: str(p.answer)}


def add_parser(subparsers) -> None:
    """The ``toy`` command."""
    from trace_inversion.cli_options import add_force

    p = subparsers.add_parser("toy", help="tool: write toy-world problems to parquet",
                              description="Write deterministic toy-world train/test problems to "
                                          "OUTPUT/{train,test}.parquet.")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--n-ops", type=int, default=6)
    add_force(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.cli_options import claim
    from trace_inversion.data.io import write_parquet

    w = ToyWorld(seed=args.seed, n_ops=args.n_ops)
    train, test = w.splits(args.n_train, args.n_test)
    out = claim(args.output, args)
    write_parquet(list(iter_rows(train)), out / "train.parquet")
    write_parquet(list(iter_rows(test)), out / "test.parquet")
    print(f"wrote {len(train)} train and {len(test)} test problems to {out}")
    return 0
