"""Hub publishing against the local Hub contract server, through the real huggingface_hub
client and the CLI (HF_HUB_DISABLE_XET=1, LFS uploads, token only from the environment)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import HUB_TEST_TOKEN

from trace_inversion.hub_cards.card import card_context, write_card
from trace_inversion.data.io import write_split


def _stage(folder, n, tag="a"):
    write_split(folder, "inverted", [{"id": str(i), "problem": f"{tag}{i}", "inverted_trace": "t"} for i in range(n)])
    write_split(folder, "rejected", [{"id": "r", "inversion_reason": "inconsistent"}])
    write_card(folder, card_context("t: invert", "invert", {"name": "t"}, {"rows_in": n + 1}, {"inverted": n, "rejected": 1}))


def _env(hub, token=HUB_TEST_TOKEN):
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0")
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return env


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "trace_inversion.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


READ_BACK = """
import sys, json, datasets
from huggingface_hub import snapshot_download
out = {}
for tag in sys.argv[2:]:
    d = snapshot_download(sys.argv[1], repo_type="dataset", revision=tag, local_dir=f"{sys.argv[1].replace('/', '_')}-{tag}")
    ds = datasets.load_dataset(d, "inverted", split="train")
    out[tag] = sorted(ds["problem"])
print(json.dumps(out))
"""


def test_hub_release_round_trip_tags_and_immutability(hub_server, tmp_path):
    stage = tmp_path / "stage"
    env = _env(hub_server)
    _stage(stage, 3, "a")
    r = cli(env, "publish", str(stage), "--hub", "lab/traces")
    assert r.returncode == 0, r.stderr[-3000:]
    v1 = json.loads(r.stdout)
    assert v1["version"] == "v1" and v1["private"] is True
    r = cli(env, "publish", str(stage), "--hub", "lab/traces")  # same data: no new release
    assert json.loads(r.stdout) == {**{k: v1[k] for k in ("repo", "version", "commit")}, "unchanged": True, "hub": True}
    _stage(stage, 5, "b")
    v2 = json.loads(cli(env, "publish", str(stage), "--hub", "lab/traces").stdout)
    assert v2["version"] == "v2" and v2["commit"] != v1["commit"]
    r = cli(env, "publish", str(stage), "--hub", "lab/traces", "--version", "v1")
    assert r.returncode == 2 and "already exists" in r.stderr and "fix: publish as v3" in r.stderr

    state = hub_server.get("/stats")
    repo = state["repos"]["lab/traces"]
    assert repo["private"] is True and repo["tags"] == {"v1": v1["commit"], "v2": v2["commit"]}
    # parquet shards went through LFS: 2 in v1, in v2 only the changed one (same bytes are never re-sent)
    assert state["calls"]["PUT /lfs/{oid}"] == 3
    assert state["calls"]["POST /api/validate-yaml"] >= 3  # the card was validated by the "Hub"

    # tag pinning: each tag returns exactly its release (old shards were deleted in v2's commit)
    r = subprocess.run([sys.executable, "-c", READ_BACK, "lab/traces", "v1", "v2"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"v1": ["a0", "a1", "a2"], "v2": ["b0", "b1", "b2", "b3", "b4"]}

    # a private repo is not readable without the token
    r = subprocess.run([sys.executable, "-c", READ_BACK, "lab/traces", "v1"], capture_output=True, text=True,
                       env=_env(hub_server, token=None), cwd=tmp_path / "stage", timeout=300)
    assert r.returncode != 0


def test_hub_publish_needs_a_token_and_a_valid_repo_id(hub_server, tmp_path):
    stage = tmp_path / "stage"
    _stage(stage, 2)
    before = hub_server.get("/stats")["calls"]
    r = cli(_env(hub_server, token=None), "publish", str(stage), "--hub", "lab/traces")
    assert r.returncode == 2 and "HF_TOKEN is not set" in r.stderr
    r = cli(_env(hub_server), "publish", str(stage), "--hub", "../etc")
    assert r.returncode == 2 and "owner/name" in r.stderr
    r = cli(_env(hub_server, token="hf_wrong"), "publish", str(stage), "--hub", "lab/traces")
    assert r.returncode == 2 and "Hub request failed" in r.stderr and "hf_wrong" not in r.stderr
    after = hub_server.get("/stats")["calls"]
    assert "POST /api/datasets/{ns}/{name}/commit/{rev}" not in after and "lab/traces" not in hub_server.get("/stats")["repos"]
    assert before.get("POST /api/repos/create", 0) == 0


def test_tag_failure_after_commit_is_resumed_without_reupload(hub_server, tmp_path, monkeypatch):
    """A crash between the commit and the tag: the rerun tags the committed content."""
    from huggingface_hub import HfApi

    from trace_inversion.hub_cards.publish import ReleaseError, publish_hub

    stage = tmp_path / "stage"
    _stage(stage, 2)
    for k, v in _env(hub_server).items():
        monkeypatch.setenv(k, v)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", hub_server.url)
    monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True, raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False, raising=False)
    real = HfApi.create_tag

    def boom(self, *a, **kw):
        raise ReleaseError("simulated crash before tagging")

    monkeypatch.setattr(HfApi, "create_tag", boom)
    with pytest.raises(ReleaseError, match="simulated"):
        publish_hub(stage, "lab/crash")
    commits = hub_server.get("/stats")["repos"]["lab/crash"]["commits"]
    monkeypatch.setattr(HfApi, "create_tag", real)
    rel = publish_hub(stage, "lab/crash")
    repo = hub_server.get("/stats")["repos"]["lab/crash"]
    assert rel["version"] == "v1" and repo["tags"] == {"v1": rel["commit"]}
    assert repo["commits"] == commits  # nothing uploaded again


@pytest.mark.skipif(not (os.environ.get("HF_TOKEN") and os.environ.get("TI_LIVE_HUB_REPO")),
                    reason="opt-in live Hub test: set HF_TOKEN and TI_LIVE_HUB_REPO=owner/name (a scratch repo)")
def test_live_hub_publish(tmp_path):
    """Against the real Hub: publish a private release, read it back at its tag."""
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0")
    env.pop("HF_ENDPOINT", None)
    stage = tmp_path / "stage"
    _stage(stage, 3, f"live{os.getpid()}")
    r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", "publish", str(stage), "--hub",
                        os.environ["TI_LIVE_HUB_REPO"]], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    tag = json.loads(r.stdout)["version"]
    r = subprocess.run([sys.executable, "-c", READ_BACK, os.environ["TI_LIVE_HUB_REPO"], tag], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])[tag][0].startswith("live")
