"""Inversion with verified synthesis: the step, the pipeline, real tiny inverters."""

import json
import re

import polars as pl
import pytest

from trace_inversion.data.io import split_path

from trace_inversion.config import load_config
from trace_inversion.steps.inversion import InvertTraces, judge
from trace_inversion.models.project import ToyLLM
from trace_inversion.toy.world import ToyWorld, check_steps, parse_problem


def toy_rows(n=40, n_ops=5, seed=0):
    w = ToyWorld(seed=seed, n_ops=n_ops)
    out = []
    for p in w.problems(n):
        r = w.target_response(p)
        out.append({"id": p.id, "problem": p.text, "target_answer": r["answer"], "target_summary": r["summary"],
                    "target_trace": r["hidden_trace"]})
    return out


def step(tmp_path, **kw):
    s = InvertTraces(llm=ToyLLM(model="toy-inverter", world={"n_ops": 5, "inverter_error_rate": 0.3, "inverter_forces_answer": 0.0}),
                     cache_path=str(tmp_path / "c.sqlite"), **kw)
    s.load()
    return s


def test_judge_reasons():
    assert judge("start 3\nadd 4 -> 7", "stop", "\\boxed{7}") == (True, "consistent", "start 3\nadd 4 -> 7")
    assert judge("start 3\nadd 4 -> 8", "stop", "\\boxed{7}")[0] is False
    assert judge("<think>start 3", "stop", "\\boxed{7}")[:2] == (False, "truncated: no closing </think>")
    assert judge("x", "length", "7")[1] == "truncated: length cap hit"
    assert judge("   ", "stop", "7")[:2] == (False, "empty")
    assert judge("<think>add 1 -> 7</think>done", "stop", "7")[2] == "add 1 -> 7"
    assert judge("no numbers", "stop", "7")[0] is None


def test_verified_synthesis_resamples_until_consistent(tmp_path):
    rows = toy_rows()
    unverified = next(step(tmp_path, max_attempts=1).process(rows))
    first_bad = [r for r in unverified if r["first_verdict"] is False]
    assert first_bad, "the toy inverter must miss some answers at this error rate"
    assert all(not r["inversion_accepted"] and r["inversion_reason"].startswith("inconsistent") for r in first_bad)
    verified = next(step(tmp_path, max_attempts=6).process(rows))
    assert sum(r["inversion_accepted"] for r in verified) > sum(r["inversion_accepted"] for r in unverified)
    for r in verified:
        atts = r["inversion_attempts"]
        assert atts[0]["seed"] == 0 and [a["round"] for a in atts] == list(range(len(atts)))
        assert r["first_trace"] == atts[0]["trace"]  # the first sample is the same request, replayed
        if r["inversion_accepted"]:
            assert r["inversion_verdict"] is True and atts[-1]["verdict"] is True
            assert all(a["verdict"] is False for a in atts[:-1])  # resampled only while inconsistent
        else:
            assert len(atts) == 6 and all(a["verdict"] is False for a in atts)


def test_unextractable_target_gets_one_verdict_and_no_resampling(tmp_path):
    rows = [{"id": "x", "problem": "Evaluate left to right modulo 10: 3 + 4", "target_answer": "no answer here",
             "target_summary": ""}]
    keep = next(step(tmp_path, unverifiable="keep", max_attempts=4).process(rows))[0]
    assert keep["inversion_status"] == "unverifiable" and not keep["inversion_accepted"]
    assert keep["inversion_verdict"] is None and keep["inversion_reason"] == "cannot verify: no answer in the target's response"
    assert len(keep["inversion_attempts"]) == 1  # no sample could ever verify: no wasted rounds
    assert (keep["target_final_answer"], keep["target_answer_method"]) == (None, "none")
    assert keep["verification"] == [{"verifier": "answer", "verdict": None, "first_wrong_step": None,
                                     "reason": "cannot verify: no answer in the target's response"}]
    rej = next(step(tmp_path, unverifiable="reject", max_attempts=2).process(rows))[0]
    assert rej["inversion_status"] == "rejected" and not rej["inversion_accepted"]
    assert rej["inversion_reason"].startswith("cannot verify") and len(rej["inversion_attempts"]) == 1
    ok = next(step(tmp_path).process(toy_rows(1)))[0]
    assert (ok["target_final_answer"], ok["target_answer_method"]) == (ok["target_answer"][-3], "boxed")


