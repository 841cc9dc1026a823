"""Inversion with verified synthesis: write a full trace for each (problem, answer, summary)."""

from typing import TYPE_CHECKING, Any, Literal, Optional

from distilabel.steps import StepInput
from distilabel.models.llms.base import LLM
from pydantic import Field, PrivateAttr

from trace_inversion.prompts import INVERTER_USER_TEMPLATE
from trace_inversion.steps.base import ModelStep

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


def filter_output(output: Optional[str], finish_reason: Optional[str]) -> tuple[bool, str, Optional[str]]:
    """The filters before any verifier: (passed, reason, trace). Order: truncated,
    then (on the trace, ``</think>`` stripped) empty and degenerate repetition."""
    from trace_inversion.scoring.filters import degeneracy_verdict, empty_verdict, truncation_verdict
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
    return True, "", trace


def judge(output: Optional[str], finish_reason: Optional[str], given_answer: Optional[str],
          target: Optional[tuple] = None) -> tuple[Optional[bool], str, Optional[str]]:
    """Run every filter on one inverter output: (verdict, reason, trace).

    Order: empty, truncated, degenerate repetition, then answer consistency. The first
    rejecting filter gives the reason; consistency None means "cannot verify".
    ``target``: the target answer's ``(answer, method)`` when already extracted.
    """
    from trace_inversion.scoring.answer_matching import consistency_verdict

    ok, why, trace = filter_output(output, finish_reason)
    if not ok:
        return False, why, trace
    verdict, why = consistency_verdict(given_answer, trace, target=target)
    return verdict, why, trace


