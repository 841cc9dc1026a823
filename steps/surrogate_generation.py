"""Surrogate generation: an open reasoning model's visible traces on the problems."""

from typing import TYPE_CHECKING

from distilabel.steps import StepInput

from trace_inversion.steps.base import ModelStep

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


class GenerateSurrogateTraces(ModelStep):
    """Run the surrogate reasoning model and split each output at ``</think>``.

    The surrogate (e.g. DeepSeek-R1-Distill-Qwen-1.5B through the vLLM offline
    engine, an OpenAI-compatible server, or the toy world's ``toy-surrogate``) writes
    ``<think> trace </think> answer``. An output with no closing tag was truncated: the
    row keeps its place with ``surrogate_error`` set and goes to ``failures``.

    Attributes:
        llm (or model), cache_path, total_rows, max_model_len: see ``ModelStep``.

    Input columns:
        - id (str), problem (str)

    Output columns:
        - surrogate_output (str): the raw generation.
        - surrogate_trace (str): the text inside ``<think>`` (None if truncated).
        - surrogate_answer (str): the text after ``</think>`` (None if truncated).
        - surrogate_model (str)
        - surrogate_error (str): None, or why the row is unusable.
        - surrogate_finish_reason (str): the backend's finish reason (``length``: the
          length cap was hit; None when the call failed or the backend reports none).
        - surrogate_output_tokens (int): the backend's count of generated tokens (None
          when not reported).

    Examples:
        ```python
        step = GenerateSurrogateTraces(model={"backend": "toy", "model": "toy-surrogate"}, cache_path="c.sqlite")
        step.load()
        next(step.process([{"id": "1", "problem": "Evaluate left to right modulo 10: 3 + 4"}]))
        ```
    """

    progress_label: str = "surrogate traces"

    @property
    def inputs(self) -> "StepColumns":
        return ["id", "problem"]

    @property
    def outputs(self) -> "StepColumns":
        return ["surrogate_output", "surrogate_trace", "surrogate_answer", "surrogate_model", "surrogate_error",
                "surrogate_finish_reason", "surrogate_output_tokens"]

    def parse_result(self, row: dict, result) -> dict:
        from trace_inversion.prompts import split_think

        response = (result.response or {}) if result.ok else {}
        n_out = (response.get("usage") or {}).get("output_tokens")
        out = dict(row, surrogate_model=self.model_name, surrogate_finish_reason=response.get("finish_reason"),
                   surrogate_output_tokens=n_out if isinstance(n_out, int) and n_out > 0 and not response.get("samples")
                   else None)
        if not result.ok:
            return dict(out, surrogate_output=None, surrogate_trace=None, surrogate_answer=None,
                        surrogate_error=result.error)
        text = result.response["answer"]
        trace, answer = split_think(text)
        error = None
        if trace is None:
            error = "truncated: no closing </think>" + (" (length cap hit)" if result.response.get("finish_reason") == "length" else "")
        elif not trace:
            error = "empty trace"
        elif not answer:
            error = "empty answer after </think>"
        return dict(out, surrogate_output=text, surrogate_trace=trace, surrogate_answer=answer, surrogate_error=error)

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        results = self.call_model([[{"role": "user", "content": r["problem"]}] for r in inputs],
                                  failure=lambda i, res: self.parse_result(inputs[i], res)["surrogate_error"])
        yield [self.parse_result(r, res) for r, res in zip(inputs, results)]
