"""Inversion with verified synthesis: write a full trace for each (problem, answer, summary)."""

from typing import TYPE_CHECKING, Literal, Optional

from distilabel.steps import StepInput
from pydantic import Field

from trace_inversion.steps.base import ModelStep

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


def judge(output: Optional[str], finish_reason: Optional[str], given_answer: Optional[str]) -> tuple[Optional[bool], str, Optional[str]]:
    """Run every filter on one inverter output: (verdict, reason, trace).

    Order: empty, truncated, degenerate repetition, then answer consistency. The first
    rejecting filter gives the reason; consistency None means "cannot verify".
    """
    from trace_inversion.answer_matching import consistency_verdict
    from trace_inversion.filters import degeneracy_verdict, empty_verdict, truncation_verdict
    from trace_inversion.prompts import split_think

    ok, why = truncation_verdict(output, finish_reason)
    if not ok:
        return False, why, None
    trace = output
    if output and "</think>" in output:  # a reasoning inverter may wrap its trace
        trace = split_think(output)[0]
    for check in (empty_verdict, degeneracy_verdict):
        ok, why = check(trace)
        if not ok:
            return False, why, trace
    verdict, why = consistency_verdict(given_answer, trace)
    return verdict, why, trace


class InvertTraces(ModelStep):
    """The inverter writes a full reasoning trace for each target (problem, answer, summary).

    **Verified synthesis** (the project's step beyond the paper): every sample is
    judged by the filters (empty, truncated, degenerate repetition) and by answer
    consistency (does the trace reach the target's answer? math-verify with
    normalised-string and multiple-choice fallbacks). Rows without an accepted sample
    are resampled with new seeds, up to ``max_attempts`` rounds of
    ``samples_per_round`` samples. Every attempt's verdict is kept. Each sample is a
    separate cached request (its seed is part of the key), so resampling never
    repeats a paid call and a rerun replays them all.

    Attributes:
        with_summary: use the summary (the paper's two inverters: with / without).
        samples_per_round: samples per row per round.
        max_attempts: rounds of sampling for a row before it is rejected.
        unverifiable: "keep" or "reject" rows whose consistency cannot be verified.
        answer_column / summary_column: input column names.
        base_seed: seed of the first sample; sample k of round a uses
            ``base_seed + a * samples_per_round + k``.
        model, cache_path, toy_world, total_rows, max_model_len: see ``ModelStep``.

    Input columns:
        - id, problem, and the answer and summary columns

    Output columns:
        - inverted_trace (str): the accepted trace (or the last one tried).
        - inversion_verdict (bool | None): True consistent, False rejected, None unverifiable.
        - inversion_reason (str): why.
        - inversion_accepted (bool): goes to ``train`` (else ``rejected``).
        - inversion_attempts (list[dict]): every sample: round, seed, verdict, reason, trace.
        - first_trace / first_verdict: the first sample, as an unverified pipeline would keep it.
        - inverter_model (str)

    Examples:
        ```python
        step = InvertTraces(model={"backend": "toy", "model": "toy-inverter"}, cache_path="c.sqlite")
        step.load()
        next(step.process([{"id": "1", "problem": "Evaluate left to right modulo 10: 3 + 4",
                            "target_answer": "The answer is \\\\boxed{7}.", "target_summary": "step 1 gives 7."}]))
        ```
    """

    with_summary: bool = True
    samples_per_round: int = Field(1, ge=1, le=64)
    max_attempts: int = Field(4, ge=1, le=64)
    unverifiable: Literal["keep", "reject"] = "keep"
    answer_column: str = "target_answer"
    summary_column: str = "target_summary"
    base_seed: int = 0
    progress_label: str = "invert"

    @property
    def inputs(self) -> "StepColumns":
        return ["id", "problem", self.answer_column] + ([self.summary_column] if self.with_summary else [])

    @property
    def outputs(self) -> "StepColumns":
        return ["inverted_trace", "inversion_verdict", "inversion_reason", "inversion_accepted",
                "inversion_attempts", "first_trace", "first_verdict", "inverter_model"]

    def messages(self, row: dict) -> list[dict]:
        from trace_inversion.prompts import inverter_messages

        summary = (row.get(self.summary_column) or "") if self.with_summary else None
        return inverter_messages(row["problem"], row[self.answer_column] or "", summary)

    def accepted(self, verdict: Optional[bool]) -> bool:
        return verdict is True or (verdict is None and self.unverifiable == "keep")

    def rank(self, att: dict) -> int:
        """2: consistent; 1: unverifiable but kept by policy; 0: rejected. Rows below 2
        are resampled (an unverifiable trace may still be replaced by a consistent one)."""
        if not att["trace"]:
            return 0
        if att["verdict"] is True:
            return 2
        return 1 if self.accepted(att["verdict"]) else 0

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        k = self.samples_per_round
        state = {i: {"attempts": [], "best": None} for i in range(len(inputs))}
        pending = list(range(len(inputs)))
        for rnd in range(self.max_attempts):
            if not pending:
                break
            convs, seeds, owners = [], [], []
            for i in pending:
                for j in range(k):
                    convs.append(self.messages(inputs[i]))
                    seeds.append(self.base_seed + rnd * k + j)
                    owners.append(i)
            # with --retry-failed, a sample the filters rejected is requested once more
            results = self.call_model(convs, seeds, failure=lambda n, res: judge(
                res.response.get("answer"), res.response.get("finish_reason"),
                inputs[owners[n]][self.answer_column])[0] is False)
            for i, seed, res in zip(owners, seeds, results):
                if res.ok:
                    r = res.response
                    verdict, reason, trace = judge(r.get("answer"), r.get("finish_reason"), inputs[i][self.answer_column])
                else:
                    verdict, reason, trace = False, f"generation failed: {res.error}", None
                att = {"round": rnd, "seed": seed, "verdict": verdict, "reason": reason, "trace": trace}
                st = state[i]
                st["attempts"].append(att)
                if st["best"] is None or self.rank(att) > self.rank(st["best"]):
                    st["best"] = att
            pending = [i for i in pending if self.rank(state[i]["best"]) < 2]
        out = []
        for i, row in enumerate(inputs):
            st = state[i]
            best = st["best"]
            # With no accepted sample, report the last attempt's rejection.
            final = best if self.rank(best) > 0 else st["attempts"][-1]
            first = st["attempts"][0]
            out.append(dict(row, inverted_trace=final["trace"], inversion_verdict=final["verdict"],
                            inversion_reason=final["reason"],
                            inversion_accepted=self.rank(final) > 0,
                            inversion_attempts=st["attempts"], first_trace=first["trace"],
                            first_verdict=first["verdict"], inverter_model=self.model_name))
        yield out
