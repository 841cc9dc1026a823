"""``trace-inversion audit`` without model calls: policies (names, files, validation
before any call), the per-policy configs, the toy step scores, and the report, table,
curve and stats rendered from a stats dict. The end-to-end run is test_audit_e2e.py."""

import json
from pathlib import Path

import pytest

from trace_inversion.config import ConfigError
from trace_inversion.pipelines.audit import Options, plan
from trace_inversion.pipelines.audit_policies import (TOY_DEFAULT_POLICIES, builtin_policy, read_policies_file,
                                                      resolve_policies)
from trace_inversion.pipelines.audit_report import render_report, render_table, toy_trace_scores, write_outputs


def test_builtin_policies_in_the_toy_world():
    assert builtin_policy("answer-only", toy=True).overrides == {"invert": {"with_summary": False},
                                                                  "data": {"toy": {"summary_every": 0}}}
    p = builtin_policy("every-2+1-is", toy=True)
    assert p.overrides["data"]["toy"] == {"summary_every": 2, "summary_offset": 1, "summary_style": "is"}
    assert p.with_summary and "2nd step" in p.description and "offset 1" in p.description
    assert builtin_policy("none", toy=True).kind == "prior"
    assert builtin_policy("every-3", toy=False) is None  # a toy-world policy only
    assert builtin_policy("answer-only", toy=False).overrides == {"invert": {"with_summary": False}}
    assert [p.name for p in resolve_policies(None, None, toy=True)] == TOY_DEFAULT_POLICIES


def test_policy_names_are_checked_all_at_once():
    with pytest.raises(ConfigError) as e:
        resolve_policies("answer-only,every-2,answer-only,bogus", None, toy=True)
    text = str(e.value)
    assert "unknown policy 'bogus'" in text and "'answer-only' is listed 2 times" in text
    with pytest.raises(ConfigError, match="only the zero point"):
        resolve_policies("none", None, toy=True)
    with pytest.raises(ConfigError, match="every-K is a toy-world policy"):
        resolve_policies("every-2", None, toy=False)


def test_policies_file(tmp_path):
    f = tmp_path / "policies.yaml"
    f.write_text("policies:\n  - name: answer-only\n  - name: brief\n    description: two sentences\n"
                 "    set: {inverter_data: {summary_style: recap}}\n  - none\n")
    pols = read_policies_file(str(f))
    assert [(p.name, p.kind) for p in pols] == [("answer-only", "attack"), ("brief", "attack"), ("none", "prior")]
    # from the file by name; a built-in name not in the file still resolves
    got = resolve_policies("brief,answer-only", str(f), toy=False)
    assert [p.name for p in got] == ["brief", "answer-only"] and got[0].overrides["inverter_data"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies:\n  - {name: x, sett: {}}\n  - {name: y, set: 3}\n")
    with pytest.raises(ConfigError) as e:
        read_policies_file(str(bad))
    assert "unknown keys ['sett']" in str(e.value) and "`set` must be a mapping" in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        read_policies_file(str(tmp_path / "missing.yaml"))


def test_plan_builds_one_config_per_policy(tmp_path):
    base, runs, sz = plan(Options(output=str(tmp_path / "a"), policies="none,answer-only,every-2",
                                  overrides={"data": {"toy": {"n_ops": 4}}}))
    by = {r.policy.name: r for r in runs}
    assert sz["toy"] and sz["inverter_steps"] == 1000 and sz["target_rows"] == 1000
    # the audit's toy defaults (no --config) under the user's --set
    assert base.data.toy.n_ops == 4 and base.data.toy.n_train == 3000 and base.data.toy.surrogate_errors == "systematic"
    a, e2 = by["answer-only"].cfg, by["every-2"].cfg
    assert a.data.toy.summary_every == 0 and not a.invert.with_summary
    assert a.data.toy.compressor_every == 1  # the attacker's data still builds (its summary-free examples train)
    assert e2.data.toy.summary_every == 2 and e2.data.toy.compressor_every is None  # the compressor follows the policy
    assert by["answer-only"].revealed == [4] and by["every-2"].revealed == [2, 4] and by["none"].revealed == []
    for r in runs:
        assert r.cfg.output.dir == str((tmp_path / "a" / "policies" / r.policy.name).resolve())
        assert r.cfg.cache_path == str((tmp_path / "a" / "requests.sqlite").resolve())  # one cache for every policy
    assert by["every-2"].over["models"]["inverter"]["model"].endswith("policies/every-2/models/inverter")
    assert not (tmp_path / "a").exists()  # planning writes nothing


def test_plan_reports_every_problem_before_any_call(tmp_path):
    f = tmp_path / "policies.yaml"
    f.write_text("policies:\n  - {name: bad, set: {invert: {max_attempts: 0}}}\n")
    with pytest.raises(ConfigError) as e:
        plan(Options(output=str(tmp_path), policies="every-9,bad,every-2", policies_file=str(f),
                     inverter_recipe="no/such.yaml", overrides={"data": {"toy": {"n_ops": 5}}}))
    text = str(e.value)
    assert "policy every-9: summary_every 9 > n_ops 5" in text
    assert "policy bad: invert.max_attempts" in text  # a config field, named with its policy
    assert "--inverter-recipe" in text and "every-2" not in text
    with pytest.raises(ConfigError, match="--no-train needs models.inverter"):
        plan(Options(output=str(tmp_path), policies="answer-only", train=False))
    with pytest.raises(ConfigError, match="compressor reveals no step"):
        plan(Options(output=str(tmp_path), policies="every-2", overrides={"data": {"toy": {"compressor_every": 0}}}))


def test_plan_outside_the_toy_world_needs_a_recipe_and_a_base_model(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"id": "1", "problem": "1+1?"}) + "\n")
    over = {"data": {"source": str(data)},
            "models": {"target": {"backend": "openai-chat", "model": "m", "base_url": "http://127.0.0.1:9/v1"}}}
    with pytest.raises(ConfigError) as e:
        plan(Options(output=str(tmp_path / "a"), policies="answer-only", overrides=over, students=True))
    text = str(e.value)
    for flag in ("--inverter-recipe", "--base-model", "--student-recipe", "--eval-benchmark"):
        assert flag in text


