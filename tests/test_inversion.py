"""Inversion with verified synthesis: the step, the pipeline, real tiny inverters."""

import json
import re

import polars as pl
import pytest

from trace_inversion.io import split_path

from trace_inversion.config import load_config
from trace_inversion.steps.inversion import InvertTraces, judge
from trace_inversion.toy_world import ToyWorld, check_steps


def toy_rows(n=40, n_ops=5, seed=0):
    w = ToyWorld(seed=seed, n_ops=n_ops)
    out = []
    for p in w.problems(n):
        r = w.target_response(p)
        out.append({"id": p.id, "problem": p.text, "target_answer": r["answer"], "target_summary": r["summary"],
                    "target_trace": r["hidden_trace"]})
    return out


def step(tmp_path, **kw):
    s = InvertTraces(model={"backend": "toy", "model": "toy-inverter"}, cache_path=str(tmp_path / "c.sqlite"),
                     toy_world={"n_ops": 5, "inverter_error_rate": 0.3, "inverter_forces_answer": 0.0}, **kw)
    s.load()
    return s


def test_judge_reasons():
    assert judge("start 3\nadd 4 -> 7", "stop", "\\boxed{7}") == (True, "consistent", "start 3\nadd 4 -> 7")
    assert judge("start 3\nadd 4 -> 8", "stop", "\\boxed{7}")[0] is False
    assert judge("<think>start 3", "stop", "\\boxed{7}")[:2] == (False, "truncated: no closing </think>")
    assert judge("x", "length", "7")[1] == "truncated: length cap hit"
    assert judge("   ", "stop", "7")[:2] == (False, "empty")
    assert judge("<think>add 1 -> 7</think>done", "stop", "7")[2] == "add 1 -> 7"
    assert judge("no numbers", "stop", "7")[0] is None


def test_verified_synthesis_resamples_until_consistent(tmp_path):
    rows = toy_rows()
    unverified = next(step(tmp_path, max_attempts=1).process(rows))
    first_bad = [r for r in unverified if r["first_verdict"] is False]
    assert first_bad, "the toy inverter must miss some answers at this error rate"
    assert all(not r["inversion_accepted"] and r["inversion_reason"].startswith("inconsistent") for r in first_bad)
    verified = next(step(tmp_path, max_attempts=6).process(rows))
    assert sum(r["inversion_accepted"] for r in verified) > sum(r["inversion_accepted"] for r in unverified)
    for r in verified:
        atts = r["inversion_attempts"]
        assert atts[0]["seed"] == 0 and [a["round"] for a in atts] == list(range(len(atts)))
        assert r["first_trace"] == atts[0]["trace"]  # the first sample is the same request, replayed
        if r["inversion_accepted"]:
            assert r["inversion_verdict"] is True and atts[-1]["verdict"] is True
            assert all(a["verdict"] is False for a in atts[:-1])  # resampled only while inconsistent
        else:
            assert len(atts) == 6 and all(a["verdict"] is False for a in atts)


def test_unverifiable_policy(tmp_path):
    rows = [{"id": "x", "problem": "Evaluate left to right modulo 10: 3 + 4", "target_answer": "no answer here",
             "target_summary": ""}]
    keep = next(step(tmp_path, unverifiable="keep", max_attempts=3).process(rows))[0]
    assert keep["inversion_accepted"] and keep["inversion_verdict"] is None
    assert len(keep["inversion_attempts"]) == 3  # still resampled, hoping for a verifiable trace
    rej = next(step(tmp_path, unverifiable="reject", max_attempts=2).process(rows))[0]
    assert not rej["inversion_accepted"] and rej["inversion_reason"].startswith("cannot verify")


def test_generation_failures_keep_their_reason(toy_server, tmp_path):
    srv = toy_server(p500=1.0)
    s = InvertTraces(model={"backend": "openai-chat", "model": "m", "base_url": srv.base_url, "max_retries": 0},
                     cache_path=str(tmp_path / "c.sqlite"), max_attempts=2)
    s.load()
    out = next(s.process(toy_rows(3)))
    assert all(not r["inversion_accepted"] and r["inversion_reason"].startswith("generation failed") for r in out)


def _pipeline_cfg(tmp_path, inverter: dict, n=60, **invert):
    return load_config(None, {"data": {"toy": {"n_train": n, "n_ops": 5, "inverter_error_rate": 0.3,
                                               "inverter_forces_answer": 0.3}},
                              "output": {"dir": str(tmp_path / "out")}, "models": {"inverter": inverter},
                              "invert": invert})


