"""SFT formatting: rows into TRL conversational examples."""

from typing import TYPE_CHECKING, Optional

from distilabel.steps import Step, StepInput
from pydantic import Field

from trace_inversion.prompts import INVERTER_USER_TEMPLATE

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


class FormatInverterSFT(Step):
    """Build the inverter's training examples in TRL's conversational format.

    Two variants from each row, as the paper trains two inverters:
    ``messages_with_summary`` (user: problem + answer + summary) and
    ``messages_without_summary`` (user: problem + answer); the assistant turn is the
    trace, the only part with loss (``assistant_only_loss: true`` in the recipes).

    Attributes:
        problem_column, answer_column, summary_column, trace_column: column names.
        user_template / system_prompt: the inverter's user message template and
            optional system message (those ``InvertTraces`` will query it with).

    Input columns:
        - problem, answer, summary, trace (names configurable)

    Output columns:
        - messages_with_summary (list[dict]), messages_without_summary (list[dict])

    Examples:
        ```python
        step = FormatInverterSFT()
        step.load()
        next(step.process([{"problem": "p", "surrogate_answer": "a", "summary": "s", "surrogate_trace": "t"}]))
        ```
    """

    problem_column: str = "problem"
    answer_column: str = "surrogate_answer"
    summary_column: str = "summary"
    trace_column: str = "surrogate_trace"
    user_template: str = Field(INVERTER_USER_TEMPLATE, description="The inverter's user message template.")
    system_prompt: Optional[str] = Field(None, description="An optional system message for the inverter.")

    @property
    def inputs(self) -> "StepColumns":
        return [self.problem_column, self.answer_column, self.summary_column, self.trace_column]

    @property
    def outputs(self) -> "StepColumns":
        return ["messages_with_summary", "messages_without_summary"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        from trace_inversion.prompts import inverter_messages

        out = []
        for r in inputs:
            p, a, s, t = (r.get(c) for c in (self.problem_column, self.answer_column, self.summary_column,
                                             self.trace_column))
            ok = all(isinstance(x, str) and x.strip() for x in (p, a, s, t))
            fmt = dict(template=self.user_template, system=self.system_prompt)
            out.append(dict(r, messages_with_summary=inverter_messages(p, a, s, t, **fmt) if ok else None,
                            messages_without_summary=inverter_messages(p, a, None, t, **fmt) if ok else None))
        yield out