def canned_step(tmp_path, outputs: dict, **kw):
    """An InvertTraces whose inverter answers ``outputs[(row id, seed)]`` (no model)."""
    from trace_inversion.models.clients import CallResult

    s = step(tmp_path, **kw)
    calls = []

    def call_model(convs, seeds, failure=None):
        ids = [next(i for i in outputs_ids if i in c[-1]["content"]) for c in convs]
        calls.extend(zip(ids, seeds))
        out = [outputs[(i, sd)] for i, sd in zip(ids, seeds)]  # text, or (text, finish reason)
        return [CallResult(True, {"answer": o, "finish_reason": "stop"} if isinstance(o, str) else
                           {"answer": o[0], "finish_reason": o[1]}) for o in out]

    outputs_ids = {i for i, _ in outputs}
    object.__setattr__(s, "call_model", call_model)
    return s, calls


def test_unverifiable_traces_are_resampled_and_never_verified(tmp_path):
    rows = [{"id": "a", "problem": "Evaluate left to right modulo 10: 3 + 4 * 2", "target_answer": "\\boxed{4}",
             "target_summary": ""},
            {"id": "b", "problem": "Evaluate left to right modulo 10: 3 + 5 * 2", "target_answer": "\\boxed{6}",
             "target_summary": ""}]
    outputs = {("3 + 4 * 2", 0): "I am not sure what to write.", ("3 + 4 * 2", 1): "3+4->7\n7*2->4",
               ("3 + 5 * 2", 0): "no idea", ("3 + 5 * 2", 1): "still no idea", ("3 + 5 * 2", 2): "nothing"}
    s, calls = canned_step(tmp_path, outputs, max_attempts=3)
    a, b = next(s.process(rows))
    assert a["inversion_status"] == "verified" and a["inverted_trace"] == "3+4->7\n7*2->4"
    assert [x["verdict"] for x in a["inversion_attempts"]] == [None, True]  # resampled while unverifiable
    assert b["inversion_status"] == "unverifiable" and b["inversion_verdict"] is None and not b["inversion_accepted"]
    assert b["inversion_reason"] == "cannot verify: no answer found in the trace" and len(b["inversion_attempts"]) == 3
    assert len(calls) == 5


def test_every_draw_records_its_finish_reason_cap_hit_and_length(tmp_path):
    rows = [{"id": "a", "problem": "Evaluate left to right modulo 10: 3 + 4 * 2", "target_answer": "\\boxed{4}",
             "target_summary": ""}]
    cut = "start 3\nadd 4 -> 7\nmul 2 -> 4\nwait, let me check that again. start 3\nadd 4"
    outputs = {("3 + 4 * 2", 0): (cut, "length"), ("3 + 4 * 2", 1): ("<think>start 3\nadd 4 -> 7", None),
               ("3 + 4 * 2", 2): ("start 3\nadd 4 -> 7\nmul 2 -> 4", "stop")}
    s, _ = canned_step(tmp_path, outputs, max_attempts=3)
    r = next(s.process(rows))[0]
    atts = r["inversion_attempts"]
    assert [(a["finish_reason"], a["cap_hit"]) for a in atts] == [("length", True), (None, True), ("stop", False)]
    assert [a["length"] for a in atts] == [len(cut.split()), 6, 10]  # word tokens: the toy inverter has no tokenizer
    assert r["length_unit"] == "word tokens (whitespace split)" and r["inversion_status"] == "verified"
    assert atts[0]["reason"] == "truncated: length cap hit" and atts[0]["trace"] is None


