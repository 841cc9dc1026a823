"""The demo report's lengths table: every generation of every seed, with its unit."""

import json

from trace_inversion.pipelines.demo.report import lengths_lines, render_report, seed_lengths

WORDS = "word tokens (whitespace split)"


def _st(n, median, p90, rate, of, unit=WORDS, cap=8192):
    return {"n": n, "unit": unit, "median": median, "p90": p90, "mean": median, "max": p90, "cap": cap,
            "cap_hits": None if rate is None else round(rate * n), "cap_hit_rate": rate,
            "cap_unknown": n if rate is None else 0, "of": of}


def _run(seed, inv_dir):
    inversion = {
        "rows_in": 10, "kept": 8, "rejected": 2, "first_sample": {"consistent": 7}, "output_dir": str(inv_dir),
        "toy_all_steps_correct": {"kept": 0.5, "unfiltered": 0.4}, "overlap_kept": {"rougeL": 40.0, "bleu": 10.0},
        "lengths": {"inverter_first_draws": _st(10, 812, 2048, 0.3, "first draw of each row (whole output)",
                                                "tokens (tiny tokenizer)", 2048),
                    "inverter_kept": _st(8, 640, 900, None, "kept (verified) traces", "tokens (tiny tokenizer)", None)},
        "length_ratio": {"reference": "true traces (column target_trace)", "unit": "tokens (tiny tokenizer)",
                         "first_draws": {"n": 10, "median_ratio": 2.4, "p90_ratio": 3.1, "ratio_of_medians": 2.2},
                         "kept": {"n": 8, "median_ratio": 2.1, "p90_ratio": 2.9, "ratio_of_medians": 2.0}}}
    return {"seed": seed, "accuracy": {"answer_only": 0.2}, "inversion": inversion, "releases": {}}


def test_lengths_table_per_seed_reads_the_inverter_data_stats_beside_the_inversion(tmp_path):
    (tmp_path / "inverter_data").mkdir()
    (tmp_path / "inverter_data" / "stats.json").write_text(json.dumps({"lengths": {
        "surrogate": _st(10, 120, 300, 0.1, "whole output (trace + answer)"),
        "compressor": _st(10, 30, 45, 0.0, "summary")}}))
    run = _run(0, tmp_path / "inversion")
    assert list(seed_lengths(run)) == ["surrogate", "compressor", "inverter_first_draws", "inverter_kept"]
    lines = lengths_lines([run])
    assert ("| 0 | surrogate | whole output (trace + answer) | word tokens (whitespace split) | 10 | 120 | 300 "
            "| 1 (10.0%) |") in lines
    assert ("| 0 | inverter first draws | first draw of each row (whole output) | tokens (tiny tokenizer) | 10 | 812 | "
            "2048 | 3 (30.0%) |") in lines
    assert "| 0 | inverter kept | kept (verified) traces | tokens (tiny tokenizer) | 8 | 640 | 900 | — |" in lines
    assert "| 0 | true traces (column target_trace) | 2.4 | 2.1 | 2 |" in lines
    report = render_report([run], {"n_ops": 3, "n_train": 10, "n_test": 5, "layers": 2, "student_steps": 1,
                                   "inverter_steps": 1}, 60.0)
    assert "## Lengths and length caps" in report and report.index("## Lengths") < report.index("## Releases")


def test_a_seed_without_lengths_adds_no_rows(tmp_path):
    run = _run(1, tmp_path / "inversion")
    del run["inversion"]["lengths"], run["inversion"]["length_ratio"]
    assert seed_lengths(run) == {}
    assert not [ln for ln in lengths_lines([run]) if ln.startswith("| 1 ")]


def _acc_run(seed, **acc):
    return {"seed": seed, "accuracy": acc, "releases": {}, "seconds": 60.0}


