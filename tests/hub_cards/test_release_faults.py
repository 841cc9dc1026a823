"""A disk-full or permission error while writing a release leaves the previous release
intact (tags, files, loadability), and the error says what happened and the fix.

Disk full: the release repository lives on a 1 MiB tmpfs (when this machine lets root
mount one); elsewhere the publish runs under a real kernel write limit (RLIMIT_FSIZE),
so writes fail mid-publish with EFBIG. Permissions: the publish runs as an unprivileged
user (when the tests run as root, whom permission bits do not stop) or against a
read-only repository.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trace_inversion.hub_cards.card import card_context, write_card
from trace_inversion.hub_cards.publish import list_tags, load_release, publish_local
from trace_inversion.data.io import read_split, write_split

pytestmark = pytest.mark.slow

PUBLISH = ("import sys, resource, signal\n"
           "from trace_inversion.hub_cards.publish import publish_local, ReleaseError\n"
           "if len(sys.argv) > 3:\n"
           "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
           "    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))\n"
           "try:\n"
           "    print(publish_local(sys.argv[1], sys.argv[2]))\n"
           "except ReleaseError as e:\n"
           "    print('ReleaseError:', e); sys.exit(3)\n")


def _stage(folder: Path, n: int, noise_kb: int = 0):
    rng = np.random.default_rng(n)
    rows = [{"id": str(i), "problem": f"p{i}",
             "blob": rng.bytes(noise_kb * 1024 // max(n, 1)).hex() if noise_kb else ""} for i in range(n)]
    write_split(folder, "inverted", rows)
    write_card(folder, card_context("t: invert", "invert", {"name": "t"}, {"rows_in": n}, {"inverted": n}))


def _assert_v1_intact(repo: Path, tmp_path: Path):
    assert list_tags(repo) == ["v1"]
    assert len(read_split(repo, "inverted")) == 3  # the checked-out tree is still v1
    assert load_release(repo, "v1", "inverted", workdir=tmp_path / "co").num_rows == 3
    fsck = subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_during_publish_keeps_the_previous_release(tmp_path):
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "1m")
    try:
        repo = disk / "releases"
        small, big = tmp_path / "small", tmp_path / "big"
        _stage(small, 3)
        assert publish_local(small, repo)["version"] == "v1"
        _stage(big, 50, noise_kb=3000)  # ~3 MB of incompressible data: more than the disk (or limit) allows
        args = [sys.executable, "-c", PUBLISH, str(big), str(repo)]
        if not mounted:
            used = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
            args.append(str(max(200_000, used)))  # the kernel refuses writes past this size
        r = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert r.returncode == 3, (mounted, r.stdout[-1500:], r.stderr[-1500:])
        msg = r.stdout.lower()
        assert "previous release is intact" in msg or "no space" in msg or "too large" in msg, r.stdout
        _assert_v1_intact(repo, tmp_path)
        assert not list(disk.glob(".release-*"))  # the staging clone was cleaned up
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_permission_error_during_publish_keeps_the_previous_release(tmp_path):
    repo = tmp_path / "releases"
    small, newer = tmp_path / "small", tmp_path / "newer"
    _stage(small, 3)
    assert publish_local(small, repo)["version"] == "v1"
    _stage(newer, 5)
    if os.geteuid() == 0:
        # root ignores permission bits: publish as an unprivileged user who can read, not write
        os.chmod(tmp_path, 0o755)
        for p in [tmp_path, *tmp_path.parents]:
            if p == Path("/"):
                break
            os.chmod(p, os.stat(p).st_mode | 0o005)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", PUBLISH,
               str(newer), str(repo)]
        # (git's ownership check would stop it before any write: trust the repo, so the write itself fails)
        env = dict(os.environ, HOME=str(tmp_path), GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_COUNT="1",
                   GIT_CONFIG_KEY_0="safe.directory", GIT_CONFIG_VALUE_0="*")
    else:
        os.chmod(repo, 0o555)
        os.chmod(repo / ".git" / "objects", 0o555)
        cmd, env = [sys.executable, "-c", PUBLISH, str(newer), str(repo)], None
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 3, (r.stdout[-1500:], r.stderr[-1500:])
    assert "ReleaseError" in r.stdout and "ermission denied" in r.stdout, r.stdout
    _assert_v1_intact(repo, tmp_path)
