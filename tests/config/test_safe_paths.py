"""Nothing outside the folders a user names is written, committed or deleted.

Every test here works from *inside another git repository* with *relative* paths,
the way a user runs the project from their own checkout: the enclosing repository
must come out byte-for-byte unchanged."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trace_inversion.hub_cards.publish import ReleaseError, checkout_release, list_tags, publish_local
from trace_inversion.data.io import read_split, write_split
from trace_inversion.config.safe_paths import MARKER, PathSafetyError, claim_dir, is_owned


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def make_user_repo(path: Path) -> Path:
    """A user's project: a commit, a tag, an origin remote, an ignored runs/ folder."""
    origin = path.parent / (path.name + "-origin.git")
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "u@example.com")
    git(path, "config", "user.name", "user")
    (path / "README.md").write_text("my project\n")
    (path / ".gitignore").write_text("runs/\nreleases/\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    git(path, "tag", "mine")
    git(path, "remote", "add", "origin", str(origin))
    git(path, "push", "-q", "origin", "main", "mine")
    return path


def repo_state(repo: Path) -> str:
    """Everything about a repository a stray git command could change."""
    parts = [git(repo, "rev-parse", "HEAD"), git(repo, "show-ref"), git(repo, "status", "--porcelain"),
             git(repo, "ls-files", "-s"), git(repo, "log", "--all", "--oneline"),
             hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest(),
             git(repo, "ls-remote", "origin")]
    return "\n".join(parts)


def stage(folder, n):
    from trace_inversion.hub_cards.card import card_context, write_card

    write_split(folder, "inverted", [{"id": str(i), "x": i} for i in range(n)])
    write_card(folder, card_context("t: invert", "invert", {"name": "t"}, {"rows_in": n}, {"inverted": n}))


def test_publish_with_relative_paths_inside_a_user_repository(tmp_path, monkeypatch):
    user = make_user_repo(tmp_path / "project")
    before = repo_state(user)
    monkeypatch.chdir(user)
    stage(Path("runs/demo/seed0/inversion"), 3)
    rel = publish_local("runs/demo/seed0/inversion", "runs/demo/releases/inversion-seed0", message="demo")
    assert rel["version"] == "v1" and Path(rel["repo"]).is_absolute()
    stage(Path("runs/demo/seed0/inversion"), 5)
    assert publish_local("runs/demo/seed0/inversion", "runs/demo/releases/inversion-seed0")["version"] == "v2"
    assert list_tags("runs/demo/releases/inversion-seed0") == ["v1", "v2"]
    # the release repository has its own history; the user's repository is untouched
    assert len(git(user / "runs/demo/releases/inversion-seed0", "log", "--oneline").splitlines()) == 3
    assert repo_state(user) == before
    assert "demo" not in git(user, "log", "--all", "--format=%s")
    # through the CLI too, as a subprocess from inside the user's repository
    stage(Path("runs/other"), 2)
    r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", "publish", "runs/other", "--repo", "releases/x"],
                       capture_output=True, text=True, cwd=user)
    assert r.returncode == 0, r.stderr
    assert list_tags(user / "releases/x") == ["v1"]
    assert repo_state(user) == before


def test_git_never_walks_up_into_the_enclosing_repository(tmp_path, monkeypatch):
    """A release folder that looks like a repository but is not one is an error naming
    both paths; before the fix, git commands walked up to the user's repository."""
    from trace_inversion.hub_cards import publish as pub

    user = make_user_repo(tmp_path / "project")
    before = repo_state(user)
    fake = user / "runs" / "fake"
    fake.mkdir(parents=True)
    (fake / "HEAD").write_text("not a repository\n")  # looks like a bare repository
    stage(user / "runs" / "s", 1)
    with pytest.raises(ReleaseError, match="resolved"):
        publish_local(user / "runs" / "s", fake)
    with pytest.raises(ReleaseError):
        pub._git(["status"], user / "runs")  # not a repository: never the enclosing one
    monkeypatch.setenv("GIT_DIR", str(user / ".git"))  # e.g. run from one of the user's git hooks
    assert publish_local(user / "runs" / "s", user / "runs" / "rel")["version"] == "v1"
    assert repo_state(user) == before