def test_length_filter_rejects_with_its_reason_and_resamples(tmp_path):
    true = "start 3\nadd 4 -> 7\nmul 2 -> 4"  # 10 word tokens
    rambling = "start 3\nadd 4 -> 7\nhmm, let me double check the addition: 3 plus 4 is 7, yes.\nmul 2 -> 4"
    rows = [{"id": "a", "problem": "Evaluate left to right modulo 10: 3 + 4 * 2", "target_answer": "\\boxed{4}",
             "target_summary": "", "target_trace": true},
            {"id": "b", "problem": "Evaluate left to right modulo 10: 3 + 5 * 2", "target_answer": "\\boxed{6}",
             "target_summary": ""}]  # no true trace: the reference length given
    outputs = {("3 + 4 * 2", 0): rambling, ("3 + 4 * 2", 1): true,
               ("3 + 5 * 2", 0): "start 3\nadd 5 -> 8\nmul 2 -> 6 " + "ok " * 30, ("3 + 5 * 2", 1): "3+5->8\n8*2->6"}
    s, calls = canned_step(tmp_path, outputs, max_attempts=3, max_length_ratio=1.5, reference_column="target_trace",
                           reference_length=10)
    a, b = next(s.process(rows))
    assert a["inversion_status"] == "verified" and a["inverted_trace"] == true
    first = a["inversion_attempts"][0]
    assert first["verdict"] is False
    assert first["reason"] == f"too long: {len(rambling.split())} words > 1.5 x reference 10"
    assert first["verification"] == []  # rejected before any verifier ran
    assert b["inversion_status"] == "verified"
    assert b["inversion_attempts"][0]["reason"] == "too long: 40 words > 1.5 x reference 10"
    assert len(calls) == 4
    # off by default: the rambling trace is verified at once
    s, calls = canned_step(tmp_path, outputs, max_attempts=3)
    assert next(s.process(rows))[0]["inverted_trace"] == rambling and len(calls) == 2
    # a row that never fits is rejected with the filter's reason
    s, _ = canned_step(tmp_path, {("3 + 4 * 2", sd): rambling for sd in range(2)}, max_attempts=2,
                       max_length_ratio=1.5, reference_column="target_trace")
    r = next(s.process(rows[:1]))[0]
    assert r["inversion_status"] == "rejected" and r["inversion_reason"].startswith("too long: ")


def test_length_filter_is_configured_on_the_invert_section():
    from trace_inversion.config import ConfigError

    assert load_config(None, {}).invert.max_length_ratio is None
    assert load_config(None, {"invert": {"max_length_ratio": 2.5}}).invert.max_length_ratio == 2.5
    with pytest.raises((ConfigError, ValueError)):
        load_config(None, {"invert": {"max_length_ratio": 0}})


def test_step_verifier_rejects_and_resamples(tmp_path):
    rows = toy_rows(30)
    s = InvertTraces(llm=ToyLLM(model="toy-inverter", world={"n_ops": 5, "inverter_error_rate": 0.3, "inverter_forces_answer": 1.0}),
                     cache_path=str(tmp_path / "c.sqlite"),
                     verifiers=["answer", "steps"], max_attempts=4)
    s.load()
    out = next(s.process(rows))
    answer_only = next(step(tmp_path).process(rows))
    by_steps = [r for r in out if any(a["reason"].startswith("steps: ") for a in r["inversion_attempts"])]
    assert by_steps, "the inverter argues to the answer: only the step checker sees its wrong steps"
    for r in out:
        atts = r["inversion_attempts"]
        assert [v["verifier"] for v in r["verification"]] in (["answer", "steps"], ["answer"])
        if r["inversion_status"] == "verified":
            assert check_steps(parse_problem(r["problem"]), r["inverted_trace"])["all_correct"]
            assert r["step_verdict"] is True and r["first_wrong_step"] is None
            assert r["verification"][1]["reason"] == "all 5 steps right"
            assert r["inversion_reason"] == "consistent; steps: all 5 steps right"
            assert all(a["verdict"] is False for a in atts[:-1])
        else:
            assert r["inversion_status"] == "rejected" and len(atts) == 4
            assert r["step_verdict"] is False and isinstance(r["first_wrong_step"], int)
            assert r["inversion_reason"].startswith("steps: ")
            wrong = check_steps(parse_problem(r["problem"]), r["inverted_trace"])["first_error"]
            assert r["first_wrong_step"] == wrong  # one step per line
    for a in (a for r in by_steps for a in r["inversion_attempts"] if a["reason"].startswith("steps: ")):
        assert [v["verdict"] for v in a["verification"]] == [True, False]  # answer-consistent, steps wrong
    # answer consistency alone keeps traces with wrong steps; the step verifier does not
    assert any(not check_steps(parse_problem(r["problem"]), r["inverted_trace"])["all_correct"]
               for r in answer_only if r["inversion_accepted"])
    assert sum(r["inversion_accepted"] for r in out) > 0


