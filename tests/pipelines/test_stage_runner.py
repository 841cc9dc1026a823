"""The one stage runner: fingerprint (prompts included), reuse, write, card, finished mark."""

import json

import polars as pl
import pytest

from trace_inversion.config import ConfigError, TemplateError, load_config
from trace_inversion.data.io import split_path
from trace_inversion.pipelines.stage import MARKER, Output, Stage
from trace_inversion.prompts import (INVERTER_INSTRUCTION, INVERTER_USER_TEMPLATE, inverter_user_prompt,
                                     parse_inverter_prompt, prompt_hash, stage_templates, student_messages)

# The default template with another instruction: still read by the toy inverter.
EDITED_INVERTER = ("Answer:\n{answer}\n\nReasoning summary:\n{summary}\n\nRederive every step, one per line.\n\n"
                   "Problem:\n{problem}\n")


def cfg_for(tmp_path, **over):
    base = {"name": "st", "data": {"toy": {"n_train": 12, "n_test": 0, "n_ops": 4}},
            "output": {"dir": str(tmp_path / "out")}}
    for k, v in over.items():
        base[k] = v
    return load_config(None, base)


def request_count(cfg) -> int:
    """Requests the run's request cache holds: every new model call adds one."""
    from trace_inversion.models.cache import RequestCache

    cache = RequestCache(cfg.resolved_cache_path)
    try:
        return len(cache)
    finally:
        cache.close()


# ----------------------------------------------------------------------------- the runner itself
def test_runner_writes_once_then_reuses_and_an_edited_template_reruns(tmp_path):
    tpl = tmp_path / "inverter.txt"
    tpl.write_text(INVERTER_USER_TEMPLATE)
    cfg = cfg_for(tmp_path, invert={"user_template_file": str(tpl)})
    rows = [{"id": "1", "problem": "p"}]
    calls = []

    def run():
        stage = Stage(cfg, "invert", rows, folder="inversion", summary=lambda s: f"{s['n']} rows",
                      templates=stage_templates(cfg, "inverter_user"))

        def produce():
            calls.append(stage.template("inverter_user"))
            return Output(splits={"inverted": [{"id": "1", "prompt": stage.template("inverter_user")}]}, stats={"n": 1})

        return stage.run(produce)

    first = run()
    folder = tmp_path / "out" / "inversion"
    assert len(calls) == 1 and "reused" not in first and (folder / MARKER).exists()
    assert first["prompts"]["inverter_user"] == {"sha256": prompt_hash(INVERTER_USER_TEMPLATE), "source": str(tpl)}
    assert json.loads((folder / "stats.json").read_text())["prompts"] == first["prompts"]
    card = (folder / "README.md").read_text()
    assert "inverter user template" in card and prompt_hash(INVERTER_USER_TEMPLATE) in card
    assert INVERTER_INSTRUCTION in card and str(tpl) in card

    again = run()  # unchanged: nothing produced
    assert len(calls) == 1 and again["reused"] is True and again["n"] == 1

    tpl.write_text(EDITED_INVERTER)  # same config, edited prompt file: a new run
    third = run()
    assert len(calls) == 2 and "reused" not in third and calls[-1] == EDITED_INVERTER.rstrip("\n")
    out = pl.read_parquet(split_path(folder, "inverted"))
    assert out["prompt"].to_list() == [EDITED_INVERTER.rstrip("\n")]
    assert "Rederive every step" in (folder / "README.md").read_text()
    assert run()["reused"] is True and len(calls) == 2


def test_unfinished_stage_is_not_reused(tmp_path):
    cfg = cfg_for(tmp_path)
    calls = []

    def run():
        stage = Stage(cfg, "x", [], folder="x", summary=lambda s: "")
        return stage.run(lambda: calls.append(1) or Output(splits={"a": [{"id": "1"}]}, stats={}, finished=False))

    run()
    run()
    assert len(calls) == 2 and not (tmp_path / "out" / "x" / MARKER).exists()


