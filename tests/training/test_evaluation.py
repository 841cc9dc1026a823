"""Evaluation never credits unclosed reasoning, counts truncation, and extracts answers
from full texts with the same matcher as the consistency filter."""

import pytest

from trace_inversion.training.evaluation import is_truncated, score, summarize
from trace_inversion.prompts import final_answer_text


@pytest.mark.parametrize("output,expected", [
    ("<think>\nadd 2 -> 3\n</think>\n\nThe answer is \\boxed{3}.", "\n\nThe answer is \\boxed{3}."),
    ("The answer is \\boxed{3}.", "The answer is \\boxed{3}."),  # answer-only student: no tags at all
    ("<think>\nstart 1\nadd 2 -> 3", None),  # opened and never closed: no answer
    ("<think>", None),
    (None, None),
])
def test_final_answer_text(output, expected):
    assert final_answer_text(output) == expected


def test_unclosed_reasoning_scores_wrong_and_is_counted_truncated():
    # The unclosed trace's last value is the right answer: it must still not be credited.
    rows = score(["<think>\nstart 1\nadd 2 -> 3", "<think>\nLet me compute: 1 + 2 = 3. So \\boxed{3}"], ["3", "3"])
    for r in rows:
        assert r["correct"] is False and r["truncated"] is True
        assert r["extracted"] is None and r["verdict"] is None and r["answer_method"] == "none"


def test_length_cap_is_truncated_but_a_closed_answer_still_counts():
    rows = score(["<think>\n1 + 2 = 3\n</think>\n\n\\boxed{3} and then", "\\boxed{4} and then"], ["3", "3"],
                 finish_reasons=["length", "length"])
    assert [r["truncated"] for r in rows] == [True, True]
    assert [r["correct"] for r in rows] == [True, False]
    assert is_truncated("fine", "stop") is False and is_truncated(None) is False


def test_answers_from_full_texts():
    outputs = [
        "<think>\nmaybe \\boxed{5}? wait, 3 + 4 = 7\n</think>\n\n**Answer:** $7$",
        "<think>\nOption (A) fails, (C) works.\n</think>\n\nThe correct option is **(C)**.",
        "<think>\nok\n</think>\n\nThe distance is $\\sqrt{13}$.",
        "<think>\nok\n</think>\n\nSo $x = \\dfrac{3}{4}$, i.e. 0.75.",
        "<think>\nok\n</think>\n\n\\boxed{\\frac{1}{2}}",
    ]
    rows = score(outputs, ["7", "C", "\\sqrt{13}", "0.75", "50\\%"])
    assert [r["correct"] for r in rows] == [True, True, True, True, True]
    assert [r["answer_method"] for r in rows] == ["final_phrase", "choice", "latex", "expression", "boxed"]
    assert all(r["truncated"] is False for r in rows)


def test_summary_reports_truncation_rate_next_to_accuracy():
    seed0 = score(["<think>\n1+2=3\n</think>\n\n\\boxed{3}", "<think>\n1+2=3", "\\boxed{3}", None], ["3"] * 4)
    seed1 = score(["<think>\n1+2=3", "<think>\n1+2=3"], ["3", "3"])
    s = summarize({"0": seed0, "1": seed1})
    assert s["accuracy_per_seed"] == {"0": 0.5, "1": 0.0} and s["accuracy_mean"] == 0.25
    assert s["truncation_rate_per_seed"] == {"0": 0.25, "1": 1.0} and s["truncation_rate"] == 0.625
    assert list(s).index("truncation_rate") == list(s).index("accuracy_per_seed") + 1


def test_summary_of_rows_without_the_flag():
    # rows written before the flag existed (or built by hand) count as not truncated
    s = summarize({"0": [{"correct": True}, {"correct": False}]})
    assert s["truncation_rate"] == 0.0 and s["accuracy_mean"] == 0.5


def test_the_student_is_asked_in_the_user_template_it_was_trained_with(tmp_path, monkeypatch):
    """A student trained with ``students.user_template_file`` is evaluated with the same
    template (``evaluate --user-template``); the default is the bare problem."""
    import types

    import trace_inversion.models as models
    from trace_inversion.training.evaluation import evaluate_model

    sent = []

    class Recorder:
        def __init__(self, llm, cache):
            pass

        def generate(self, batch, seeds):
            sent.extend(m[0]["content"] for m in batch)
            return [types.SimpleNamespace(ok=True, response={"answer": "\\boxed{7}", "finish_reason": "stop"})
                    for _ in batch]

        def close(self):
            pass

    monkeypatch.setattr(models, "CachedModel", Recorder)
    monkeypatch.setattr(models, "llm_from_config", lambda cfg: None)
    rows = [{"id": "a", "problem": "3 + 4 = ?", "ref": "7"}, {"id": "b", "problem": "2 + 2 = ?", "ref": "4"}]
    summary, _ = evaluate_model(None, rows, None, reference_column="ref")
    assert sent == ["3 + 4 = ?", "2 + 2 = ?"] and summary["accuracy_mean"] == 0.5
    sent.clear()
    evaluate_model(None, rows, None, reference_column="ref",
                   user_template="Solve step by step.\n{problem}\nPut the answer in \\boxed{}.")
    assert sent[0] == "Solve step by step.\n3 + 4 = ?\nPut the answer in \\boxed{}."


def test_evaluate_refuses_an_unusable_user_template_before_loading_anything(tmp_path, capsys):
    from trace_inversion.cli import main

    bad = tmp_path / "user.txt"
    bad.write_text("Solve this.\n")  # no {problem}
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", str(tmp_path / "no-model"), "--benchmark", str(tmp_path / "no-data.jsonl"),
               "--user-template", str(bad), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--user-template" in err and "{problem}" in err and "fix:" in err
    assert not out.exists()
