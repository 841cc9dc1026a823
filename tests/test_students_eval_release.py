"""Student conditions, evaluation scoring, local releases."""

import subprocess

import polars as pl
import pytest

from trace_inversion.evaluation import score, summarize
from trace_inversion.hub_cards.publish import ReleaseError, list_tags, load_release, publish_local
from trace_inversion.io import read_split, write_split
from trace_inversion.prompts import student_response
from trace_inversion.steps.student_format import CONDITIONS, FormatStudentSFT


def test_student_response_format():
    assert student_response("t", "The answer is \\boxed{7}.") == "<think>\nt\n</think>\n\nThe answer is \\boxed{7}."
    assert student_response(None, "A") == "A"


def test_format_step_every_condition():
    row = {"problem": "p", "target_answer": "\\boxed{1}", "target_summary": "s", "target_trace": "tt",
           "surrogate_trace": "st", "surrogate_answer": "\\boxed{2}", "first_trace": "ft", "inverted_trace": None}
    for c in CONDITIONS:
        step = FormatStudentSFT(condition=c)
        step.load()
        out = next(step.process([row]))[0]
        if c == "inverted_verified":
            assert out["messages"] is None  # rejected rows are left out, not given an empty trace
        else:
            user, assistant = out["messages"]
            assert user == {"role": "user", "content": "p"}
            r, a = CONDITIONS[c]
            assert assistant["content"] == student_response(row[r] if r else None, row[a])
    with pytest.raises(ValueError, match="unknown condition"):
        FormatStudentSFT(condition="nope").columns()


def test_scoring_fixtures():
    rows = score(["<think>\nstart 1\nadd 2 -> 3\n</think>\n\nThe answer is \\boxed{3}.",
                  "<think>\nadd 2 -> 3\n</think>\n\nThe answer is \\boxed{4}.",
                  "The answer is \\boxed{0.5}.",
                  "<think>never closed",
                  None],
                 ["3", "3", "\\frac{1}{2}", "3", "3"])
    assert [r["correct"] for r in rows] == [True, False, True, False, False]
    assert rows[1]["extracted"] == "4"  # the answer after </think>, not the trace's last value
    assert rows[4]["verdict"] is None
    s = summarize({"0": rows, "1": rows[:2]})
    assert s["accuracy_per_seed"] == {"0": 0.4, "1": 0.5} and s["accuracy_mean"] == 0.45 and s["accuracy_std"] == 0.05


def _stage(folder, n):
    from trace_inversion.hub_cards.card import card_context, write_card

    write_split(folder, "inverted", [{"id": str(i), "x": i} for i in range(n)])
    write_card(folder, card_context("t: invert", "invert", {"name": "t"}, {"rows_in": n}, {"inverted": n}))


def test_local_releases_tags_and_immutability(tmp_path):
    import datasets

    stage, repo = tmp_path / "stage", tmp_path / "releases" / "inverted"
    _stage(stage, 3)
    assert publish_local(stage, repo)["version"] == "v1"
    _stage(stage, 5)
    assert publish_local(stage, repo)["version"] == "v2"
    assert list_tags(repo) == ["v1", "v2"]
    with pytest.raises(ReleaseError, match="already exists"):
        publish_local(stage, repo, "v1")
    assert load_release(repo, "v1", "inverted", workdir=tmp_path / "co").num_rows == 3  # tag pinning
    assert load_release(repo, "v2", "inverted", workdir=tmp_path / "co").num_rows == 5
    assert datasets.load_dataset(str(repo), "inverted", split="train").num_rows == 5  # the checked-out latest
    log = subprocess.run(["git", "log", "--oneline"], cwd=repo, capture_output=True, text=True).stdout
    assert len(log.strip().splitlines()) == 3  # init + one commit per release
    tag_type = subprocess.run(["git", "cat-file", "-t", "v1"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert tag_type == "tag"  # annotated


def test_failed_publish_leaves_no_half_release(tmp_path, monkeypatch):
    from trace_inversion.hub_cards import publish as pub

    stage, repo = tmp_path / "stage", tmp_path / "repo"
    _stage(stage, 2)
    publish_local(stage, repo)
    _stage(stage, 4)
    real = pub._git

    def failing(args, cwd, check=True):
        if args[0] == "push":
            raise pub.ReleaseError("simulated crash during publish")
        return real(args, cwd, check)

    monkeypatch.setattr(pub, "_git", failing)
    with pytest.raises(ReleaseError):
        publish_local(stage, repo)
    monkeypatch.setattr(pub, "_git", real)
    assert list_tags(repo) == ["v1"]
    assert len(read_split(repo, "inverted")) == 2  # the repository still holds exactly v1
    assert publish_local(stage, repo)["version"] == "v2"


def test_publish_rejects_non_stage_and_bad_tags(tmp_path):
    with pytest.raises(ReleaseError, match="not a stage folder"):
        publish_local(tmp_path, tmp_path / "r")
    _stage(tmp_path / "s", 1)
    with pytest.raises(ReleaseError, match="v<number>"):
        publish_local(tmp_path / "s", tmp_path / "r", "../../x")


@pytest.mark.slow
def test_student_data_pipeline_on_toy_stages(tmp_path):
    from trace_inversion.config import load_config
    from trace_inversion.data import load_rows
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
    from trace_inversion.pipelines.invert import run_invert
    from trace_inversion.pipelines.query_target import run_query_target
    from trace_inversion.pipelines.students import run_student_data

    cfg = load_config(None, {"data": {"toy": {"n_train": 50, "n_ops": 5}}, "output": {"dir": str(tmp_path)},
                             "models": {"inverter": {"backend": "toy", "model": "toy-inverter"}},
                             "invert": {"max_attempts": 1}})
    rows = load_rows(cfg.data)
    run_query_target(cfg, rows)
    run_build_inverter_data(cfg, rows, "surrogate_on_targets")
    inv = run_invert(cfg)
    stats = run_student_data(cfg, tmp_path / "target_query", tmp_path / "surrogate_on_targets", tmp_path / "inversion")
    c = stats["conditions"]
    assert c["answer_only"] == c["summary_answer"] == c["surrogate_traces"] == c["target_traces"] == 50
    assert c["inverted_unfiltered"] == 50 and c["inverted_verified"] == inv["kept"] <= 50
    verified = read_split(tmp_path / "student_data", "inverted_verified")
    inverted = {r["id"]: r for r in read_split(tmp_path / "inversion", "inverted")}
    for r in verified:
        assert r["messages"][1]["content"].startswith(f"<think>\n{inverted[r['id']]['inverted_trace']}\n</think>")