def test_step_verifier_that_never_applies_is_not_resampled(tmp_path):
    rows = [{"id": "q", "problem": "What is 2 + 2?", "target_answer": "\\boxed{4}", "target_summary": ""}]
    s, calls = canned_step(tmp_path, {("What is 2 + 2?", 0): "2 + 2 = 4, so \\boxed{4}"},
                           verifiers=["answer", "steps"], max_attempts=3)
    object.__setattr__(s, "messages", lambda row: [{"role": "user", "content": row["problem"]}])
    r = next(s.process(rows))[0]
    assert r["inversion_status"] == "unverifiable" and len(calls) == 1
    assert r["inversion_reason"] == "steps: cannot verify: not a toy-world problem"
    assert [v["verdict"] for v in r["verification"]] == [True, None] and r["step_verdict"] is None


@pytest.mark.parametrize("judge_as", ["config", "distilabel_llm"])
def test_judge_verifier_in_the_step(judge_as, toy_server, tmp_path):
    """The LLM judge (the toy server's, which reads steps exactly) rejects and resamples
    answer-consistent traces with a wrong step, like the exact checker would; the judge
    given as a ModelConfig or as distilabel's own OpenAILLM."""
    from distilabel.models.llms import OpenAILLM

    srv = toy_server()
    rows = toy_rows(12)
    judge = ({"judge_model": {"backend": "openai-chat", "model": "toy-judge", "base_url": srv.base_url}}
             if judge_as == "config" else
             {"judge_llm": OpenAILLM(model="toy-judge", base_url=srv.base_url, api_key="EMPTY",
                                     generation_kwargs={"temperature": 0.0, "max_new_tokens": 64})})
    s = InvertTraces(llm=ToyLLM(model="toy-inverter", world={"n_ops": 5, "inverter_error_rate": 0.3, "inverter_forces_answer": 1.0}),
                     cache_path=str(tmp_path / "c.sqlite"),
                     verifiers=["answer", "judge"], max_attempts=3, **judge)
    s.load()
    out = next(s.process(rows))
    rejected_by_judge = [a for r in out for a in r["inversion_attempts"] if a["reason"].startswith("judge: ")]
    assert rejected_by_judge
    for a in rejected_by_judge:
        p = parse_problem(next(r["problem"] for r in out if a in r["inversion_attempts"]))
        assert a["verification"][1]["first_wrong_step"] == check_steps(p, a["trace"])["first_error"]
    for r in out:
        assert [v["verifier"] for v in r["verification"]] == ["answer", "judge"]
        if r["inversion_accepted"]:
            assert check_steps(parse_problem(r["problem"]), r["inverted_trace"])["all_correct"]
            assert r["step_verdict"] is True
        else:
            assert r["step_verdict"] is False and r["first_wrong_step"] is not None
    n_judged = sum(len(r["inversion_attempts"]) for r in out)
    assert srv.stats()["total"] == n_judged  # one judge request per sample
    s.unload()
    timings = json.loads((tmp_path / "timings" / f"{s.name}.json").read_text())
    assert timings["judge"]["requests"] == n_judged