def test_a_non_empty_folder_is_not_a_release_repository(tmp_path):
    stage(tmp_path / "s", 1)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ReleaseError, match="not empty"):
        publish_local(tmp_path / "s", tmp_path / "notes")
    with pytest.raises(PathSafetyError, match="input"):
        publish_local(tmp_path / "s", tmp_path / "s" / "rel")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_claim_dir_refuses_foreign_folders_and_inputs(tmp_path):
    mine = claim_dir(tmp_path / "new")
    assert is_owned(mine) and (mine / MARKER).exists()
    (mine / "x").write_text("1")
    assert claim_dir(tmp_path / "new", empty=True) == mine and not (mine / "x").exists()  # ours: replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(PathSafetyError, match="--force"):
        claim_dir(foreign)
    with pytest.raises(PathSafetyError, match="--force"):
        claim_dir(foreign, empty=True)
    assert (foreign / "thesis.tex").exists()
    claim_dir(foreign, force=True)  # writing beside the user's files, on purpose
    assert (foreign / "thesis.tex").exists()
    src = claim_dir(tmp_path / "src")
    for bad in (src, src / "inside", tmp_path):  # is, inside, contains the input
        with pytest.raises(PathSafetyError, match="input"):
            claim_dir(bad, inputs=[src], empty=True, force=True)
    assert src.exists()
    assert claim_dir(tmp_path / "empty_existing").exists()  # an empty folder is fine


def test_checkout_release_guards_its_destination(tmp_path):
    stage(tmp_path / "s", 2)
    publish_local(tmp_path / "s", tmp_path / "rel")
    dest = checkout_release(tmp_path / "rel", "v1", tmp_path / "co")
    assert is_owned(dest) and len(read_split(dest, "inverted")) == 2
    checkout_release(tmp_path / "rel", "v1", tmp_path / "co")  # its own checkout: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("a")
    with pytest.raises(PathSafetyError, match="--force"):
        checkout_release(tmp_path / "rel", "v1", tmp_path / "mine")
    assert (tmp_path / "mine" / "a.txt").exists()
    with pytest.raises(PathSafetyError, match="input"):
        checkout_release(tmp_path / "rel", "v1", tmp_path / "rel" / "data", force=True)
    assert list_tags(tmp_path / "rel") == ["v1"]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "trace_inversion.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_output_guards(tmp_path):
    """tiny-model, toy, evaluate-style outputs and review pull: refusal without --force,
    inputs refused even with it; the error names the path and the flag."""
    foreign = tmp_path / "models"
    foreign.mkdir()
    (foreign / "weights.bin").write_text("someone else's model")
    r = cli("tiny-model", "-o", str(foreign), "--vocab-size", "300")
    assert r.returncode == 2 and "--force" in r.stderr and str(foreign) in r.stderr
    assert (foreign / "weights.bin").read_text() == "someone else's model"
    r = cli("toy", "-o", str(foreign), "--n-train", "5", "--n-test", "2")
    assert r.returncode == 2 and "--force" in r.stderr
    r = cli("toy", "-o", str(foreign), "--n-train", "5", "--n-test", "2", "--force")
    assert r.returncode == 0 and (foreign / "weights.bin").exists() and (foreign / "train.parquet").exists()
    r = cli("query-target", "--output", str(foreign), "--set", "data.toy.n_train=3")
    assert r.returncode == 0, r.stderr  # the folder is the project's now (claimed with --force above)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("k")
    r = cli("query-target", "--output", str(other), "--set", "data.toy.n_train=3")
    assert r.returncode == 2 and "--force" in r.stderr and not (other / "target_query").exists()


def test_review_pull_never_replaces_its_input(tmp_path):
    from trace_inversion.hub_cards.review import build_reviewed

    stage(tmp_path / "inv", 3)
    for bad in (tmp_path / "inv", tmp_path / "inv" / "reviewed", tmp_path):
        with pytest.raises(PathSafetyError, match="input"):
            build_reviewed(tmp_path / "inv", {}, bad, force=True)
    assert len(read_split(tmp_path / "inv", "inverted")) == 3
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "f").write_text("x")
    with pytest.raises(PathSafetyError, match="--force"):
        build_reviewed(tmp_path / "inv", {}, tmp_path / "theirs")
    stats = build_reviewed(tmp_path / "inv", {}, tmp_path / "reviewed")
    assert stats["unreviewed"] == 3
    assert build_reviewed(tmp_path / "inv", {}, tmp_path / "reviewed")["kept"] == 3  # its own output: replaced