def test_cli_plan_prints_the_policies(tmp_path, capsys):
    from trace_inversion.cli import main

    assert main(["audit", "--plan", "-o", str(tmp_path / "a"), "--policies", "answer-only,every-1"]) == 0
    out = capsys.readouterr().out
    assert "answer-only (attack)" in out and "reveals steps [1, 2, 3, 4, 5]" in out
    assert main(["audit", "--plan", "-o", str(tmp_path / "a"), "--policies", "every-0x"]) == 2


def test_toy_trace_scores_count_hidden_values():
    from trace_inversion.toy.world import ToyWorld

    p = ToyWorld(seed=0, n_ops=3).problem(0)
    v = p.values()
    right = "\n".join(f"{a}{op}{b}->{c}" for a, (op, b), c in zip([p.start] + v[:-1], p.steps, v))
    wrong_first = right.replace(f"->{v[0]}\n", f"->{(v[0] + 1) % 10}\n", 1)
    rows = [{"id": "a", "problem": p.text, "t": right}, {"id": "b", "problem": p.text, "t": wrong_first}]
    s = toy_trace_scores(rows, "t", revealed=[3])
    assert s["all_steps_right"] == 50.0 and s["hidden_values"] == 4  # steps 1 and 2 of both rows
    assert 25.0 <= s["hidden_values_recovered"] <= 75.0
    assert toy_trace_scores(rows, "t", revealed=[1, 2, 3])["hidden_values_recovered"] is None
    assert toy_trace_scores([{"id": "x", "problem": "not toy", "t": ""}], "t", [1]) == {}


def _stats(students: bool = False) -> dict:
    pol = []
    for i, (name, kind, rev) in enumerate([("none", "prior", []), ("answer-only", "attack", [5]),
                                           ("every-2", "attack", [2, 4, 5]), ("every-1", "attack", [1, 2, 3, 4, 5])]):
        p = {"name": name, "kind": kind, "description": f"policy {name}", "revealed_steps": rev, "folder": f"/x/{name}",
             "rows": 10, "summary": {"shown": 0.0 if i < 2 else 100.0, "mean_words": 4.0 * i,
                                     "example": None if i < 2 else "step 2 gives 7.", "example_problem": "Evaluate"},
             "overlap_first": {"bleu": 10.0 * i, "token_f1": 20.0 + i, "rougeL": 30.0 + 10 * i, "len_hyp": 9,
                               "len_ref": 8},
             "overlap_kept": None if i == 0 else {"bleu": 11.0, "rougeL": 41.0},
             "answer_consistent_first": 50.0 + i, "kept": None if i == 0 else 90.0, "all_steps_right_first": 25.0 * i,
             "hidden_values_recovered": None if name == "every-1" else 10.0 * i, "example_trace": "1+2->3 ```",
             "stages_reused": {}}
        if students and kind == "attack":
            p["student"] = {"inverted": 40.0 + i, "answer_only": 20.0, "gain": 20.0 + i}
        pol.append(p)
    return {"audit": {"setting": "Toy world", "world": "toy", "command": "trace-inversion audit --policies x",
                      "seconds": 90.0, "work_seconds": 600.0, "all_reused": True, "trained_inverter": True,
                      "students": "Costly: ..." if students else None}, "policies": pol}


def test_table_and_report_from_a_stats_dict():
    st = _stats()
    table = render_table(st)
    lines = table.splitlines()
    assert lines[0].startswith("| policy | reveals | ROUGE-L") and "student gain" not in lines[0]
    assert lines[2].startswith("| none | nothing | 30.0 |")
    assert "| every-2 | steps 2,4,5 | 50.0 | 20.0 |" in table and "| every-1 | steps 1,2,3,4,5 |" in table
    assert lines[-1].split(" | ")[-3] == "—"  # every-1 hides nothing: no hidden values to recover
    md = render_report(st)
    for part in ("## Leakage per policy", "![leakage curve](leakage.png)", "### every-2",
                 "Reveals the running values of steps [2, 4, 5]", "step 2 gives 7.", "## How to repeat",
                 "trace-inversion audit --policies x", "Student accuracy was not measured", "10.0 min"):
        assert part in md, part
    assert "````\n1+2->3 ```\n````" in md  # a trace cannot close its fence
    st = _stats(students=True)
    assert "student gain (pts)" in render_table(st) and "+23.0" in render_table(st)
    assert "| every-1 | 43.0% | 20.0% | +23.0 |" in render_report(st)


def test_outputs_written(tmp_path):
    paths = write_outputs(_stats(students=True), tmp_path)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["plot"].stat().st_size > 10_000
    saved = json.loads(paths["stats"].read_text())
    assert saved["table_markdown"] == render_table(_stats(students=True))
    assert [p["name"] for p in saved["policies"]] == ["none", "answer-only", "every-2", "every-1"]
    assert Path(paths["report"]).read_text().startswith("# Summary-policy leakage audit")