def test_generation_failures_keep_their_reason(toy_server, tmp_path):
    srv = toy_server(p500=1.0)
    s = InvertTraces(model={"backend": "openai-chat", "model": "m", "base_url": srv.base_url, "max_retries": 0},
                     cache_path=str(tmp_path / "c.sqlite"), max_attempts=2)
    s.load()
    out = next(s.process(toy_rows(3)))
    assert all(not r["inversion_accepted"] and r["inversion_reason"].startswith("generation failed") for r in out)


def _pipeline_cfg(tmp_path, inverter: dict, n=60, **invert):
    return load_config(None, {"data": {"toy": {"n_train": n, "n_ops": 5, "inverter_error_rate": 0.3,
                                               "inverter_forces_answer": 0.3}},
                              "output": {"dir": str(tmp_path / "out")}, "models": {"inverter": inverter},
                              "invert": invert})


@pytest.mark.slow
def test_invert_pipeline_on_the_toy_world(tmp_path):
    import datasets

    from trace_inversion.pipelines.invert import run_invert
    from trace_inversion.pipelines.query_target import run_query_target

    cfg = _pipeline_cfg(tmp_path, {"backend": "toy", "model": "toy-inverter"}, max_attempts=4)
    run_query_target(cfg)
    stats = run_invert(cfg)
    folder = tmp_path / "out" / "inversion"
    kept = datasets.load_dataset(str(folder), "inverted", split="train")
    rejected = pl.read_parquet(split_path(folder, "rejected"))
    assert kept.num_rows + rejected.height == 60 == stats["rows_in"] and stats["unverifiable"] == 0
    assert stats["first_sample"]["inconsistent"] > 0 and stats["kept"] > stats["first_sample"]["consistent"]
    assert all(json.loads(a)[-1]["verdict"] is True for a in kept["inversion_attempts"])
    assert stats["overlap_kept"]["n"] == kept.num_rows and 0 < stats["overlap_kept"]["rougeL"] <= 100
    assert 0 <= stats["overlap_kept"]["exact_match"] <= 100 and stats["overlap_kept"]["length_unit"].startswith("word")
    assert stats["overlap_unfiltered"]["n"] == 60
    # lengths per draw, in word tokens (the toy inverter has no tokenizer), and vs the true traces
    lengths = stats["lengths"]
    n_draws = sum(len(json.loads(a)) for a in kept["inversion_attempts"]) + sum(
        len(json.loads(a)) for a in rejected["inversion_attempts"])
    assert lengths["inverter_first_draws"]["n"] == 60 and lengths["inverter_all_draws"]["n"] == n_draws
    assert lengths["inverter_kept"]["n"] == kept.num_rows and lengths["reference"]["n"] == 60
    for st in lengths.values():
        assert st["unit"] == "word tokens (whitespace split)" and st["median"] <= st["p90"] <= st["max"]
    assert lengths["inverter_first_draws"]["cap_hit_rate"] == 0.0  # the toy inverter is never cut
    ratio = stats["length_ratio"]
    assert ratio["reference"] == "true traces (column target_trace)" and ratio["first_draws"]["n"] == 60
    assert 0 < ratio["kept"]["median_ratio"] < 10 and ratio["kept"]["ratio_of_medians"] > 0
    assert json.loads((folder / "stats.json").read_text())["lengths"] == lengths
    card = (folder / "README.md").read_text()
    assert "## Lengths" in card and "| inverter first draws | first draw of each row (whole output) | 60 |" in card
    assert "Inverted vs reference trace length, reference: true traces (column target_trace)" in card
    assert 0 <= stats["toy_all_steps_correct"]["kept"] <= 1
    assert sum(stats["rejected_reasons"].values()) == rejected.height
    unf = pl.read_parquet(split_path(folder, "unfiltered"))
    assert unf.height == 60
    # rerun: every sample replays from the request cache
    from trace_inversion.models.cache import RequestCache

    before = len(RequestCache(cfg.resolved_cache_path))
    run_invert(cfg)
    assert len(RequestCache(cfg.resolved_cache_path)) == before


