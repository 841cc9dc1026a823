"""The query-target stage end to end: real distilabel pipeline, real local servers."""

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from trace_inversion.data.io import split_path
import yaml

from trace_inversion.config import load_config
from trace_inversion.data.loading import load_rows
from trace_inversion.pipelines.query_target import dry_run, run_query_target
from trace_inversion.toy.world import boxed_value

pytestmark = pytest.mark.slow


def config(tmp_path, srv=None, backend="openai-responses", **over):
    target = {"backend": backend, "model": "toy-target", "concurrency": 8,
              "price_input_per_mtok": 1000.0, "price_output_per_mtok": 1000.0}
    if srv is not None:
        target["base_url"] = srv.base_url
    if backend == "openai-responses":
        target.update(reasoning_effort="medium", reasoning_summary="auto")
    target.update(over.pop("target", {}))
    data = {"name": "t", "data": {"source": "toy", "toy": {"n_train": over.pop("n", 60), "n_test": 0}},
            "models": {"target": target, **over.pop("models_extra", {})}, "output": {"dir": str(tmp_path / "out")}}
    data.update(over)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path), path


def outputs(tmp_path):
    base = tmp_path / "out" / "target_query"
    return pl.read_parquet(split_path(base, "target")), pl.read_parquet(split_path(base, "failures"))


def test_output_is_a_loadable_dataset_folder(tmp_path):
    import datasets

    cfg, _ = config(tmp_path, backend="toy", target={"model": "toy-target"})
    stats = run_query_target(cfg)
    assert stats["rows_out"] == 60 and stats["failures"] == 0
    folder = tmp_path / "out" / "target_query"
    ds = datasets.load_dataset(str(folder), "target", split="train")
    assert ds.num_rows == 60 and set(ds.column_names) >= {"id", "problem", "target_answer", "target_summary"}
    rows = {r["id"]: r for r in load_rows(cfg.data)}
    assert all(boxed_value(r["target_answer"]) == rows[r["id"]]["reference_answer"] for r in ds)
    card = (folder / "README.md").read_text()
    assert "config_name: target" in card and "config_name: failures" in card


def test_budget_cap_stops_cleanly_then_rerun_continues(toy_server, tmp_path):
    srv = toy_server(latency=0.02)
    cfg, _ = config(tmp_path, srv, budget_usd=1.0, target={"concurrency": 4, "sampling": {"max_new_tokens": 100}})
    stats = run_query_target(cfg)
    ok, failed = outputs(tmp_path)
    assert ok.height + failed.height == 60
    assert 0 < ok.height < 60
    assert all(e.startswith("budget cap reached") for e in failed["query_error"])
    assert stats["cost_usd"] <= 1.0 and stats["new_cost_usd"] <= 1.0  # never exceeds the cap
    assert stats["budget"]["spent_usd"] == pytest.approx(stats["new_cost_usd"], abs=1e-6)
    assert stats["budget"]["reserved_usd"] == 0 and stats["budget"]["refused"] == failed.height
    sent = srv.stats()["total"]
    assert sent == ok.height  # rows refused by the budget were never sent
    cfg2, _ = config(tmp_path, srv, budget_usd=100.0, target={"concurrency": 4, "sampling": {"max_new_tokens": 100}})
    run_query_target(cfg2)
    ok2, failed2 = outputs(tmp_path)
    assert ok2.height == 60 and failed2.height == 0
    assert srv.stats()["total"] == 60  # the first run's rows were replayed, not re-sent


def test_dry_run_estimates_from_a_sample(toy_server, tmp_path):
    srv = toy_server()
    cfg, _ = config(tmp_path, srv, n=200, query={"dry_run_sample": 10})
    est = dry_run(cfg, load_rows(cfg.data), sample=True)
    assert est["sample"] == 10 and srv.stats()["total"] == 10
    assert est["estimated_total_cost_usd"] == pytest.approx(est["mean_cost_per_row_usd"] * 200, rel=1e-6)
    assert est["mean_cost_per_row_usd"] > 0
    run_query_target(cfg)
    assert srv.stats()["total"] == 200  # the sampled rows were not paid twice
    ok, _ = outputs(tmp_path)
    assert ok["target_cost_usd"].sum() == pytest.approx(est["mean_cost_per_row_usd"] * 200, rel=0.2)
    stats = json.loads((tmp_path / "out" / "target_query" / "stats.json").read_text())
    assert stats["new_cost_usd"] == pytest.approx(stats["cost_usd"] - est["sample_cost_usd"], rel=1e-6)


def test_refusals_and_missing_summaries_go_to_failures(toy_server, tmp_path):
    srv = toy_server(p_refusal=0.3, p_empty_summary=0.3, seed=1)
    cfg, _ = config(tmp_path, srv, query={"require_summary": True})
    stats = run_query_target(cfg)
    ok, failed = outputs(tmp_path)
    assert ok.height + failed.height == 60
    reasons = stats["failure_reasons"]
    assert any(k.startswith("refusal:") for k in reasons)
    assert reasons.get("empty summary (require_summary is set)", 0) > 0
    assert ok["target_summary"].null_count() == 0


