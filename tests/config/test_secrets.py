"""Secrets never reach anything a run writes: API keys and tokens set in the environment
are used (the servers saw them) but appear in no output, card, log, cache, saved config,
release (git objects decompressed) or parquet value (decoded)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import HUB_TEST_TOKEN

pytestmark = pytest.mark.slow

TARGET_KEY = "sk-live-" + hashlib.sha256(b"target").hexdigest()[:40]


def _text_of(path: Path) -> str:
    if path.suffix == ".parquet":
        try:
            return pl.read_parquet(path).write_csv()
        except Exception:  # noqa: BLE001 - not a readable parquet: grep its bytes
            pass
    return path.read_bytes().decode("utf-8", "replace")


def _git_objects(repo: Path) -> str:
    r = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=repo, capture_output=True)
    return r.stdout.decode("utf-8", "replace")


def test_keys_and_tokens_never_written(toy_server, hub_server, tmp_path):
    srv = toy_server()
    out = tmp_path / "run"
    cfg = {"name": "secrets", "data": {"source": "toy", "toy": {"n_train": 40, "n_test": 0}},
           "models": {"target": {"backend": "openai-responses", "model": "toy-target", "base_url": srv.base_url,
                                 "api_key_env": "TI_TARGET_KEY", "reasoning_effort": "low", "reasoning_summary": "auto"},
                      "surrogate": {"backend": "toy", "model": "toy-surrogate"},
                      "compressor": {"backend": "toy", "model": "toy-compressor"},
                      "inverter": {"backend": "toy", "model": "toy-inverter"}},
           "output": {"dir": str(out)}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, TI_TARGET_KEY=TARGET_KEY, HF_TOKEN=HUB_TEST_TOKEN, HF_ENDPOINT=hub_server.url,
               HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0", OPENAI_API_KEY=TARGET_KEY,
               DISTILABEL_CACHE_DIR=str(tmp_path / "distilabel"), HF_HOME=str(tmp_path / "hf_home"))
    logs = []
    for args in (["query-target", "--config", str(path)], ["query-target", "--config", str(path), "--dry-run"],
                 ["build-inverter-data", "--config", str(path)], ["invert", "--config", str(path)],
                 ["config", "show", str(path)],
                 ["publish", str(out / "inversion"), "--repo", str(tmp_path / "releases")],
                 ["publish", str(out / "inversion"), "--hub", "lab/secrets"]):
        r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", *args], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, (args, r.stderr[-2000:])
        logs.append(r.stdout + r.stderr)
    # the secrets were really used
    assert hashlib.sha256(TARGET_KEY.encode()).hexdigest() in srv.get("/stats")["auth_sha256"]
    assert hub_server.get("/stats")["repos"]["lab/secrets"]["tags"]
    # ... and are nowhere in what the run wrote
    corpus = {"captured stdout/stderr": "\n".join(logs),
              "release git objects": _git_objects(tmp_path / "releases")}
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "logs" not in p.relative_to(tmp_path).parts]
    assert len(files) > 30
    for p in files:
        corpus[str(p.relative_to(tmp_path))] = _text_of(p)
    for secret in (TARGET_KEY, HUB_TEST_TOKEN):
        leaks = [name for name, text in corpus.items() if secret in text]
        assert not leaks, (secret[:8], leaks)
    card = (out / "inversion" / "README.md").read_text()
    assert "TI_TARGET_KEY" in card  # the variable's *name* is recorded, so the run is reproducible
