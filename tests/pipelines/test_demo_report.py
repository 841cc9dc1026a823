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
