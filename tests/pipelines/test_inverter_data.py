"""Inverter training data: prompts, think-splitting, steps and the pipeline on the toy world."""

import json
import os

import polars as pl
import pytest

from trace_inversion.data.io import split_path

from trace_inversion.config import load_config
from trace_inversion.data.loading import load_rows
from trace_inversion.prompts import (COMPRESSOR_PRESETS, compressor_prompt, inverter_messages, prompt_hash,
                                     split_think)
from trace_inversion.toy.world import ToyWorld, parse_problem


def test_split_think():
    assert split_think("<think>\na\nb\n</think>\n\nThe answer is 3.") == ("a\nb", "The answer is 3.")
    assert split_think("a</think>b") == ("a", "b")  # templates that open <think> in the prompt
    assert split_think("<think> never closed") == (None, None)
    assert split_think(None) == (None, None)


def test_inverter_messages_put_loss_only_on_the_trace():
    with_s = inverter_messages("P", "A", "S", "T")
    without = inverter_messages("P", "A", None, "T")
    assert [m["role"] for m in with_s] == ["user", "assistant"] and with_s[1]["content"] == "T"
    assert "Reasoning summary:\nS" in with_s[0]["content"] and "Reasoning summary" not in without[0]["content"]
    assert with_s[0]["content"].startswith("Answer:\nA\n\nReasoning summary:\nS")
    assert with_s[0]["content"].endswith("\n\nProblem:\nP")  # the problem sits next to the trace
    from trace_inversion.prompts import parse_inverter_prompt

    assert parse_inverter_prompt(with_s[0]["content"]) == {"problem": "P", "answer": "A", "summary": "S"}
    assert parse_inverter_prompt(without[0]["content"]) == {"problem": "P", "answer": "A", "summary": None}


def test_compressor_presets_and_prompt_file(tmp_path):
    assert "numbered" in compressor_prompt("bubbles") and "first person" in compressor_prompt("recap")
    f = tmp_path / "p.txt"
    f.write_text("Summarise like a pirate.\n")
    assert compressor_prompt("bubbles", str(f)) == "Summarise like a pirate."
    with pytest.raises(ValueError, match="unknown summary style"):
        compressor_prompt("haiku")
    assert len({prompt_hash(p) for p in COMPRESSOR_PRESETS.values()}) == 2


def test_compress_step_with_a_chat_model_backend(toy_server, tmp_path):
    """The compressor through an API backend: the system prompt is the preset."""
    from trace_inversion.steps.summarize import CompressTraces

    srv = toy_server()
    step = CompressTraces(model={"backend": "openai-chat", "model": "toy-target", "base_url": srv.base_url},
                          cache_path=str(tmp_path / "c.sqlite"), style="recap")
    step.load()
    rows = [{"surrogate_trace": ToyWorld().problems(1)[0].text}, {"surrogate_trace": ""}]
    out = next(step.process(rows))
    assert out[0]["summary"] and out[0]["summary_error"] is None and out[0]["summary_style"] == "recap"
    assert out[1]["summary"] is None and out[1]["summary_error"] == "no trace to summarise"
    assert out[0]["summary_prompt_sha"] == prompt_hash(COMPRESSOR_PRESETS["recap"])


@pytest.mark.slow
def test_pipeline_on_the_toy_world(tmp_path):
    import datasets

    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
    from trace_inversion.pipelines.query_target import run_query_target

    cfg = load_config(None, {"data": {"toy": {"n_train": 120}}, "output": {"dir": str(tmp_path / "out")}})
    rows = load_rows(cfg.data)
    run_query_target(cfg, rows)
    cfg = load_config(None, {"data": {"toy": {"n_train": 120}}, "output": {"dir": str(tmp_path / "out")},
                             "inverter_data": {"target_release": str(tmp_path / "out" / "target_query")}})
    stats = run_build_inverter_data(cfg, rows)
    assert stats["rows_out"] == 120 and stats["failures"] == 0
    folder = tmp_path / "out" / "inverter_data"
    ws = datasets.load_dataset(str(folder), "with_summary", split="train")
    wo = datasets.load_dataset(str(folder), "without_summary", split="train")
    traces = pl.read_parquet(split_path(folder, "traces"))
    assert ws.num_rows == wo.num_rows == traces.height == 120
    world = ToyWorld()
    for ex, tr in zip(ws, traces.iter_rows(named=True)):
        user, assistant = ex["messages"]
        p = parse_problem(tr["problem"], tr["id"])
        assert assistant["content"] == tr["surrogate_trace"] == world.surrogate_trace(p)[0]
        assert tr["summary"] == world.compress(tr["surrogate_trace"])  # summary of the surrogate's own trace
        assert f"Reasoning summary:\n{tr['summary']}" in user["content"]
    # the style report compares compressor and real target summaries; in the toy world they match in style
    rep = stats["style_report"]
    assert rep["compressor"]["n"] == rep["target"]["n"] == 120
    assert rep["compressor"]["median_tokens"] == rep["target"]["median_tokens"]
    card = (folder / "README.md").read_text()
    assert "Summary style report" in card and "config_name: with_summary" in card
    # lengths of both generating models, with their unit (the toy models have no tokenizer: word tokens)
    lengths = json.loads((folder / "stats.json").read_text())["lengths"]
    assert set(lengths) == {"surrogate", "surrogate_traces", "compressor"} and lengths == stats["lengths"]
    for st in lengths.values():
        assert st["n"] == 120 and st["unit"] == "word tokens (whitespace split)" and 0 < st["median"] <= st["p90"]
    assert lengths["surrogate"]["cap_hit_rate"] == lengths["compressor"]["cap_hit_rate"] == 0.0
    assert lengths["surrogate"]["median"] > lengths["surrogate_traces"]["median"]  # the answer after </think>
    assert set(traces.columns) >= {"surrogate_finish_reason", "summary_finish_reason"}
    assert set(traces["surrogate_finish_reason"]) == {"stop"}
    assert "## Lengths" in card and "| surrogate | whole output (trace + answer) | 120 | word tokens" in card