@pytest.mark.slow
def test_invert_pipeline_on_the_toy_world(tmp_path):
    import datasets

    from trace_inversion.pipelines.invert import run_invert
    from trace_inversion.pipelines.query_target import run_query_target

    cfg = _pipeline_cfg(tmp_path, {"backend": "toy", "model": "toy-inverter"}, max_attempts=4)
    run_query_target(cfg)
    stats = run_invert(cfg)
    folder = tmp_path / "out" / "inversion"
    kept = datasets.load_dataset(str(folder), "inverted", split="train")
    rejected = pl.read_parquet(split_path(folder, "rejected"))
    assert kept.num_rows + rejected.height == 60 == stats["rows_in"]
    assert stats["first_sample"]["inconsistent"] > 0 and stats["kept"] > stats["first_sample"]["consistent"]
    assert all(json.loads(a)[-1]["verdict"] is True for a in kept["inversion_attempts"])
    assert stats["overlap_kept"]["n"] == kept.num_rows and 0 < stats["overlap_kept"]["rougeL"] <= 100
    assert 0 <= stats["toy_all_steps_correct"]["kept"] <= 1
    assert sum(stats["rejected_reasons"].values()) == rejected.height
    unf = pl.read_parquet(split_path(folder, "unfiltered"))
    assert unf.height == 60
    # rerun: every sample replays from the request cache
    from trace_inversion.cache import RequestCache

    before = len(RequestCache(cfg.resolved_cache_path))
    run_invert(cfg)
    assert len(RequestCache(cfg.resolved_cache_path)) == before


@pytest.fixture(scope="session")
def trained_inverter(tiny_lm_dir, tmp_path_factory):
    """A tiny inverter trained for real with the tiny recipe on toy surrogate data."""
    from trace_inversion.data import load_rows
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
    from trace_inversion.training import run_sft

    d = tmp_path_factory.mktemp("inverter")
    cfg = load_config(None, {"data": {"toy": {"n_train": 1024, "n_ops": 5}}, "output": {"dir": str(d / "out")}})
    run_build_inverter_data(cfg, load_rows(cfg.data))
    res = run_sft("tiny/inverter.yaml", {"model_name_or_path": str(tiny_lm_dir),
                                         "dataset_name": str(d / "out" / "inverter_data"),
                                         "output_dir": str(d / "model"), "max_steps": 150}, d / "run")
    losses = [l["loss"] for l in res["losses"] if "loss" in l]
    assert losses[-1] < losses[0] / 3
    return d / "model"


def _run_with(tmp_path, inverter: dict, n=24):
    from trace_inversion.pipelines.invert import run_invert
    from trace_inversion.pipelines.query_target import run_query_target

    cfg = _pipeline_cfg(tmp_path, inverter, n=n, max_attempts=2, max_model_len=512)
    run_query_target(cfg)
    stats = run_invert(cfg)
    folder = tmp_path / "out" / "inversion"
    kept = pl.read_parquet(split_path(folder, "inverted"))
    rejected = pl.read_parquet(split_path(folder, "rejected"))
    assert kept.height + rejected.height == n
    return stats, kept


@pytest.mark.slow
def test_invert_with_trained_tiny_inverter_transformers(trained_inverter, tmp_path):
    stats, kept = _run_with(tmp_path, {"backend": "transformers", "model": str(trained_inverter),
                                       "sampling": {"max_new_tokens": 48, "temperature": 0.7, "top_k": 50}})
    first = stats["first_sample"]
    assert first["consistent"] + first["inconsistent"] > 0  # it learned the trace format: verdicts are computable
    assert kept.height > 0 and all(re.match(r"\d+[+*-]\d+->\d+", t) for t in kept["inverted_trace"])


@pytest.mark.slow
def test_invert_with_trained_tiny_inverter_vllm(trained_inverter, tmp_path):
    stats, kept = _run_with(tmp_path, {"backend": "vllm", "model": str(trained_inverter),
                                       "sampling": {"max_new_tokens": 48, "temperature": 0.7, "top_k": 50}})
    first = stats["first_sample"]
    assert first["consistent"] + first["inconsistent"] > 0
    assert kept.height > 0 and all(re.match(r"\d+[+*-]\d+->\d+", t) for t in kept["inverted_trace"])