@pytest.mark.slow
def test_invert_without_true_traces_measures_against_the_surrogate_and_filters_by_length(tmp_path):
    """No true traces: lengths are compared with the surrogate's traces of inverter_data,
    and the length filter's reference is their median."""
    from trace_inversion.data.loading import load_rows
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
    from trace_inversion.pipelines.invert import run_invert
    from trace_inversion.pipelines.query_target import run_query_target

    cfg = _pipeline_cfg(tmp_path, {"backend": "toy", "model": "toy-inverter"}, n=20, max_attempts=2,
                        ground_truth_column=None)
    run_query_target(cfg)
    surrogate = run_build_inverter_data(cfg, load_rows(cfg.data, "attacker"))["lengths"]["surrogate_traces"]
    stats = run_invert(cfg)
    ratio = stats["length_ratio"]
    assert ratio["reference"].startswith("surrogate traces") and ratio["first_draws"]["median_ratio"] is None
    assert ratio["first_draws"]["ratio_of_medians"] == pytest.approx(
        stats["lengths"]["inverter_first_draws"]["median"] / surrogate["median"], abs=1e-3)
    assert stats["lengths"]["reference"]["median"] == surrogate["median"] and "overlap_kept" not in stats
    # a filter tighter than every trace: each sample is rejected with its reason, and resampled
    cfg = _pipeline_cfg(tmp_path, {"backend": "toy", "model": "toy-inverter"}, n=20, max_attempts=2,
                        ground_truth_column=None, max_length_ratio=0.1)
    stats = run_invert(cfg)
    assert stats["rejected"] == 20 and stats["max_length_ratio"] == 0.1
    ref = surrogate["median"]
    assert all(re.fullmatch(rf"too long: \d+ words > 0\.1 x reference {ref:g}", k) for k in stats["rejected_reasons"])
    assert stats["lengths"]["inverter_all_draws"]["n"] == 40  # every row resampled once
    card = (tmp_path / "out" / "inversion" / "README.md").read_text()
    assert "too long: " in card and "## Lengths" in card


def test_conditions_split_verified_from_unverifiable(tmp_path):
    from trace_inversion.data.io import write_split
    from trace_inversion.pipelines.student_data import DERIVED_CONDITIONS, join_sources
    from trace_inversion.steps.student_format import FormatStudentSFT

    write_split(tmp_path / "tq", "target", [{"id": str(i), "problem": f"p{i}", "target_answer": "\\boxed{1}",
                                             "target_summary": "s"} for i in range(3)])
    write_split(tmp_path / "inv", "inverted", [{"id": "0", "inverted_trace": "verified"}])
    write_split(tmp_path / "inv", "unfiltered", [{"id": str(i), "first_trace": "first"} for i in range(3)])
    old = {r["id"]: r for r in join_sources(tmp_path / "tq", None, tmp_path / "inv")}  # a folder from before the split
    assert old["1"]["kept_trace"] is None
    write_split(tmp_path / "inv", "unverifiable", [{"id": "1", "inverted_trace": "unchecked",
                                                    "inversion_reason": "cannot verify: no answer in the target's response"}])
    rows = {r["id"]: r for r in join_sources(tmp_path / "tq", None, tmp_path / "inv")}
    assert rows["0"]["inverted_trace"] == rows["0"]["kept_trace"] == "verified"
    assert rows["1"]["inverted_trace"] is None and rows["1"]["kept_trace"] == "unchecked"
    for name, expect in (("inverted_verified", {"0"}), ("inverted_with_unverifiable", {"0", "1"}),
                         ("inverted_unfiltered", {"0", "1", "2"})):
        base, col = DERIVED_CONDITIONS.get(name, (name, None))
        st = FormatStudentSFT(condition=base, reasoning_column=col)
        st.load()
        assert {r["id"] for r in next(st.process(list(rows.values()))) if r["messages"]} == expect, name


def tiny_prm() -> "Path":
    """The tiny PRM-shaped model, built in a subprocess (no torch in the test process)."""
    import subprocess
    import sys

    from conftest import MODEL_CACHE

    path = MODEL_CACHE / "tiny-prm-v1"  # the folder tests/scoring/test_verifiers.py builds too
    subprocess.run([sys.executable, "-c", "import sys; from trace_inversion.scoring.verifiers import build_tiny_prm; "
                    "build_tiny_prm(sys.argv[1])", str(path)], check=True, timeout=300, capture_output=True)
    return path


