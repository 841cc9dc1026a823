"""The command line: help everywhere, config errors before any call, real pipeline runs."""

import json
import subprocess
import sys

import polars as pl
import pytest

from trace_inversion.data.io import split_path
import yaml

PIPELINES = ["demo", "query-target"]


def cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_help_lists_pipelines():
    out = cli("--help").stdout
    for name in PIPELINES + ["config", "toy", "tiny-model"]:
        assert name in out
    for name in PIPELINES + ["config", "toy", "tiny-model", "cache"]:
        assert "usage: trace-inversion " + name in cli(name, "--help").stdout


def test_installed_entry_point():
    from pathlib import Path

    exe = Path(sys.executable).parent / "trace-inversion"  # beside the interpreter, PATH or not
    assert exe.exists(), "the console script is installed with the package"
    assert "query-target" in subprocess.run([str(exe), "--help"], capture_output=True, text=True).stdout


def test_config_validate_reports_field_and_fix(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {"target": {"backend": "toy", "model": "toy-target",
                                                         "sampling": {"temperature": 5}}}}))
    r = cli("config", "validate", str(bad), check=False)
    assert r.returncode == 2
    assert "models.target.sampling.temperature" in r.stderr and "fix:" in r.stderr
    assert "valid config" in cli("config", "validate").stdout
    shown = yaml.safe_load(cli("config", "show").stdout)
    assert shown["data"]["source"] == "toy"
    assert "properties" in json.loads(cli("config", "schema").stdout)


def test_bad_config_fails_before_any_model_call(toy_server, tmp_path):
    srv = toy_server()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": str(tmp_path / "none.parquet")},
                                   "models": {"target": {"backend": "openai-chat", "model": "m", "base_url": srv.base_url}}}))
    r = cli("query-target", "--config", str(cfg), check=False)
    assert r.returncode == 2 and "data.source" in r.stderr
    assert srv.stats()["total"] == 0


def test_bad_data_fails_before_any_model_call(toy_server, tmp_path):
    srv = toy_server()
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "a", "problem": "x"}\n{"id": "a", "problem": "y"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": str(data)},
                                   "models": {"target": {"backend": "openai-chat", "model": "m", "base_url": srv.base_url}}}))
    r = cli("query-target", "--config", str(cfg), check=False)
    assert r.returncode == 2 and "duplicate id 'a'" in r.stderr
    assert srv.stats()["total"] == 0


def test_toy_and_tiny_model_tools(tmp_path):
    cli("toy", "-o", str(tmp_path / "toy"), "--n-train", "20", "--n-test", "5")
    assert pl.read_parquet(tmp_path / "toy" / "train.parquet").height == 20
    cli("tiny-model", "-o", str(tmp_path / "m"), "--vocab-size", "300")
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "tokenizer.json").exists()


@pytest.mark.slow
def test_query_target_pipeline_with_fault_storm_loses_no_row(toy_server, tmp_path):
    """Every row ends in the output or in failures with a reason."""
    srv = toy_server(p429=0.15, p500=0.1, p_malformed=0.05, p_empty_summary=0.1, p_refusal=0.05, retry_after=0.01)
    data = tmp_path / "problems.parquet"
    cli("toy", "-o", str(tmp_path / "toy"), "--n-train", "150", "--n-test", "0")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"source": str(tmp_path / "toy" / "train.parquet")},
        "models": {"target": {"backend": "openai-chat", "model": "toy-target", "base_url": srv.base_url,
                              "max_retries": 1, "concurrency": 8}},
        "output": {"dir": str(tmp_path / "out")}}))
    r = cli("query-target", "--config", str(cfg))
    stats = json.loads(r.stdout[r.stdout.index("{"):])
    ok = pl.read_parquet(split_path(tmp_path / "out/target_query", "target"))
    failed = pl.read_parquet(split_path(tmp_path / "out/target_query", "failures"))
    assert ok.height + failed.height == 150
    assert set(ok["id"]) | set(failed["id"]) == set(pl.read_parquet(tmp_path / "toy/train.parquet")["id"])
    assert failed.height > 0 and failed["query_error"].null_count() == 0
    assert stats["failures"] == failed.height and sum(stats["failure_reasons"].values()) == failed.height


def test_help_and_config_tools_load_no_heavy_library():
    """`--help`, `config` and `cache` stay fast: distilabel, torch, transformers, polars and
    vLLM load only inside the commands that use them."""
    import subprocess
    import sys

    code = ("import sys; from trace_inversion import cli; cli.build_parser(); "
            "print(sorted(m for m in ('distilabel', 'torch', 'transformers', 'polars', 'vllm', 'datasets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr[-2000:])