def test_claim_verdicts_against_the_spread_across_seeds():
    """A difference no larger than the sd of the per-seed differences is "within noise";
    else supported or not supported by its sign, whichever way it falls."""
    from trace_inversion.pipelines.demo.report import claim_verdicts

    runs = [_acc_run(0, inverted_unfiltered=0.60, summary_answer=0.20, surrogate_traces=0.70, inverted_verified=0.62),
            _acc_run(1, inverted_unfiltered=0.50, summary_answer=0.22, surrogate_traces=0.65, inverted_verified=0.48),
            _acc_run(2, inverted_unfiltered=0.55, summary_answer=0.18, surrogate_traces=0.75, inverted_verified=0.57)]
    v = {x["claim"]: x for x in claim_verdicts(runs, 300)}
    assert v["inverted > summary + answer"]["verdict"] == "supported"
    assert v["inverted > summary + answer"]["per_seed"] == [0.4, 0.28, 0.37]
    assert v["inverted > surrogate traces"]["verdict"] == "not supported"  # the reverse holds
    assert v["answer-verified >= unfiltered"]["verdict"] == "within noise"  # +2, -2, +2: sd 2.3 > mean 0.7
    assert v["step-verified >= unfiltered"]["verdict"] == "not measured"
    assert "3 seeds" in v["inverted > surrogate traces"]["noise_is"]


def test_one_seed_uses_the_binomial_standard_error_and_says_so():
    from trace_inversion.pipelines.demo.report import claim_verdicts

    v = claim_verdicts([_acc_run(0, inverted_unfiltered=0.52, summary_answer=0.50)], 300)[0]
    assert v["verdict"] == "within noise" and abs(v["noise"] - 0.0408) < 1e-3  # sqrt((.52*.48+.5*.5)/300)
    assert "one seed" in v["noise_is"]
    v = claim_verdicts([_acc_run(0, inverted_unfiltered=0.70, summary_answer=0.50)], 300)[0]
    assert v["verdict"] == "supported"


def test_report_states_the_world_the_claims_and_the_step_correctness():
    from trace_inversion.pipelines.demo.report import render_report
    from trace_inversion.pipelines.demo.run import DEMO_WORLD

    world = dict(DEMO_WORLD, seed=0, n_ops=5, modulus=10, ops="+-*")
    runs = [dict(_acc_run(s, answer_only=0.2, summary_answer=0.2, surrogate_traces=0.4, inverted_unfiltered=0.5,
                          inverted_verified=0.5, inverted_step_verified=0.6, target_traces=1.0),
                 world=world, matched_rows=900, step_correct={"surrogate_traces": 0.3, "inverted_unfiltered": 0.6,
                                                              "inverted_step_verified": 1.0, "target_traces": 1.0})
            for s in (0, 1)]
    rep = render_report(runs, {"n_ops": 5, "n_train": 1000, "n_test": 300, "layers": 3, "student_steps": 500,
                               "inverter_steps": 1000}, 600.0)
    assert "| the target's summary reveals | 2, 4 (style 'gives') |" in rep
    assert "| hidden from the attacker | 1, 3 |" in rep
    assert "| the surrogate can err on (systematic, rate 0.2) | steps 1-5 |" in rep
    assert "| the attacker's compressor reveals | 1, 2, 3, 4, 5 (style 'gives', each value left out with probability 0.5) |" in rep
    assert "| inverted (step-verified) | 60.0% | 60.0% | 60.0% | 0.0 |" in rep
    assert "| step-verified >= unfiltered | **within noise** | +10.0 | 0.0 |" not in rep  # 0 sd: +10 beats it
    assert "| step-verified >= unfiltered | **supported** | +10.0 | 0.0 |" in rep
    assert "| surrogate traces | 30.0% | 30.0% |" in rep and "seed 0: 900" in rep


def test_the_report_names_the_batches_and_students_queue_longest_first(tmp_path):
    """The batch sizes the demo trains with are in the report's first paragraph (absent:
    the recipes' own); the student trainings are queued longest rows first (traces, then
    summary + answer, then the answer alone), so the queue's two slots finish together."""
    from trace_inversion.pipelines.demo.report import DEMO_CONDITIONS
    from trace_inversion.pipelines.demo.run import DEMO, TRAIN_ORDER

    size = {"n_ops": 3, "n_train": 10, "n_test": 5, "layers": 2, "student_steps": 7, "inverter_steps": 9}
    run = _run(0, tmp_path / "inversion")
    rep = render_report([run], dict(size, student_batch=16, inverter_batch=32), 60.0)
    assert "trained from scratch for 7 steps of batch 16 with `trl sft`" in rep
    assert "tiny inverter 9 steps of batch 32;" in rep
    rep = render_report([run], size, 60.0)
    assert "for 7 steps with `trl sft`" in rep and "tiny inverter 9 steps;" in rep
    assert DEMO["student_batch"] and DEMO["inverter_batch"]
    assert sorted(TRAIN_ORDER) == sorted(DEMO_CONDITIONS)
    assert TRAIN_ORDER[-2:] == ["summary_answer", "answer_only"]