@pytest.mark.slow
def test_invert_pipeline_with_every_verifier(toy_server, tmp_path):
    """answer + steps + judge (toy server) + prm (tiny model, in the step's worker), a row
    whose target answer cannot be extracted, the card, and the student conditions."""
    import datasets

    from trace_inversion.pipelines.invert import load_inversion_rows, run_invert
    from trace_inversion.pipelines.query_target import run_query_target
    from trace_inversion.pipelines.student_data import run_student_data

    srv = toy_server()
    cfg = load_config(None, {
        "data": {"toy": {"n_train": 30, "n_ops": 5, "inverter_error_rate": 0.3, "inverter_forces_answer": 1.0}},
        "output": {"dir": str(tmp_path / "out")},
        "models": {"inverter": {"backend": "toy", "model": "toy-inverter"},
                   "judge": {"backend": "openai-chat", "model": "toy-judge", "base_url": srv.base_url}},
        "invert": {"max_attempts": 3, "verifiers": ["answer", "steps", "judge", "prm"], "prm_model": str(tiny_prm()),
                   "prm_threshold": 0.0, "unverifiable_to_students": True}})
    run_query_target(cfg)
    rows = load_inversion_rows(cfg)
    # row 0: no answer to extract, and a summary showing every step (the toy inverter copies it: steps right)
    p0 = parse_problem(rows[0]["problem"])
    rows[0]["target_answer"] = "I am not sure."
    rows[0]["target_summary"] = ToyWorld(summary_every=1).summary_from_values(p0.values())
    stats = run_invert(cfg, rows)
    folder = tmp_path / "out" / "inversion"
    kept = datasets.load_dataset(str(folder), "inverted", split="train")  # the card and the struct column load
    unv = pl.read_parquet(split_path(folder, "unverifiable")).to_dicts()
    rej = pl.read_parquet(split_path(folder, "rejected")).to_dicts()
    assert kept.num_rows + len(unv) + len(rej) == 30 and kept.num_rows > 0 and rej
    assert [r["id"] for r in unv] == [rows[0]["id"]] and unv[0]["n_attempts"] == 1
    assert unv[0]["inversion_reason"] == "cannot verify: no answer in the target's response"
    assert [v["verdict"] for v in unv[0]["verification"]] == [None, True, True, True]
    assert rows[0]["id"] not in kept["id"]
    for r in kept:
        assert [v["verifier"] for v in r["verification"]] == ["answer", "steps", "judge", "prm"]
        assert all(v["verdict"] is True for v in r["verification"]) and r["step_verdict"] is True
        assert check_steps(parse_problem(r["problem"]), r["inverted_trace"])["all_correct"]
        assert r["target_answer_method"] == "boxed"
    for r in rej:
        assert r["inversion_reason"].startswith("steps: step ") and r["n_attempts"] == 3
        assert r["step_verdict"] is False and r["first_wrong_step"] is not None
        assert [v["verifier"] for v in r["verification"]] == ["answer", "steps"]  # no judge call for it
    v = stats["verification"]
    assert v["final"]["prm"]["pass"] == kept.num_rows + 1 and v["all_attempts"]["steps"]["fail"] >= len(rej) * 3
    assert v["final"]["answer"]["reasons"]["cannot verify: no answer in the target's response"] == 1
    assert stats["status"] == {"verified": kept.num_rows, "unverifiable": 1, "rejected": len(rej)}
    assert stats["target_answer_not_found"] == 1 and stats["unverifiable_reasons"] == {
        "cannot verify: no answer in the target's response": 1}
    assert stats["inverter_timings"]["judge"]["requests"] == srv.stats()["total"] > 0
    card = (folder / "README.md").read_text()
    assert "## Verification" in card and "config_name: unverifiable" in card and "step N wrong: …" in card
    sd = run_student_data(cfg, tmp_path / "out" / "target_query", None, folder,
                          ["inverted_unfiltered", "inverted_verified"])
    assert sd["conditions"]["inverted_verified"] == kept.num_rows
    assert sd["conditions"]["inverted_with_unverifiable"] == kept.num_rows + 1