@pytest.mark.slow
def test_tiny_recipe_trains_for_real_and_loss_falls(tiny_lm_dir, tmp_path):
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
    from trace_inversion.training.sft import run_sft

    cfg = load_config(None, {"data": {"toy": {"n_train": 256}}, "output": {"dir": str(tmp_path / "out")}})
    run_build_inverter_data(cfg, load_rows(cfg.data))
    res = run_sft("tiny/inverter.yaml", {"model_name_or_path": str(tiny_lm_dir),
                                         "dataset_name": str(tmp_path / "out" / "inverter_data"),
                                         "output_dir": str(tmp_path / "inv"), "max_steps": 40, "logging_steps": 5},
                  tmp_path / "inv.run")
    losses = [l["loss"] for l in res["losses"] if "loss" in l]
    assert len(losses) >= 8
    assert losses[-1] < 0.5 * losses[0], losses
    assert (tmp_path / "inv" / "config.json").exists() and (tmp_path / "inv" / "tokenizer.json").exists()
    resolved = (tmp_path / "inv.run" / "recipe.resolved.yaml").read_text()
    assert "assistant_only_loss: true" in resolved and "max_steps: 40" in resolved
    again = run_sft("tiny/inverter.yaml", {"model_name_or_path": str(tiny_lm_dir),
                                           "dataset_name": str(tmp_path / "out" / "inverter_data"),
                                           "output_dir": str(tmp_path / "inv"), "max_steps": 40, "logging_steps": 5},
                    tmp_path / "inv.run")
    assert again["reused"]  # a finished training run is not repeated on rerun
    # start_sft runs TRL's sft script itself on one CPU process; `trl sft --config` on the
    # same resolved recipe (through accelerate launch) trains the same model, bit for bit
    import filecmp
    import subprocess

    import yaml

    from trace_inversion.training.sft import TRAIN_THREADS_ENV, parse_losses, trl_command

    by_cli = dict(yaml.safe_load(resolved), output_dir=str(tmp_path / "inv-cli"))
    (tmp_path / "cli.yaml").write_text(yaml.safe_dump(by_cli))
    r = subprocess.run(trl_command() + ["sft", "--config", str(tmp_path / "cli.yaml"), "--num_processes", "1",
                                        "--num_cpu_threads_per_process",
                                        os.environ.get(TRAIN_THREADS_ENV) or str(os.cpu_count()), "--mixed_precision", "no"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert [l["loss"] for l in parse_losses(r.stdout + r.stderr) if "loss" in l] == losses
    assert filecmp.cmp(tmp_path / "inv" / "model.safetensors", tmp_path / "inv-cli" / "model.safetensors", shallow=False)


@pytest.mark.slow
def test_surrogate_through_vllm_offline_engine(tiny_lm_dir, tmp_path):
    """A (random, untrained) tiny model through the vLLM CPU offline engine inside the
    distilabel step: it never closes </think>, so every row must land in failures
    with the truncation reason, none lost."""
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data

    cfg = load_config(None, {"data": {"toy": {"n_train": 12}}, "output": {"dir": str(tmp_path / "out")},
                             "models": {"surrogate": {"backend": "vllm", "model": str(tiny_lm_dir),
                                                      "sampling": {"max_new_tokens": 12, "seed": 3}}},
                             "inverter_data": {"max_model_len": 512}})
    stats = run_build_inverter_data(cfg, load_rows(cfg.data))
    assert stats["rows_out"] + stats["failures"] == 12
    failed = pl.read_parquet(split_path(tmp_path / "out" / "inverter_data", "failures"))
    assert failed.height == 12 and all(f.startswith("truncated: no closing </think>") for f in failed["failure"])
    assert all(isinstance(o, str) and o for o in failed["surrogate_output"])
