"""Prompts: the compressor's summary styles and the inverter's input format.

Compressor presets imitate the two styles of reasoning summary that closed models
expose (described in the paper; worded here from that description):

- ``bubbles`` (v1): a handful of short numbered steps, one to three sentences each;
- ``recap`` (v2): a first-person recap in 3-6 sections, each under a bold header,
  roughly 600-900 tokens for a long trace.

A user may pass a prompt file instead (``prompt_file``); its text is the system
message and the trace is the user message. The card records every prompt's SHA-256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

COMPRESSOR_PRESETS = {
    "bubbles": (
        "You will be shown the private reasoning a model wrote while solving a problem. "
        "Rewrite it as a short progress summary for a user: 3 to 7 numbered steps, each "
        "one to three plain sentences saying what was worked out at that point. Keep key "
        "intermediate results, drop false starts and self-corrections, do not add "
        "anything the reasoning does not contain, and do not state the final answer "
        "more than once. Output only the numbered steps."
    ),
    "recap": (
        "You will be shown the private reasoning a model wrote while solving a problem. "
        "Write a recap of it in the first person ('I started by...', 'Next I checked...'), "
        "organised in 3 to 6 sections. Begin each section with a short bold header on its "
        "own line, like **Setting up the equations**, followed by a paragraph. Cover the "
        "approach, the important intermediate results and any checks, in the order they "
        "happened; leave out dead ends unless they changed the approach. For a long "
        "reasoning aim for 600 to 900 tokens, for a short one be proportionally shorter. "
        "Output only the recap."
    ),
}

INVERTER_INSTRUCTION = "Write the full step-by-step reasoning that leads from the problem to the answer."


def compressor_prompt(style: str = "bubbles", prompt_file: Optional[str] = None) -> str:
    if prompt_file:
        text = Path(prompt_file).read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"prompt file {prompt_file} is empty; fix: write the compressor instructions in it")
        return text
    if style not in COMPRESSOR_PRESETS:
        raise ValueError(f"unknown summary style {style!r}; fix: use one of {sorted(COMPRESSOR_PRESETS)} or a prompt_file")
    return COMPRESSOR_PRESETS[style]


def compressor_messages(trace: str, system: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": trace}]


def inverter_user_prompt(problem: str, answer: str, summary: Optional[str]) -> str:
    """The inverter's input: the target's answer, (optionally) its summary, the
    instruction, and the problem last, next to where the trace starts (small models
    find each step's operation far more easily when the problem is not separated from
    their output by other text full of numbers)."""
    parts = [f"Answer:\n{answer}"]
    if summary is not None:
        parts.append(f"Reasoning summary:\n{summary}")
    parts += [INVERTER_INSTRUCTION, f"Problem:\n{problem}"]
    return "\n\n".join(parts)


def parse_inverter_prompt(text: str) -> dict:
    """Inverse of ``inverter_user_prompt`` (problem, answer, summary or None)."""
    out: dict = {"problem": None, "answer": None, "summary": None}
    head, sep, problem = text.rpartition("\n\nProblem:\n")
    if not sep:
        return out
    out["problem"] = problem
    head = head.rsplit("\n\n" + INVERTER_INSTRUCTION, 1)[0]
    if "\n\nReasoning summary:\n" in head:
        head, _, out["summary"] = head.partition("\n\nReasoning summary:\n")
    out["answer"] = head.removeprefix("Answer:\n")
    return out


def inverter_messages(problem: str, answer: str, summary: Optional[str], trace: Optional[str] = None) -> list[dict]:
    """Conversational format; with ``trace`` it is an SFT example whose only
    assistant turn (the only part with loss) is the trace."""
    msgs = [{"role": "user", "content": inverter_user_prompt(problem, answer, summary)}]
    if trace is not None:
        msgs.append({"role": "assistant", "content": trace})
    return msgs


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def split_think(text: str) -> tuple[Optional[str], Optional[str]]:
    """(trace, answer) of a reasoning model's output; (None, None) when there is no
    closing ``</think>`` (the generation was truncated)."""
    if text is None or "</think>" not in text:
        return None, None
    head, _, tail = text.partition("</think>")
    trace = head.split("<think>", 1)[-1].strip()
    return trace, tail.strip()


def student_response(reasoning: Optional[str], answer: str) -> str:
    """A student's target text: ``<think>\n{reasoning}\n</think>\n\n{answer}``, or the
    bare answer when there is no reasoning (the answer-only condition)."""
    if reasoning is None:
        return answer
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def student_messages(problem: str, reasoning: Optional[str], answer: str) -> list[dict]:
    return [{"role": "user", "content": problem}, {"role": "assistant", "content": student_response(reasoning, answer)}]


def final_answer_text(output: Optional[str]) -> Optional[str]:
    """The part of a student's output that states the answer (after ``</think>``).

    An output without any think tags is its own answer (the answer-only condition). An
    output that opens ``<think>`` and never closes it was cut off inside its reasoning:
    it has no answer (None), so evaluation never credits a number from unfinished
    reasoning."""
    if output is None:
        return None
    if "</think>" in output:
        return output.split("</think>", 1)[1]
    if "<think>" in output:
        return None
    return output
