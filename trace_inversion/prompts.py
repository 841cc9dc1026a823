"""Prompts: the compressor's summary styles and the inverter's input format.

Compressor presets imitate the two styles of reasoning summary that closed models
expose (described in the paper; worded here from that description):

- ``bubbles`` (v1): a handful of short numbered steps, one to three sentences each;
- ``recap`` (v2): a first-person recap in 3-6 sections, each under a bold header,
  roughly 600-900 tokens for a long trace.

A user may pass a prompt file instead (``prompt_file``); its text is the system
message and the trace is the user message.

Every prompt and format a stage uses is a template a config can replace from a file
(``TEMPLATES``: the inverter's user message and optional system prompt, the student
formats); ``stage_templates`` resolves them for a config. Placeholders are
``{name}``, filled in one pass (braces around anything else are literal text). The
stage runner puts each resolved text in the stage's fingerprint (an edited prompt is a
new run) and the card records it with its source and SHA-256.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
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
# The answer first, the problem last, next to where the trace starts (small models find
# each step's operation far more easily when the problem is not separated from their
# output by other text full of numbers). Without a summary, the paragraph holding
# {summary} is left out (see ``inverter_user_prompt``).
INVERTER_USER_TEMPLATE = ("Answer:\n{answer}\n\nReasoning summary:\n{summary}\n\n" + INVERTER_INSTRUCTION
                          + "\n\nProblem:\n{problem}")
STUDENT_USER_TEMPLATE = "{problem}"
STUDENT_RESPONSE_TEMPLATE = "<think>\n{reasoning}\n</think>\n\n{answer}"

_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+)\}")


@dataclass(frozen=True)
class TemplateSpec:
    """A replaceable template: the config field naming its file, its default text
    (None: not sent unless a file is given) and the placeholders it must hold."""

    label: str
    field: str
    default: Optional[str]
    required: tuple[str, ...] = ()


TEMPLATES = {
    "inverter_user": TemplateSpec("inverter user template", "invert.user_template_file", INVERTER_USER_TEMPLATE,
                                  ("problem", "answer", "summary")),
    "inverter_system": TemplateSpec("inverter system prompt", "invert.system_prompt_file", None),
    "student_user": TemplateSpec("student user template", "students.user_template_file", STUDENT_USER_TEMPLATE,
                                 ("problem",)),
    "student_response": TemplateSpec("student response template", "students.response_template_file",
                                     STUDENT_RESPONSE_TEMPLATE, ("reasoning", "answer")),
}


@dataclass(frozen=True)
class Template:
    """A resolved prompt or format: its text and where the text came from."""

    key: str
    label: str
    text: str
    source: str  # "default", "preset <style>", "config <field>" or the file's path

    @property
    def sha(self) -> str:
        return prompt_hash(self.text)


def fill(template: str, **values: str) -> str:
    """``template`` with each ``{name}`` of ``values`` replaced in one pass (a value
    that itself contains ``{answer}`` is not filled again; other braces stay)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def template_problems(text: str, required: tuple[str, ...]) -> list[str]:
    """What makes ``text`` unusable as a template needing ``required`` placeholders."""
    if not text.strip():
        return ["is empty"]
    found = set(_PLACEHOLDER.findall(text))
    missing = [f"{{{name}}}" for name in required if name not in found]
    return [f"lacks the placeholder(s) {', '.join(missing)}"] if missing else []


