"""Student data: the paper's training conditions in TRL's conversational format."""

from typing import TYPE_CHECKING, Optional

from distilabel.steps import Step, StepInput
from pydantic import Field

from trace_inversion.prompts import STUDENT_RESPONSE_TEMPLATE, STUDENT_USER_TEMPLATE

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

CONDITIONS = {
    # name: (reasoning column or None, answer column)
    "answer_only": (None, "target_answer"),
    "summary_answer": ("target_summary", "target_answer"),
    "surrogate_traces": ("surrogate_trace", "surrogate_answer"),
    "inverted_unfiltered": ("first_trace", "target_answer"),
    "inverted_verified": ("inverted_trace", "target_answer"),
    "target_traces": ("target_trace", "target_answer"),
}


class FormatStudentSFT(Step):
    """Build one student training condition as TRL conversational ``messages``.

    The assistant turn is ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}`` (the
    paper's format for synthesized traces), or just the answer for ``answer_only``.
    Conditions: answer_only; summary_answer; surrogate_traces (the surrogate's own
    traces and answers); inverted_unfiltered (first inverted sample, the paper's
    pipeline); inverted_verified (answer-consistent traces only); target_traces (the
    oracle, when the target is open). A row missing its reasoning or answer gets
    ``messages = None`` and is left out of the condition by the pipeline.

    Attributes:
        condition: one of the names above.
        reasoning_column / answer_column: override the condition's columns.
        user_template: the user turn (placeholder {problem}; default the bare problem).
        response_template: the assistant turn of a condition with reasoning
            (placeholders {reasoning}, {answer}; default the format above).

    Input columns:
        - problem and the condition's columns

    Output columns:
        - messages (list[dict] | None), condition (str)

    Examples:
        ```python
        step = FormatStudentSFT(condition="inverted_verified")
        step.load()
        next(step.process([{"problem": "p", "inverted_trace": "t", "target_answer": "a"}]))
        ```
    """

    condition: str
    reasoning_column: Optional[str] = None
    answer_column: Optional[str] = None
    user_template: str = Field(STUDENT_USER_TEMPLATE, description="The student's user turn template.")
    response_template: str = Field(STUDENT_RESPONSE_TEMPLATE, description="The student's assistant turn template.")

    def columns(self) -> tuple[Optional[str], str]:
        if self.condition not in CONDITIONS:
            raise ValueError(f"unknown condition {self.condition!r}; fix: one of {sorted(CONDITIONS)}")
        r, a = CONDITIONS[self.condition]
        return self.reasoning_column or r, self.answer_column or a

    @property
    def inputs(self) -> "StepColumns":
        r, a = self.columns()
        return ["problem", a] + ([r] if r else [])

    @property
    def outputs(self) -> "StepColumns":
        return ["messages", "condition"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        from trace_inversion.prompts import student_messages

        rcol, acol = self.columns()
        out = []
        for row in inputs:
            answer = row.get(acol)
            reasoning = row.get(rcol) if rcol else None
            ok = isinstance(answer, str) and answer.strip() and (rcol is None or (isinstance(reasoning, str) and reasoning.strip()))
            msgs = student_messages(row["problem"], reasoning, answer, self.user_template,
                                    self.response_template) if ok else None
            out.append(dict(row, messages=msgs, condition=self.condition))
        yield out