def test_frames_are_streamed_to_shards_and_stats_read_from_them(tmp_path):
    """A split given as a polars LazyFrame is written without Python rows; the counts (card)
    and the stats come from the written shards, and ``finished`` may depend on them."""
    from trace_inversion.data.columnar import open_rows

    cfg = cfg_for(tmp_path)
    rows = open_rows(cfg.data)  # a stream: fingerprinted as it is iterated
    lf = pl.LazyFrame({"id": [f"r{i}" for i in range(5)], "bad": [i % 2 == 1 for i in range(5)]})
    seen = {}

    def stats(paths):
        seen.update(paths)
        return {"ok": pl.read_parquet(paths["ok"]).height, "bad": pl.read_parquet(paths["bad"]).height}

    def run():
        stage = Stage(cfg, "x", rows, folder="x", summary=lambda s: "")
        return stage.run(lambda: Output(splits={"ok": lf.filter(~pl.col("bad")), "bad": lf.filter(pl.col("bad"))},
                                        stats=stats, finished=lambda st: st["bad"] == 0))

    first = run()
    assert first["ok"] == 3 and first["bad"] == 2 and seen["ok"] == split_path(tmp_path / "out" / "x", "ok")
    assert not (tmp_path / "out" / "x" / MARKER).exists()  # failed rows: not finished
    card = json.loads((tmp_path / "out" / "x" / "card.json").read_text())
    assert "3" in json.dumps(card) and "2" in json.dumps(card)
    lf = lf.with_columns(bad=pl.lit(False))
    assert run()["ok"] == 5 and (tmp_path / "out" / "x" / MARKER).exists() and run()["reused"] is True


def test_fingerprint_covers_prompts_and_the_toy_world(tmp_path):
    def fp(**over):
        cfg = cfg_for(tmp_path, **over)
        return Stage(cfg, "build-inverter-data", [], folder="f", summary=str,
                     templates=stage_templates(cfg, "compressor", "inverter_user")).fingerprint

    base = fp()
    assert fp() == base
    assert fp(inverter_data={"summary_style": "recap"}) != base
    assert fp(data={"toy": {"n_train": 12, "n_test": 0, "n_ops": 4, "modulus": 7}}) != base
    p = tmp_path / "compressor.txt"
    p.write_text("Summarise briefly.")
    with_file = fp(inverter_data={"prompt_file": str(p)})
    p.write_text("Summarise at length.")
    assert fp(inverter_data={"prompt_file": str(p)}) != with_file


# ----------------------------------------------------------------------------- templates
def test_default_templates_are_the_historical_texts():
    legacy = "\n\n".join(["Answer:\nA", "Reasoning summary:\nS", INVERTER_INSTRUCTION, "Problem:\nP"])
    assert inverter_user_prompt("P", "A", "S") == legacy
    assert inverter_user_prompt("P", "A", None) == "\n\n".join(["Answer:\nA", INVERTER_INSTRUCTION, "Problem:\nP"])
    assert parse_inverter_prompt(legacy) == {"problem": "P", "answer": "A", "summary": "S"}
    # values are filled once: a value holding a placeholder or braces stays as written
    assert inverter_user_prompt("{answer} {x}", "\\boxed{7}", "S").endswith("Problem:\n{answer} {x}")
    assert student_messages("P", "T", "A") == [{"role": "user", "content": "P"},
                                               {"role": "assistant", "content": "<think>\nT\n</think>\n\nA"}]
    assert student_messages("P", "T", "A", "Solve: {problem}", "{reasoning} => {answer}")[1]["content"] == "T => A"