@pytest.fixture(scope="session")
def trained_inverter(tiny_lm_dir, tmp_path_factory):
    """A tiny inverter trained for real with the tiny recipe on toy surrogate data."""
    from trace_inversion.data.loading import load_rows
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
    from trace_inversion.training.sft import run_sft

    d = tmp_path_factory.mktemp("inverter")
    cfg = load_config(None, {"data": {"toy": {"n_train": 1024, "n_ops": 5}}, "output": {"dir": str(d / "out")}})
    run_build_inverter_data(cfg, load_rows(cfg.data))
    res = run_sft("tiny/inverter.yaml", {"model_name_or_path": str(tiny_lm_dir),
                                         "dataset_name": str(d / "out" / "inverter_data"),
                                         "output_dir": str(d / "model"), "max_steps": 150}, d / "run")
    losses = [l["loss"] for l in res["losses"] if "loss" in l]
    assert losses[-1] < losses[0] / 3
    return d / "model"


def _run_with(tmp_path, inverter: dict, n=24):
    from trace_inversion.pipelines.invert import run_invert
    from trace_inversion.pipelines.query_target import run_query_target

    cfg = _pipeline_cfg(tmp_path, inverter, n=n, max_attempts=2, max_model_len=512)
    run_query_target(cfg)
    stats = run_invert(cfg)
    folder = tmp_path / "out" / "inversion"
    kept = pl.read_parquet(split_path(folder, "inverted"))
    unverifiable = pl.read_parquet(split_path(folder, "unverifiable"))
    rejected = pl.read_parquet(split_path(folder, "rejected"))
    assert kept.height + unverifiable.height + rejected.height == n
    assert all(v is True for v in kept["inversion_verdict"])  # `inverted` holds verified traces only
    return stats, kept


@pytest.mark.slow
def test_invert_with_trained_tiny_inverter_transformers(trained_inverter, tmp_path):
    stats, kept = _run_with(tmp_path, {"backend": "transformers", "model": str(trained_inverter),
                                       "sampling": {"max_new_tokens": 48, "temperature": 0.7, "top_k": 50}})
    first = stats["first_sample"]
    assert first["consistent"] + first["inconsistent"] > 0  # it learned the trace format: verdicts are computable
    assert kept.height > 0 and all(re.match(r"\d+[+*-]\d+->\d+", t) for t in kept["inverted_trace"])
    # a local model: lengths in its own tokens, cap hits from its finish reasons (cap: 48 new tokens)
    unit = f"tokens ({trained_inverter.name} tokenizer)"
    draws = stats["lengths"]["inverter_all_draws"]
    assert draws["unit"] == stats["length_ratio"]["unit"] == unit and draws["cap"] == 48 and draws["cap_unknown"] == 0
    atts = [a for t in pl.read_parquet(split_path(tmp_path / "out" / "inversion", "rejected"))["inversion_attempts"]
            .to_list() + kept["inversion_attempts"].to_list() for a in json.loads(t)]
    assert draws["cap_hits"] == sum(a["finish_reason"] == "length" for a in atts)
    assert all(a["reason"] == "truncated: length cap hit" for a in atts if a["cap_hit"])
    assert stats["length_ratio"]["kept"]["median_ratio"] > 0


@pytest.mark.slow
def test_invert_with_trained_tiny_inverter_vllm(trained_inverter, tmp_path):
    stats, kept = _run_with(tmp_path, {"backend": "vllm", "model": str(trained_inverter),
                                       "sampling": {"max_new_tokens": 48, "temperature": 0.7, "top_k": 50}})
    first = stats["first_sample"]
    assert first["consistent"] + first["inconsistent"] > 0
    assert kept.height > 0 and all(re.match(r"\d+[+*-]\d+->\d+", t) for t in kept["inverted_trace"])