class InvertTraces(ModelStep):
    """The inverter writes a full reasoning trace for each target (problem, answer, summary).

    **Verified synthesis** (the project's step beyond the paper): every sample is
    judged by the filters (empty, truncated, degenerate repetition), then by the
    ``verifiers`` in order (``trace_inversion.scoring.verifiers``): ``answer`` consistency
    (does the trace reach the target's answer?), then any step-level verifiers
    (``steps``: the toy world's exact checker; ``judge``: an LLM judge; ``prm``: a
    process reward model), which run on samples answer consistency did not reject.
    Rows without a verified sample are resampled with new seeds, up to
    ``max_attempts`` rounds of ``samples_per_round`` samples; a sample a step verifier
    rejects is resampled like an inconsistent one. The target's answer is extracted
    once per row; a row some verifier can never judge (no answer in the target's
    response; ``steps`` on a problem outside the toy world) gets one sample, "cannot
    verify", and no resampling. Every attempt's verdicts are kept. Each sample is a
    separate cached request (its seed is part of the key), so resampling never repeats
    a paid call and a rerun replays them all.

    Every sample records its finish reason, whether it hit the length cap, and its
    length (``scoring.lengths``: tokens of the inverter's own tokenizer where one loads
    offline, else word tokens). The optional **length filter** (``max_length_ratio``,
    off by default) rejects, after the other filters and before any verifier, a trace
    longer than ``max_length_ratio`` x its reference length: the row's true trace
    (``reference_column``) when it has one, else ``reference_length`` (e.g. the median
    surrogate trace); the reason reads "too long: N tokens > k x reference M", and the
    row is resampled like any other rejection. Without a reference the filter passes.

    Attributes:
        with_summary: use the summary (the paper's two inverters: with / without).
        samples_per_round: samples per row per round.
        max_attempts: rounds of sampling for a row before it is rejected.
        unverifiable: rows whose best sample cannot be verified: "keep" (status
            ``unverifiable``, their own config) or "reject" (status ``rejected``).
        verifiers: names from ``trace_inversion.scoring.verifiers.VERIFIERS``, ``answer`` first.
        judge_model: the ``judge`` verifier's ``ModelConfig`` as a dict, or
        judge_llm: the judge as any distilabel LLM (through the same request cache).
        prm: the ``prm`` verifier's ``PRMVerifier`` arguments (model, threshold, ...).
        answer_column / summary_column: input column names.
        user_template: the inverter's user message (``prompts.INVERTER_USER_TEMPLATE``
            by default; placeholders {problem}, {answer}, {summary}).
        system_prompt: an optional system message sent before it.
        base_seed: seed of the first sample; sample k of round a uses
            ``base_seed + a * samples_per_round + k``.
        max_length_ratio: the length filter's multiple of the reference length (None: off).
        reference_column: the column with each row's reference trace (true trace) for the filter.
        reference_length: the reference length for rows without one (in the same unit).
        llm (or model), cache_path, total_rows, max_model_len: see ``ModelStep``.

    Input columns:
        - id, problem, and the answer and summary columns

    Output columns:
        - inverted_trace (str): the chosen trace (verified, else unverifiable, else the last tried).
        - inversion_verdict (bool | None): True verified, False rejected, None cannot verify.
        - inversion_reason (str): why.
        - inversion_status (str): "verified" (goes to ``inverted``), "unverifiable" or "rejected".
        - inversion_accepted (bool): status is "verified".
        - inversion_attempts (list[dict]): every sample: round, seed, verdict, reason, trace, verification,
          finish_reason, cap_hit (bool | None: stopped at the length cap), length (of the whole output, in
          ``length_unit``: in model tokens the backend's own count of generated tokens when it reports one;
          None when the call failed).
        - verification (list[dict]): the chosen sample's verdict per verifier run:
          ``{"verifier", "verdict" (bool | None), "reason", "first_wrong_step" (int | None)}``.
        - step_verdict / first_wrong_step: those of the first step-level verifier run (else None).
        - target_final_answer / target_answer_method: the target's answer as extracted, and how.
        - first_trace / first_verdict: the first sample, as an unverified pipeline would keep it.
        - length_unit (str): the unit of the attempts' lengths.
        - inverter_model (str)

    Examples:
        ```python
        step = InvertTraces(model={"backend": "toy", "model": "toy-inverter"}, cache_path="c.sqlite",
                            verifiers=["answer", "steps"])
        step.load()
        next(step.process([{"id": "1", "problem": "Evaluate left to right modulo 10: 3 + 4",
                            "target_answer": "The answer is \\\\boxed{7}.", "target_summary": "step 1 gives 7."}]))
        ```
    """

    with_summary: bool = True
    samples_per_round: int = Field(1, ge=1, le=64)
    max_attempts: int = Field(4, ge=1, le=64)
    unverifiable: Literal["keep", "reject"] = "keep"
    verifiers: list[str] = Field(default_factory=lambda: ["answer"])
    judge_model: Optional[dict] = None
    # exclude=True: not in the pipeline's YAML (distilabel's cache reload copies it from the
    # live step instead of recursing into a None, which fails)
    judge_llm: Optional[LLM] = Field(None, exclude=True,
                                     description="The judge as any distilabel LLM (instead of judge_model).")
    prm: Optional[dict] = None
    answer_column: str = "target_answer"
    summary_column: str = "target_summary"
    user_template: str = Field(INVERTER_USER_TEMPLATE, description="The inverter's user message template.")
    system_prompt: Optional[str] = Field(None, description="An optional system message for the inverter.")
    base_seed: int = 0
    max_length_ratio: Optional[float] = Field(None, gt=0, description="Reject traces longer than this multiple of "
                                              "the reference length (None: off).")
    reference_column: Optional[str] = Field(None, description="Column with each row's reference (true) trace.")
    reference_length: Optional[float] = Field(None, ge=0, description="Reference length for rows without one.")
    progress_label: str = "invert"

    _verifiers: Any = PrivateAttr(None)
    _counter: Any = PrivateAttr(None)

    @property
    def inputs(self) -> "StepColumns":
        return ["id", "problem", self.answer_column] + ([self.summary_column] if self.with_summary else [])

    @property
    def outputs(self) -> "StepColumns":
        return ["inverted_trace", "inversion_verdict", "inversion_reason", "inversion_status", "inversion_accepted",
                "inversion_attempts", "verification", "step_verdict", "first_wrong_step", "target_final_answer",
                "target_answer_method", "first_trace", "first_verdict", "length_unit", "inverter_model"]

    def load(self) -> None:
        super().load()
        from trace_inversion.scoring.lengths import counter_for_llm
        from trace_inversion.scoring.verifiers import make_verifiers

        self._counter = counter_for_llm(self.llm)

        if not self.verifiers or self.verifiers[0] != "answer":
            raise ValueError(f"verifiers must start with answer, got {self.verifiers}; fix: e.g. [answer, steps]")
        judge_kw = None
        if self.judge_model or self.judge_llm is not None:
            judge_kw = {"model": self.judge_model, "llm": self.judge_llm, "cache_path": self.cache_path, "toy_world": getattr(self.llm, "world", None),
                        "budget_usd": self.budget_usd, "max_model_len": self.max_model_len,
                        "budget_scope": getattr(self, "budget_scope", None)}
        self._verifiers = make_verifiers(self.verifiers, judge_kw, self.prm)
        for v in self._verifiers:  # a PRM or judge that cannot load fails here, not as "cannot verify" rows
            if hasattr(v, "load"):
                v.load()

    def unload(self) -> None:
        super().unload()  # writes the timings, the judge's usage included
        for v in self._verifiers or []:
            v.close()

    def write_timings(self) -> None:
        super().write_timings()
        import json

        judge = next((v for v in self._verifiers or [] if v.name == "judge"), None)
        u = judge.usage if judge is not None else None
        if u is not None:  # the judge's calls, beside the inverter's
            p = self.timings_path()
            data = json.loads(p.read_text())
            data["judge"] = {"requests": u.requests, "cached_requests": u.cached_requests,
                             "output_tokens": u.output_tokens, "cost_usd": u.cost_usd}
            p.write_text(json.dumps(data, indent=2))

    def messages(self, row: dict) -> list[dict]:
        from trace_inversion.prompts import inverter_messages

        summary = (row.get(self.summary_column) or "") if self.with_summary else None
        return inverter_messages(row["problem"], row[self.answer_column] or "", summary,
                                 template=self.user_template, system=self.system_prompt)

    def length_cap(self) -> Optional[int]:
        """The inverter's length cap in tokens (``sampling.max_new_tokens``), when known."""
        cfg = getattr(self.llm, "cfg", None)
        sampling = getattr(cfg, "sampling", None)
        return getattr(sampling, "max_new_tokens", None)

    def reference_lengths(self, rows: list[dict]) -> list[Optional[float]]:
        """Each row's reference length for the length filter (None: the filter is off)."""
        if self.max_length_ratio is None:
            return [None] * len(rows)
        out = []
        for r in rows:
            ref = r.get(self.reference_column) if self.reference_column else None
            out.append(self._counter.count(ref) if ref else self.reference_length)
        return out

    def too_long(self, trace: Optional[str], reference: Optional[float]) -> Optional[str]:
        """The length filter's rejection reason for ``trace``, or None (kept)."""
        from trace_inversion.scoring.lengths import length_verdict

        if self.max_length_ratio is None or trace is None:
            return None
        ok, why = length_verdict(self._counter.count(trace), reference, self.max_length_ratio, self._counter.short)
        return why if ok is False else None

    def accepted(self, verdict: Optional[bool]) -> bool:
        return verdict is True

    def rank(self, att: dict) -> int:
        """2: verified; 1: cannot verify (kept or rejected by policy, see ``status``);
        0: rejected. Rows below 2 are resampled (an unverifiable trace may still be
        replaced by a verified one) unless no sample can ever verify them."""
        if not att["trace"]:
            return 0
        if att["verdict"] is True:
            return 2
        return 1 if att["verdict"] is None else 0

    def status(self, att: dict) -> str:
        r = self.rank(att)
        if r == 2:
            return "verified"
        return "unverifiable" if r == 1 and self.unverifiable == "keep" else "rejected"

    def _verify_round(self, atts: list[dict], rows: list[dict], targets: list[tuple]) -> None:
        """Answer consistency, then each step-level verifier, on the round's samples
        that passed the filters; sets each attempt's verification, verdict and reason."""
        from trace_inversion.scoring.verifiers import Sample, combine

        live = [a for a in atts if a.pop("_passed")]
        for v in self._verifiers:
            todo = [a for a in live if all(x["verdict"] is not False for x in a["verification"])]
            if not todo:
                continue
            samples = [Sample(rows[a["_row"]]["problem"], a["trace"], rows[a["_row"]][self.answer_column],
                              targets[a["_row"]]) for a in todo]
            try:
                verdicts = v.verify(samples)
            except Exception as e:  # noqa: BLE001 - a verifier that breaks cannot verify; the row is not lost
                from trace_inversion.scoring.verifiers import Verdict

                verdicts = [Verdict(v.name, None, f"cannot verify: verifier failed: {type(e).__name__}: {e}"[:300])
                            for _ in todo]
            for a, vd in zip(todo, verdicts):
                a["verification"].append(vd.as_dict())
        for a in live:
            a["verdict"], a["reason"] = combine(a["verification"])

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        from trace_inversion.scoring.answer_matching import extract_final_answer
        from trace_inversion.scoring.lengths import cap_hit, output_length
        from trace_inversion.scoring.verifiers import Sample

        k = self.samples_per_round
        refs = self.reference_lengths(inputs)
        cap = self.length_cap() if self._counter.model_tokens else None
        targets = [extract_final_answer(r.get(self.answer_column)) if r.get(self.answer_column) else (None, "none")
                   for r in inputs]
        # rows some verifier can never judge: one sample, no resampling
        never = set()
        for i, row in enumerate(inputs):
            s = Sample(row["problem"], None, row.get(self.answer_column), targets[i])
            if any(v.applies(s) for v in self._verifiers):
                never.add(i)
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

            def failure(n, res):
                """With --retry-failed, a sample the filters or answer check rejected is requested once more."""
                verdict, _, trace = judge(res.response.get("answer"), res.response.get("finish_reason"),
                                          inputs[owners[n]][self.answer_column], targets[owners[n]])
                return verdict is False or self.too_long(trace, refs[owners[n]]) is not None

            results = self.call_model(convs, seeds, failure=failure)
            atts = []
            for i, seed, res in zip(owners, seeds, results):
                output = res.response.get("answer") if res.ok else None
                finish = res.response.get("finish_reason") if res.ok else None
                if res.ok:
                    passed, reason, trace = filter_output(output, finish)
                    why = self.too_long(trace, refs[i]) if passed else None
                    if why is not None:
                        passed, reason = False, why
                else:
                    passed, reason, trace = False, f"generation failed: {res.error}", None
                length = output_length(output, res.response if res.ok else None, self._counter)
                atts.append({"round": rnd, "seed": seed, "verdict": False if not passed else None, "reason": reason,
                             "trace": trace, "verification": [], "finish_reason": finish,
                             "cap_hit": None if output is None else cap_hit(output, finish, False, length, cap),
                             "length": length, "_passed": passed, "_row": i})
            self._verify_round(atts, inputs, targets)
            for att in atts:
                st = state[att.pop("_row")]
                st["attempts"].append(att)
                if st["best"] is None or self.rank(att) > self.rank(st["best"]):
                    st["best"] = att
            pending = [i for i in pending if self.rank(state[i]["best"]) < 2 and i not in never]
        out = []
        for i, row in enumerate(inputs):
            st = state[i]
            best = st["best"]
            # With no verified or unverifiable sample, report the last attempt's rejection.
            final = best if self.rank(best) > 0 else st["attempts"][-1]
            first = st["attempts"][0]
            step_run = next((v for v in final["verification"] if v["verifier"] != "answer"), None)
            status = self.status(final)
            out.append(dict(row, inverted_trace=final["trace"], inversion_verdict=final["verdict"],
                            inversion_reason=final["reason"], inversion_status=status,
                            inversion_accepted=status == "verified",
                            inversion_attempts=st["attempts"], verification=final["verification"],
                            step_verdict=step_run["verdict"] if step_run else None,
                            first_wrong_step=step_run["first_wrong_step"] if step_run else None,
                            target_final_answer=targets[i][0], target_answer_method=targets[i][1],
                            first_trace=first["trace"], first_verdict=first["verdict"],
                            length_unit=self._counter.unit, inverter_model=self.model_name))
        yield out