def test_config_rejects_a_template_without_its_placeholders(tmp_path):
    bad = tmp_path / "inverter.txt"
    bad.write_text("Answer:\n{answer}\n\nProblem:\n{problem}\n")  # no {summary}
    with pytest.raises(ConfigError) as e:
        cfg_for(tmp_path, invert={"user_template_file": str(bad)})
    msg = str(e.value)
    assert "invert.user_template_file" in msg and "{summary}" in msg and "fix:" in msg
    resp = tmp_path / "response.txt"
    resp.write_text("{reasoning} only")
    with pytest.raises(ConfigError, match=r"students\.response_template_file.*\{answer\}"):
        cfg_for(tmp_path, students={"response_template_file": str(resp)})
    with pytest.raises(ConfigError, match=r"students\.user_template_file.*does not exist"):
        cfg_for(tmp_path, students={"user_template_file": str(tmp_path / "missing.txt")})
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match=r"inverter_data\.prompt_file.*empty"):
        cfg_for(tmp_path, inverter_data={"prompt_file": str(empty)})
    # a file broken after the config was loaded is caught when the stage starts, before any call
    good = tmp_path / "good.txt"
    good.write_text(INVERTER_USER_TEMPLATE)
    cfg = cfg_for(tmp_path, invert={"user_template_file": str(good)})
    good.write_text("{problem} {answer}")
    with pytest.raises(TemplateError, match=r"invert\.user_template_file.*\{summary\}"):
        stage_templates(cfg, "inverter_user")


# ----------------------------------------------------------------------------- real pipelines
def test_editing_the_compressor_prompt_file_reruns_build_inverter_data(toy_server, tmp_path):
    """The compressor is an API model on the toy server, so its calls are counted there."""
    from trace_inversion.data.loading import load_rows
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data

    srv = toy_server()
    prompt = tmp_path / "compressor.txt"
    prompt.write_text("Summarise the reasoning in three numbered steps.\n")
    cfg = cfg_for(tmp_path, inverter_data={"prompt_file": str(prompt)},
                  models={"surrogate": {"backend": "toy", "model": "toy-surrogate"},
                          "compressor": {"backend": "openai-chat", "model": "toy-target", "base_url": srv.base_url}})
    rows = load_rows(cfg.data)
    folder = tmp_path / "out" / "inverter_data"

    first = run_build_inverter_data(cfg, rows)
    calls = srv.stats()["total"]
    assert calls == len(rows) == first["rows_out"] and "reused" not in first
    sha1 = prompt_hash("Summarise the reasoning in three numbered steps.")
    assert set(pl.read_parquet(split_path(folder, "traces"))["summary_prompt_sha"]) == {sha1}

    again = run_build_inverter_data(cfg, rows)  # unchanged: reused, no model call at all
    assert again["reused"] is True and srv.stats()["total"] == calls

    prompt.write_text("Summarise the reasoning as one short paragraph.\n")  # same config, edited file
    third = run_build_inverter_data(cfg, rows)
    assert "reused" not in third and srv.stats()["total"] == 2 * calls  # every summary asked again
    sha2 = prompt_hash("Summarise the reasoning as one short paragraph.")
    assert set(pl.read_parquet(split_path(folder, "traces"))["summary_prompt_sha"]) == {sha2}
    assert third["prompts"]["compressor"] == {"sha256": sha2, "source": str(prompt)}
    assert "one short paragraph" in (folder / "README.md").read_text()
    assert run_build_inverter_data(cfg, rows)["reused"] is True and srv.stats()["total"] == 2 * calls


def test_editing_the_inverter_template_reruns_invert(tmp_path):
    from trace_inversion.pipelines.invert import run_invert
    from trace_inversion.pipelines.query_target import run_query_target

    tpl = tmp_path / "inverter.txt"
    tpl.write_text(INVERTER_USER_TEMPLATE)
    cfg = cfg_for(tmp_path, invert={"user_template_file": str(tpl), "max_attempts": 1},
                  models={"target": {"backend": "toy", "model": "toy-target"},
                          "inverter": {"backend": "toy", "model": "toy-inverter"}})
    run_query_target(cfg)
    first = run_invert(cfg)
    n = request_count(cfg)
    assert "reused" not in first and first["rows_in"] == 12

    again = run_invert(cfg)  # unchanged: reused, no model call
    assert again["reused"] is True and request_count(cfg) == n

    tpl.write_text(EDITED_INVERTER)
    third = run_invert(cfg)
    assert "reused" not in third and request_count(cfg) == n + 12  # each row's inverter prompt is new
    assert third["prompts"]["inverter_user"]["sha256"] == prompt_hash(EDITED_INVERTER.rstrip("\n"))
    assert "Rederive every step" in (tmp_path / "out" / "inversion" / "README.md").read_text()
    assert run_invert(cfg)["reused"] is True and request_count(cfg) == n + 12