def test_responses_fault_storm_with_sigkill_and_rerun(toy_server, tmp_path):
    """429 (Retry-After), 500, timeouts and malformed bodies, a SIGKILL mid-run, a rerun:
    every row ends in the output or in failures, and no finished request is paid twice."""
    srv = toy_server(latency=0.05, p429=0.15, retry_after=0.05, p500=0.1, p_timeout=0.05, timeout_stall=3,
                     p_malformed=0.05, seed=3)
    cfg, path = config(tmp_path, srv, n=160, target={"timeout_s": 0.5, "max_retries": 2, "concurrency": 8})
    cmd = [sys.executable, "-m", "trace_inversion.cli", "query-target", "--config", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    from test_resume_sigkill import cache_entries

    deadline = time.time() + 120
    while cache_entries(cfg.resolved_cache_path) < 50:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    paid_before = srv.stats()["paid"]
    time.sleep(0.3)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ok, failed = outputs(tmp_path)
    assert ok.height + failed.height == 160 and len(set(ok["id"]) | set(failed["id"])) == 160
    assert failed["query_error"].null_count() == 0
    paid = srv.stats()["paid"]
    # a request answered (paid) before the kill and committed to the cache is never answered again
    cached_keys = cache_entries(cfg.resolved_cache_path)
    twice = [k for k, v in paid.items() if v > 1]
    assert len(twice) <= 8, twice  # at most the requests in flight at the kill
    assert cached_keys == ok.height + sum(1 for e in failed["query_error"] if not e.startswith("gave up"))


def test_chat_path_against_vllm_cpu_server(vllm_server, tmp_path):
    cfg, _ = config(tmp_path, backend="openai-chat", n=12,
                    target={"model": "tiny", "base_url": vllm_server.base_url, "price_input_per_mtok": 0,
                            "price_output_per_mtok": 0, "sampling": {"max_new_tokens": 12, "temperature": 1.0, "seed": 7},
                            "extra_body": {"top_k": 50, "repetition_penalty": 1.05}},
                    query={"refusal_patterns": []})
    stats = run_query_target(cfg)
    ok, failed = outputs(tmp_path)
    assert ok.height + failed.height == 12, stats
    # an untrained model rambles to the 12-token cap (an incomplete answer is a content failure)
    # or emits only whitespace; vLLM accepted every field sent (extras explicitly in extra_body)
    assert set(stats["failure_reasons"]) <= {"empty answer", "incomplete: length (the output cap: raise "
                                                                "sampling.max_new_tokens)"}, stats
    assert stats["output_tokens"] > 0 and stats["http_attempts"] == 12
    usage = ok["target_usage"].to_list() + failed["target_usage"].to_list()
    assert all(0 < u["output_tokens"] <= 12 for u in usage)


def test_rerun_of_a_finished_stage_is_free_and_a_changed_config_reruns(toy_server, tmp_path):
    srv = toy_server()
    cfg, _ = config(tmp_path, srv, n=40)
    first = run_query_target(cfg)
    assert srv.stats()["total"] == 40 and "reused" not in first
    again = run_query_target(cfg)  # finished stage, same inputs: no pipeline, no request
    assert again["reused"] is True and again["rows_out"] == 40 and again["new_cost_usd"] == 0.0
    assert srv.stats()["total"] == 40
    cfg2, _ = config(tmp_path, srv, n=40, query={"dry_run_sample": 3})  # config changed: the stage runs again
    third = run_query_target(cfg2)
    assert "reused" not in third and srv.stats()["total"] == 40  # ... replaying every request from the cache
    (tmp_path / "out" / "target_query" / "README.md").unlink()  # an output went missing: run again
    assert "reused" not in run_query_target(cfg2)


def test_dry_run_sends_nothing_and_bounds_the_cost(toy_server, tmp_path):
    from trace_inversion.models.clients import input_token_bound

    srv = toy_server()
    cfg, _ = config(tmp_path, srv, n=50, budget_usd=5.0, target={"sampling": {"max_new_tokens": 100}})
    rows = load_rows(cfg.data)
    est = dry_run(cfg, rows)
    assert srv.stats()["total"] == 0 and est["sample"] == 0 and est["rows_to_send"] == 50
    bound = sum(input_token_bound([{"role": "user", "content": r["problem"]}]) for r in rows)
    assert est["input_tokens_bound"] == bound
    assert est["worst_case_cost_usd"] == pytest.approx((bound + 100 * 50) * 1000 / 1e6, rel=1e-6)
    assert est["within_budget_worst_case"] is False and est["estimated_total_cost_usd"] is None
    stats = run_query_target(cfg)
    assert stats["cost_usd"] <= est["worst_case_cost_usd"] and stats["new_cost_usd"] <= 5.0
    again = dry_run(cfg, rows)  # measured from the cached responses, still without a call
    assert srv.stats()["total"] == stats["http_attempts"] and again["rows_cached"] == stats["rows_out"]
    assert again["mean_cost_per_row_usd"] > 0


def test_full_trace_target_summarised_by_the_compressor(toy_server, tmp_path):
    """A vLLM server with a reasoning parser: reasoning_content is the whole trace. It goes to
    target_trace, and the compressor writes target_summary (the paper's open-target set-up)."""
    from trace_inversion.toy.world import ToyWorld

    srv = toy_server(flavor="vllm")
    cfg, _ = config(tmp_path, srv, backend="openai-chat", n=30,
                    target={"extra_body": {"top_k": 20, "chat_template_kwargs": {"enable_thinking": True}}},
                    models_extra={"compressor": {"backend": "toy", "model": "toy-compressor"}},
                    query={"summarize_traces_with": "compressor", "require_summary": True})
    stats = run_query_target(cfg)
    ok, failed = outputs(tmp_path)
    assert ok.height == 30 and failed.height == 0, stats
    w = ToyWorld()
    by_text = {p.text: p for p in w.problems(30)}
    for r in ok.iter_rows(named=True):
        p = by_text[r["problem"]]
        assert r["target_trace"] == w.target_response(p)["hidden_trace"]  # the full trace, not a "summary"
        assert r["target_summary"] == w.compress(r["target_trace"])  # written by the compressor
        assert r["summary_model"] == "toy-compressor"
    st = srv.stats()
    assert st["rejected"] == 0 and st["ignored_fields"] == {} and st["fields_seen"]["top_k"] == 30


def test_batch_api_half_price_resumed_after_a_stop_never_submitted_twice(toy_server, tmp_path):
    """query.batch_api through the stage: the first run stops while the batch runs (as
    after a crash between submit and retrieve), the next collects it without submitting
    again, the pipeline replays every result from the cache (no direct request), each
    row costs half the direct price, and a rerun of the finished stage is free."""
    from trace_inversion.pipelines.query_target import BatchPending

    srv = toy_server(batch_delay=4)
    cfg, _ = config(tmp_path, srv, n=12, query={"batch_api": True, "batch_poll_s": 0.2, "batch_wait_s": 1})
    with pytest.raises(BatchPending, match="run the same command again"):
        run_query_target(cfg)
    assert srv.get("/stats")["batch_creates"] == 1
    time.sleep(4)
    stats = run_query_target(cfg)
    st = srv.get("/stats")
    assert st["batch_creates"] == 1  # picked up, not submitted again
    assert st["total"] == 12 and max(st["counts"].values()) == 1  # each request ran once, inside the batch
    assert stats["rows_out"] == 12 and stats["batch_api"]["resumed"] == 1 and stats["batch_api"]["stored"] == 12
    ok, _ = outputs(tmp_path)
    full = stats["batch_api"]["cost_full_price_usd"]
    assert full > 0 and abs(sum(ok["target_cost_usd"]) - full / 2) < 1e-9
    assert abs(stats["new_cost_usd"] - full / 2) < 1e-9
    again = run_query_target(cfg)
    assert again.get("reused") and srv.get("/stats")["total"] == 12


def test_batch_api_needs_an_api_target(tmp_path):
    from trace_inversion.config import ConfigError

    with pytest.raises(ConfigError, match="query.batch_api needs an OpenAI API target"):
        config(tmp_path, backend="toy", target={"model": "toy-target"}, query={"batch_api": True})


def test_batch_api_spending_is_part_of_the_runs_one_budget(toy_server, tmp_path):
    """The batch's worst case is reserved before it is submitted and its cost settled in
    the run's ledger; a batch that cannot fit the cap is refused before submission."""
    srv = toy_server()
    cfg, _ = config(tmp_path, srv, n=6, budget_usd=5.0, target={"sampling": {"max_new_tokens": 256}},
                    query={"batch_api": True, "batch_poll_s": 0.1})
    stats = run_query_target(cfg)
    b = stats["budget"]
    assert stats["rows_out"] == 6 and b["reserved_usd"] == 0
    assert abs(b["spent_usd"] - stats["batch_api"]["cost_usd"]) < 1e-6 and b["spent_usd"] > 0
    from trace_inversion.config import ConfigError

    (tmp_path / "tight").mkdir()
    tight, _ = config(tmp_path / "tight", srv, n=6, budget_usd=0.0001, target={"sampling": {"max_new_tokens": 256}},
                      query={"batch_api": True, "batch_poll_s": 0.1})
    with pytest.raises(ConfigError, match="does not fit budget_usd"):
        run_query_target(tight)
    assert srv.get("/stats")["batch_creates"] == 1  # nothing was submitted for the refused one
