"""Student conditions, evaluation scoring, local releases."""

import subprocess

import polars as pl
import pytest

from trace_inversion.training.evaluation import score, summarize
from trace_inversion.hub_cards.publish import ReleaseError, list_tags, load_release, publish_local
from trace_inversion.data.io import read_split, write_split
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
    from trace_inversion.data.loading import load_rows
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
    from trace_inversion.pipelines.invert import run_invert
    from trace_inversion.pipelines.query_target import run_query_target
    from trace_inversion.pipelines.student_data import run_student_data

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

    # a second inversion with the step checker: the step-verified condition (the demo's third inverted student)
    from trace_inversion.toy.world import check_steps, parse_problem

    steps_cfg = load_config(None, {**cfg.model_dump(mode="json", exclude_none=True),
                                   "invert": {"max_attempts": 1, "verifiers": ["answer", "steps"]}})
    inv_steps = run_invert(steps_cfg, folder="inversion_steps")
    assert (tmp_path / "inversion_steps" / "stats.json").exists() and inv_steps["verifiers"] == ["answer", "steps"]
    stats = run_student_data(cfg, tmp_path / "target_query", tmp_path / "surrogate_on_targets", tmp_path / "inversion",
                             step_verified_dir=tmp_path / "inversion_steps")
    c = stats["conditions"]
    assert c["inverted_step_verified"] == inv_steps["kept"] < inv["kept"]  # the toy inverter errs on hidden steps
    assert stats["matched_rows"] == inv_steps["kept"]  # every condition on the step-verified problems
    for r in read_split(tmp_path / "student_data", "inverted_step_verified_matched"):
        trace = r["messages"][1]["content"].split("<think>\n")[1].split("\n</think>")[0]
        assert check_steps(parse_problem(r["messages"][0]["content"]), trace)["all_correct"]


