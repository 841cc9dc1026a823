"""Summary compressor: turn a full trace into a summary in a target's style."""

from typing import TYPE_CHECKING, Optional

from distilabel.steps import StepInput
from pydantic import Field

from trace_inversion.steps.base import ModelStep

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


def summary_text(output) -> str:
    """The summary in a compressor's output (a reasoning compressor may think first:
    only what follows ``</think>`` counts)."""
    text = (output or "").strip()
    if "</think>" in text:
        text = text.split("</think>", 1)[1].strip()
    return text


class CompressTraces(ModelStep):
    """Summarise each trace, simulating the reasoning summaries a closed target shows.

    Styles: ``bubbles`` (v1: a few numbered steps of 1-3 sentences), ``recap`` (v2:
    a first-person recap in 3-6 bold-header sections, ~600-900 tokens), or a user
    ``prompt_file``. With the toy backend (``toy-compressor``) the summary follows the
    toy target's style exactly. Rows whose ``input_column`` is empty are passed
    through with ``summary_error`` set.

    Attributes:
        style: ``bubbles`` or ``recap`` (ignored when ``prompt_file`` or ``prompt`` is set).
        prompt_file: path of a system prompt to use instead of a preset.
        prompt: the system prompt's text itself (what the pipelines pass: the text the
            stage's fingerprint covers, read once); overrides ``style`` and ``prompt_file``.
        input_column: the trace column (default ``surrogate_trace``).
        llm (or model), cache_path, total_rows, max_model_len: see ``ModelStep``.

    Input columns:
        - the ``input_column`` (str)

    Output columns:
        - summary (str), summary_style (str), summary_prompt_sha (str),
          summary_model (str), summary_error (str or None)
        - summary_finish_reason (str or None): the backend's finish reason (``length``:
          the length cap was hit; None without a call or when the backend reports none)

    Examples:
        ```python
        step = CompressTraces(model={"backend": "toy", "model": "toy-compressor"}, cache_path="c.sqlite")
        step.load()
        next(step.process([{"surrogate_trace": "start 3\\nadd 4 -> 7\\nmul 7 -> 9"}]))
        ```
    """

    style: str = Field("bubbles", description="bubbles (v1) or recap (v2)")
    prompt_file: Optional[str] = None
    prompt: Optional[str] = Field(None, description="The system prompt text (overrides style and prompt_file).")
    input_column: str = "surrogate_trace"
    progress_label: str = "compress traces"

    @property
    def inputs(self) -> "StepColumns":
        return [self.input_column]

    @property
    def outputs(self) -> "StepColumns":
        return ["summary", "summary_style", "summary_prompt_sha", "summary_model", "summary_error",
                "summary_finish_reason"]

    def system_prompt(self) -> str:
        from trace_inversion.prompts import compressor_prompt

        return self.prompt if self.prompt is not None else compressor_prompt(self.style, self.prompt_file)

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        from trace_inversion.prompts import compressor_messages, prompt_hash

        system = self.system_prompt()
        sha = prompt_hash(system)
        style = "file" if self.prompt_file else self.style
        todo = [i for i, r in enumerate(inputs) if (r.get(self.input_column) or "").strip()]
        results = self.call_model([compressor_messages(inputs[i][self.input_column], system) for i in todo],
                                  failure=lambda _, res: not summary_text(res.response["answer"])) if todo else []
        by_index = dict(zip(todo, results))
        out = []
        for i, r in enumerate(inputs):
            row = dict(r, summary_style=style, summary_prompt_sha=sha, summary_model=self.model_name,
                       summary_finish_reason=None)
            res = by_index.get(i)
            if res is None:
                row.update(summary=None, summary_error="no trace to summarise")
            elif not res.ok:
                row.update(summary=None, summary_error=res.error)
            else:
                text = summary_text(res.response["answer"])
                row.update(summary=text or None, summary_error=None if text else "empty summary",
                           summary_finish_reason=res.response.get("finish_reason"))
            out.append(row)
        yield out
