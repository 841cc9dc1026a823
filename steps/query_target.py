"""Target query: ask the black-box target each problem; record answer and summary."""

from typing import TYPE_CHECKING, Optional

from distilabel.steps import StepInput
from pydantic import Field, PrivateAttr

from trace_inversion.steps.base import ModelStep
from trace_inversion.steps.summarize import CompressTraces

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


class QueryTarget(ModelStep):
    """Ask the target model each problem and record its answer and reasoning summary.

    Every request goes through the project's request cache (``cache_path``): a rerun
    after a crash replays finished requests and pays for none. Requests run
    concurrently (``target.concurrency``) with retries on 429/5xx/timeouts. A row
    whose request fails permanently, comes back incomplete (the output cap, a content
    filter: different reasons), or (with ``require_summary``) with no summary, keeps its
    place with ``query_error`` set to the reason; nothing is dropped.

    The target's reasoning field lands by the model's ``reasoning_field``: a summary
    (Responses API) in ``target_summary``, a full trace (chat ``reasoning_content``)
    in ``target_trace``. With ``summarize_traces`` the step hands each answered row's
    trace to a compressor (``trace_for_summary``) and leaves the summary to it.

    Attributes:
        llm: the target, any distilabel LLM (the project's ``OpenAIResponsesLLM``
            keeps reasoning summaries; ``OpenAIChatLLM`` keeps ``reasoning_content``;
            local engines work too, for open targets); or ``model``, a ModelConfig dict.
        cache_path: the request cache file.
        require_summary: treat an empty summary as a failure.
        system_prompt: optional system message sent before the problem.
        summarize_traces: the summary will be written by a compressor from the trace
            (``query.summarize_traces_with: compressor``): a row without a trace fails.
        budget_scope: the run's budget ledger scope (one cap for every process).

    Input columns:
        - id (str): row id.
        - problem (str): the problem text, sent as the user message.

    Output columns:
        - target_answer (str): the target's final answer text (None on failure).
        - target_summary (str): its reasoning summary (None if it exposes none).
        - target_trace (str): the full trace, only from targets that expose it (a
          reasoning parser's reasoning_content; the toy target: oracle data for overlap
          metrics); None otherwise.
        - trace_for_summary (str): with ``summarize_traces`` only: the trace of each
          answered row, None for failed rows (which are not summarised).
        - target_usage (dict): input/output/reasoning tokens.
        - target_cost_usd (float): what this row's request cost at the configured prices
          (the same when replayed from the cache, so a rerun writes identical data).
        - target_model (str): the model name.
        - query_error (str): None, or why the row failed.
        - query_attempts (int): HTTP attempts made in this run (0 when replayed); run
          statistics, dropped from the written dataset.

    Examples:
        ```python
        step = QueryTarget(model={"backend": "toy", "model": "toy-target"}, cache_path="cache.sqlite")
        step.load()
        next(step.process([{"id": "1", "problem": "Evaluate left to right modulo 10: 3 + 4"}]))
        ```
    """

    require_summary: bool = False
    system_prompt: Optional[str] = None
    refusal_patterns: list = Field(default_factory=list, description="Regexes marking a refusal.")
    summarize_traces: bool = Field(False, description="A compressor writes the summary from target_trace.")
    budget_scope: Optional[str] = Field(None, description="The run's budget ledger scope.")
    progress_label: str = "query target"

    _refusals: list = PrivateAttr(default_factory=list)

    @property
    def inputs(self) -> "StepColumns":
        return ["id", "problem"]

    @property
    def outputs(self) -> "StepColumns":
        cols = ["target_answer", "target_summary", "target_trace", "target_usage", "target_cost_usd",
                "target_model", "query_error", "query_attempts"]
        return cols + ["trace_for_summary"] if self.summarize_traces else cols

    def load(self) -> None:
        import re

        super().load()
        self._refusals = [re.compile(p, re.I) for p in self.refusal_patterns]

    def format_messages(self, problem: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": problem}]

    def parse_result(self, row: dict, result) -> dict:
        from trace_inversion.models.clients import cost_of

        out = dict(row)
        out.update(target_model=self.model_name, query_attempts=result.attempts)
        if self.summarize_traces:
            out["trace_for_summary"] = None
        if not result.ok:
            out.update(target_answer=None, target_summary=None, target_trace=None, target_usage=None,
                       target_cost_usd=0.0, query_error=result.error)
            return out
        r = result.response
        usage = r.get("usage", {})
        error = None
        answer = (r.get("answer") or "").strip()
        finish = r.get("finish_reason")
        if r.get("incomplete_reason") or finish in ("length", "content_filter"):
            why = r.get("incomplete_reason") or finish
            fix = " (the output cap: raise sampling.max_new_tokens)" if finish == "length" else ""
            error = f"incomplete: {why}{fix}"
        elif not answer:
            error = "empty answer"
        elif any(p.search(answer) for p in self._refusals):
            error = f"refusal: {answer[:80]}"
        elif self.summarize_traces and not (r.get("trace") or "").strip():
            error = ("no reasoning trace to summarise (the server returned no reasoning_content: start it with a "
                     "reasoning parser, or check models.target.reasoning_field)")
        elif self.require_summary and not self.summarize_traces and not (r.get("summary") or "").strip():
            error = "empty summary (require_summary is set)"
        out.update(target_answer=r.get("answer"), target_summary=r.get("summary") or None,
                   target_trace=r.get("trace") or None, target_usage=usage,
                   target_cost_usd=(cost_of(usage, self._gen.cfg) * r.get("price_factor", 1.0)  # a Batch API result: half price
                                    if self._gen.cfg is not None else 0.0),
                   query_error=error)
        if self.summarize_traces and error is None:
            out.update(target_summary=None, trace_for_summary=out["target_trace"])
        return out

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        results = self.call_model([self.format_messages(r["problem"]) for r in inputs],
                                  failure=lambda i, res: self.parse_result(inputs[i], res)["query_error"])
        yield [self.parse_result(r, res) for r, res in zip(inputs, results)]


class SummarizeTargetTraces(CompressTraces):
    """The compressor writing the summaries of a full-trace target (``query.summarize_traces_with:
    compressor``, as in the paper's open-target experiments): ``CompressTraces`` on
    ``trace_for_summary``, drawing on the run's budget ledger like the query."""

    input_column: str = "trace_for_summary"
    budget_scope: Optional[str] = Field(None, description="The run's budget ledger scope.")
    progress_label: str = "summarise target traces"