def read_template(path: str, required: tuple[str, ...] = ()) -> tuple[Optional[str], Optional[str]]:
    """(text, None) for a usable template file, else (None, the problem with its fix)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{path!r} does not exist; fix: check the path (relative paths start at the working directory)"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path!r} cannot be read as UTF-8 text ({type(e).__name__}); fix: save it as a UTF-8 text file"
    text = text[:-1] if text.endswith("\n") else text  # a text file's final newline is not part of the template
    bad = template_problems(text, required)
    if bad:
        need = ", ".join(f"{{{n}}}" for n in required)
        fix = f"write the text with {need} where the values go" if required else "write the prompt in it"
        return None, f"template file {path!r} {bad[0]}; fix: {fix}"
    return text, None


def template_text(key: str, path: Optional[str]) -> Optional[Template]:
    """Template ``key`` (see ``TEMPLATES``) from ``path``, else its default; None when it
    has no default and no file. Raises ``TemplateError`` naming the field and the fix."""
    spec = TEMPLATES[key]
    if not path:
        return None if spec.default is None else Template(key, spec.label, spec.default, "default")
    text, problem = read_template(path, spec.required)
    if problem:
        from trace_inversion.config import TemplateError

        raise TemplateError([f"{spec.field}: {problem}"])
    return Template(key, spec.label, text, str(path))


def stage_templates(cfg, *keys: str) -> dict[str, Template]:
    """The prompts and formats ``keys`` as this config resolves them (files read now).

    Keys: those of ``TEMPLATES``, plus ``target_system`` (``query.system_prompt``),
    ``compressor`` (the preset of ``inverter_data.summary_style`` or the text of
    ``inverter_data.prompt_file``) and ``judge`` (the judge verifier's fixed template,
    when ``invert.verifiers`` lists judge). A template not in use is left out."""
    out: dict[str, Template] = {}
    for key in keys:
        t: Optional[Template] = None
        if key == "target_system":
            if cfg.query.system_prompt:
                t = Template(key, "target system prompt", cfg.query.system_prompt, "config query.system_prompt")
        elif key == "compressor":
            idc = cfg.inverter_data
            if idc.prompt_file:
                text, problem = read_template(idc.prompt_file)
                if problem:
                    from trace_inversion.config import TemplateError

                    raise TemplateError([f"inverter_data.prompt_file: {problem}"])
                t = Template(key, "compressor system prompt", text.strip(), str(idc.prompt_file))
            else:
                t = Template(key, "compressor system prompt", compressor_prompt(idc.summary_style),
                             f"preset {idc.summary_style}")
        elif key == "judge":
            if "judge" in cfg.invert.verifiers:
                from trace_inversion.scoring.verifiers import JUDGE_TEMPLATE

                t = Template(key, "judge template", JUDGE_TEMPLATE, "built in")
        else:
            spec = TEMPLATES[key]
            section, field = spec.field.split(".")
            t = template_text(key, getattr(getattr(cfg, section), field))
        if t is not None:
            out[key] = t
    return out


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


def inverter_user_prompt(problem: str, answer: str, summary: Optional[str],
                         template: str = INVERTER_USER_TEMPLATE) -> str:
    """The inverter's input: ``template`` filled with the target's answer, (optionally)
    its summary and the problem. With ``summary`` None the template's paragraph (text
    between blank lines) holding ``{summary}`` is left out: one template serves both of
    the paper's inverters."""
    if summary is None:
        template = "\n\n".join(p for p in template.split("\n\n") if "{summary}" not in p)
    return fill(template, problem=problem, answer=answer, summary=summary or "")


def parse_inverter_prompt(text: str) -> dict:
    """Inverse of ``inverter_user_prompt`` with the default template (problem, answer,
    summary or None); the toy inverter reads its input with it."""
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


def inverter_messages(problem: str, answer: str, summary: Optional[str], trace: Optional[str] = None,
                      template: str = INVERTER_USER_TEMPLATE, system: Optional[str] = None) -> list[dict]:
    """Conversational format (a system turn first when ``system`` is given); with
    ``trace`` it is an SFT example whose only assistant turn (the only part with loss)
    is the trace."""
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": inverter_user_prompt(problem, answer, summary, template)})
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


def student_response(reasoning: Optional[str], answer: str, template: str = STUDENT_RESPONSE_TEMPLATE) -> str:
    """A student's target text: ``template`` (default
    ``<think>\n{reasoning}\n</think>\n\n{answer}``) filled, or the bare answer when
    there is no reasoning (the answer-only condition)."""
    if reasoning is None:
        return answer
    return fill(template, reasoning=reasoning, answer=answer)


def student_messages(problem: str, reasoning: Optional[str], answer: str, user_template: str = STUDENT_USER_TEMPLATE,
                     response_template: str = STUDENT_RESPONSE_TEMPLATE) -> list[dict]:
    return [{"role": "user", "content": fill(user_template, problem=problem)},
            {"role": "assistant", "content": student_response(reasoning, answer, response_template)}]


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
