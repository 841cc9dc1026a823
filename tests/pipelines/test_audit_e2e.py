"""``trace-inversion audit`` end to end at a small size, on seeds 0 and 1: the zero point
and two policies of the toy world (3-operation chains, 200 audited problems, 600 attacker
problems), a tiny inverter trained per policy (300 steps of ``trl sft``) and run with
transformers; the leakage ordering that holds by wide margins on both seeds; then the
same command again, which must reuse every stage and trained model (no model call, no
training).

The full-size audit (``trace-inversion audit``, 4 policies, 1,000 steps per inverter) is
run by hand and recorded in benchmarks/audit_results.md."""

import json
import sqlite3
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCORES = ("rougeL", "bleu", "token_f1", "rouge1", "rouge2", "exact_match")


# Seen at this size (benchmarks/audit_results.md, "The CI audit"), seed 0 / seed 1: first
# inverted traces with every step right, none (the surrogate) / answer-only / every-1:
# 50.5 / 3.5 / 100.0 and 50.0 / 2.0 / 68.0; ROUGE-L 81.7 / 64.1 / 100.0 and 82.0 / 53.7 /
# 100.0. Only every-1 over answer-only is wide on both seeds, so only it is asserted
# (every-1 over none: 49.5 / 18.0 points).
SEEDS = (0, 1)
EVERY_STEP_OVER_ANSWER_ONLY = 30.0  # points of traces with every step right; seen 96.5 / 66.0
EVERY_STEP_ROUGE_OVER_ANSWER_ONLY = 15.0  # ROUGE-L points; seen 35.9 / 46.3


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_audit_end_to_end_its_ordering_and_a_free_rerun(tmp_path, capsys, seed):
    """What each policy reveals is set by the world; how much of the hidden reasoning a
    trained inverter recovers from it is measured: a summary of every step must leak more
    than the answer alone."""
    from conftest import MODEL_CACHE
    from trace_inversion.cli import main

    out = tmp_path / "audit"
    argv = ["audit", "-o", str(out), "--policies", "none,answer-only,every-1", "--inverter-steps", "300",
            "--target-rows", "200", "--inverter-backend", "transformers", "--models-cache", str(MODEL_CACHE),
            "--set", f"seed={seed}", "--set", f"data.toy.seed={seed}", "--set", "data.toy.n_train=600",
            "--set", "data.toy.n_test=20", "--set", "data.toy.n_ops=3", "--set", "invert.max_attempts=1"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| every-1 | steps 1,2,3 |" in table and "| answer-only | steps 3 |" in table

    stats = json.loads((out / "stats.json").read_text())
    assert (out / "leakage.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "leakage.md").read_text()
    assert stats["table_markdown"] in report and stats["audit"]["command"] in report
    pols = {p["name"]: p for p in stats["policies"]}
    assert list(pols) == ["none", "answer-only", "every-1"]
    right = {n: p["all_steps_right_first"] for n, p in pols.items()}
    rouge = {n: p["overlap_first"]["rougeL"] for n, p in pols.items()}
    print(f"seed {seed}: every step right {right}; ROUGE-L {rouge}")
    assert right["every-1"] - right["answer-only"] >= EVERY_STEP_OVER_ANSWER_ONLY, right
    assert rouge["every-1"] - rouge["answer-only"] >= EVERY_STEP_ROUGE_OVER_ANSWER_ONLY, rouge
    # what each policy reveals, as reported
    assert pols["none"]["revealed_steps"] == [] and pols["answer-only"]["revealed_steps"] == [3]
    assert pols["every-1"]["revealed_steps"] == [1, 2, 3]
    assert "Reveals the running values of steps [1, 2, 3]" in report
    assert pols["every-1"]["summary"]["shown"] == 100.0 and pols["answer-only"]["summary"]["shown"] == 0.0
    assert "step 1 gives" in pols["every-1"]["summary"]["example"]
    for name, p in pols.items():
        assert p["rows"] == 200, name
        for k in SCORES:
            assert 0.0 <= p["overlap_first"][k] <= 100.0, (name, k)
        for k in ("all_steps_right_first", "steps_right_first", "answer_consistent_first"):
            assert 0.0 <= p[k] <= 100.0, (name, k)
    for name in ("answer-only", "every-1"):
        p = pols[name]
        assert 0.0 <= p["kept"] <= 100.0
        assert p["inverter_training"]["reused"] is False and p["inverter_training"]["final_loss"] is not None
        assert (out / "policies" / name / "models" / "inverter" / "config.json").exists()
        assert p["inverter"]["backend"] == "transformers"
    assert 0.0 <= pols["answer-only"]["hidden_values_recovered"] <= 100.0
    assert pols["answer-only"]["hidden_values"] == 2 * 200  # steps 1 and 2 of every row
    assert pols["every-1"]["hidden_values_recovered"] is None  # it hides nothing
    assert pols["none"]["hidden_values"] == 3 * 200  # the zero point sees no step at all
    # the answer-only inverter was trained without summaries, the every-1 one with them
    recipes = {n: (out / "policies" / n / "models" / "inverter.run" / "recipe.resolved.yaml").read_text()
               for n in ("answer-only", "every-1")}
    assert "dataset_config: without_summary" in recipes["answer-only"]
    assert "dataset_config: with_summary" in recipes["every-1"]
    assert not stats["audit"]["all_reused"]
    # both inverters' trainings forked from the pre-imported process, none started plain
    assert stats["audit"]["fork_server"] == {"forked": 2, "plain": []}

    # the same command again: every stage and trained model reused, no model call
    logs = {n: (out / "policies" / n / "models" / "inverter.run" / "train.log").stat().st_mtime_ns
            for n in ("answer-only", "every-1")}

    def calls() -> int:
        with sqlite3.connect(out / "requests.sqlite") as c:
            return c.execute("select count(*) from requests").fetchone()[0]

    before = calls()
    assert main(argv) == 0
    again = json.loads((out / "stats.json").read_text())
    assert again["audit"]["all_reused"] is True
    for p in again["policies"]:
        assert p["stages_reused"] and all(p["stages_reused"].values()), p["name"]
        if p["kind"] == "attack":
            assert p["inverter_training"]["reused"] is True
    assert calls() == before
    assert logs == {n: (out / "policies" / n / "models" / "inverter.run" / "train.log").stat().st_mtime_ns
                    for n in logs}
    # the same figures, and the time of the run that computed them
    assert [p["overlap_first"] for p in again["policies"]] == [p["overlap_first"] for p in stats["policies"]]
    assert again["audit"]["work_seconds"] == stats["audit"]["work_seconds"]
    assert again["audit"]["seconds"] < 60


@pytest.mark.slow
def test_audit_students_report_the_gain_and_are_reused(tmp_path):
    """``--students`` (costly) at a tiny size, with the programmatic toy inverter for every
    policy (``--no-train``) so only students train: one answer-only student serves the
    policies whose answer-only data is the same, one inverted-trace student per policy,
    each evaluated; the gain is reported; a rerun trains and evaluates nothing."""
    from conftest import MODEL_CACHE
    from trace_inversion.cli import main

    out = tmp_path / "audit"
    argv = ["audit", "-o", str(out), "--policies", "answer-only,every-1", "--no-train", "--students",
            "--student-steps", "20", "--models-cache", str(MODEL_CACHE), "--set", "models.inverter.backend=toy",
            "--set", "models.inverter.model=toy-inverter", "--set", "data.toy.n_train=60",
            "--set", "data.toy.n_test=10", "--set", "data.toy.n_ops=3", "--set", "data.toy.inverter_error_rate=0"]
    assert main(argv) == 0
    stats = json.loads((out / "stats.json").read_text())
    st = {p["name"]: p["student"] for p in stats["policies"]}
    for name, s in st.items():
        assert 0.0 <= s["inverted"] <= 100.0 and 0.0 <= s["answer_only"] <= 100.0, name
        assert s["gain"] == round(s["inverted"] - s["answer_only"], 2)
        assert s["matched"] and s["rows"] == 60  # the toy inverter's traces all verify
        assert (out / "policies" / name / "models" / "student-inverted" / "config.json").exists()
    assert st["answer-only"]["answer_only_model"] == st["every-1"]["answer_only_model"]  # one shared student
    assert len(list((out / "students").glob("answer-only-*.eval"))) == 1
    # three trainings (one shared answer-only student) and their evaluations, all forked
    assert stats["audit"]["fork_server"] == {"forked": 6, "plain": []}
    report = (out / "leakage.md").read_text()
    assert "## Student accuracy (optional, costly)" in report and "student gain (pts)" in stats["table_markdown"]
    assert main(argv) == 0
    again = json.loads((out / "stats.json").read_text())
    assert again["audit"]["all_reused"] and all(p["student"]["reused"] for p in again["policies"])
    # students trained with a user template of the user's are evaluated in that template
    import sqlite3

    template = tmp_path / "student_user.txt"
    template.write_text("Work it out step by step.\n{problem}\n")
    assert main(argv + ["--set", f"students.user_template_file={template}"]) == 0
    third = json.loads((out / "stats.json").read_text())
    assert not any(p["student"]["reused"] for p in third["policies"])  # new data, new students, new evaluations
    with sqlite3.connect(str(out / "policies" / "every-1" / "models" / "student-inverted.eval" / "requests.sqlite")) as c:
        requests = [json.loads(r[0]) for r in c.execute("SELECT request FROM requests")]
    # the evaluation's cache keeps the first runs' requests too; the new ones are all templated
    assert sum("Work it out step by step.\\n" in json.dumps(r) for r in requests) == 10 == len(requests) - 10