# ----------------------------------------------------------------------------- matched rows, stale configs
def test_matched_rows_are_those_every_nonempty_condition_shares(tmp_path):
    from trace_inversion.pipelines.student_data import (conditions_section, empty_reasons, matched_ids,
                                                    remove_stale_configs)

    kept = {"answer_only": [{"id": i} for i in "abcd"], "surrogate_traces": [{"id": i} for i in "abc"],
            "inverted_verified": [{"id": i} for i in "bcd"], "target_traces": []}
    assert matched_ids(kept) == {"b", "c"}  # the empty oracle condition does not empty the others
    assert matched_ids({"x": []}) == set()
    for c in ("answer_only", "answer_only_matched", "target_traces"):
        write_split(tmp_path, c, [{"id": "a", "messages": "m"}])
    (tmp_path / "data" / "target_traces" / ".train.parquet.new").write_bytes(b"half")  # a crash's leftover
    assert remove_stale_configs(tmp_path, {"answer_only", "answer_only_matched"}) == ["target_traces"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["answer_only", "answer_only_matched"]
    reasons = empty_reasons({"answer_only": 4, "surrogate_traces": 0, "inverted_verified": 0, "target_traces": 0},
                            None, None)
    assert set(reasons) == {"surrogate_traces", "inverted_verified", "target_traces"}
    assert "--run-surrogate" in reasons["surrogate_traces"] and "fix:" in reasons["inverted_verified"]
    text = conditions_section({"conditions": {"answer_only": 4, "target_traces": 0}, "matched_rows": 4,
                               "matched": {"answer_only_matched": 4}, "empty": {"target_traces": "closed"}})
    assert "| answer_only | 4 | answer_only_matched | 4 |" in text and "| target_traces | 0 | - | - |" in text
    assert "4 rows every non-empty condition shares" in text and "target_traces is empty: closed" in text


@pytest.mark.slow
def test_student_data_cli_runs_the_surrogate_writes_matched_variants_and_drops_stale_configs(tmp_path):
    """Real use: query-target, invert, then `student-data --run-surrogate` (the surrogate on
    the target's problems); every condition has a row-matched variant; a rerun in which a
    condition comes out empty removes its shards and card entries."""
    import json
    import os
    import sys

    import yaml

    from trace_inversion.hub_cards.card import validate_card

    out = tmp_path / "run"
    cfg = {"name": "students", "data": {"toy": {"n_train": 40, "n_ops": 5}}, "output": {"dir": str(out)},
           "models": {"target": {"backend": "toy", "model": "toy-target"},
                      "surrogate": {"backend": "toy", "model": "toy-surrogate"},
                      "inverter": {"backend": "toy", "model": "toy-inverter"}},
           "invert": {"max_attempts": 1}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", *args], capture_output=True, text=True,
                           env=dict(os.environ), timeout=600)
        assert r.returncode == 0, (args, r.stderr[-3000:])
        return r

    cli("query-target", "--config", str(path))
    cli("invert", "--config", str(path))
    # without the surrogate's traces, the condition is empty and says how to fill it
    r = cli("student-data", "--config", str(path))
    assert "note: condition surrogate_traces is empty" in r.stderr and "--run-surrogate" in r.stderr
    assert not (out / "student_data" / "data" / "surrogate_traces").exists()
    r = cli("student-data", "--config", str(path), "--run-surrogate")
    stats = json.loads(r.stdout)
    c = stats["conditions"]
    assert c["surrogate_traces"] == len(read_split(out / "surrogate_on_targets", "traces")) == 40
    lengths = json.loads((out / "surrogate_on_targets" / "stats.json").read_text())["lengths"]
    assert lengths["surrogate"]["n"] == 40 and lengths["surrogate"]["cap_hit_rate"] == 0.0
    assert "## Lengths" in (out / "surrogate_on_targets" / "README.md").read_text()
    assert c["answer_only"] == c["summary_answer"] == c["target_traces"] == c["inverted_unfiltered"] == 40
    assert 0 < c["inverted_verified"] <= 40  # rows whose trace missed the answer are left out
    sd = out / "student_data"
    verified_ids = {r["id"] for r in read_split(sd, "inverted_verified")}
    assert stats["matched_rows"] == len(verified_ids)
    for cond, n in c.items():
        rows = read_split(sd, f"{cond}_matched")
        assert {r["id"] for r in rows} == verified_ids and stats["matched"][f"{cond}_matched"] == len(rows)
        full = {r["id"]: r for r in read_split(sd, cond)}
        assert all(full[r["id"]]["messages"] == r["messages"] for r in rows)  # the same examples, fewer rows
    card = (sd / "README.md").read_text()
    header = validate_card(card, sd)
    names = {x["config_name"] for x in header["configs"]}
    assert names == set(c) | {f"{x}_matched" for x in c}
    assert "| surrogate_traces | 40 | surrogate_traces_matched |" in card
    # a rerun where a condition comes out empty, and one not asked for: both leave the folder and the card
    empty = tmp_path / "empty_surrogate"
    write_split(empty, "traces", [], like=read_split(out / "surrogate_on_targets", "traces")[:1])
    r = cli("student-data", "--config", str(path), "--conditions", "answer_only,surrogate_traces",
            "--surrogate", str(empty))
    stats = json.loads(r.stdout)
    assert stats["conditions"] == {"answer_only": 40, "surrogate_traces": 0}
    assert sorted(p.name for p in (sd / "data").iterdir()) == ["answer_only", "answer_only_matched"]
    header = validate_card((sd / "README.md").read_text(), sd)
    assert {x["config_name"] for x in header["configs"]} == {"answer_only", "answer_only_matched"}
    card = (sd / "README.md").read_text()
    assert "| surrogate_traces_matched |" not in card and "| inverted_verified |" not in card  # no count rows
    assert "| surrogate_traces | 0 | - | - |" in card and "surrogate_traces is empty" in card
    assert set(stats["removed_configs"]) >= {"surrogate_traces", "surrogate_traces_matched", "inverted_verified"}
