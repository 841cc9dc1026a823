"""Local releases: a stage folder published as a versioned git repository.

The release repository is laid out like a Hub dataset repo (``data/<config>/*.parquet``
and a README card with ``configs:``). Each release is one commit and one annotated tag
(``v1``, ``v2``, ...). A version is immutable: publishing an existing tag is refused.
A failed publish leaves no half release: the files are staged in a temporary clone and
only pushed (commit + tag together, atomically) when everything succeeded.
``datasets.load_dataset(repo_path)`` loads the checked-out release; ``load_release``
checks out an exact tag into a folder and loads it from there.

Git runs only on repositories this module owns: every path is made absolute first,
each command runs as ``git -C <repo>`` with discovery stopped at the repository's
parent (a folder that is not itself a repository is an error, never the enclosing
repository of the user's project), and before writing, the repository git resolved
is checked to be the one created or given; otherwise it stops naming both paths.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from trace_inversion.errors import UserError
from trace_inversion.config.safe_paths import MARKER, absolute, check_disjoint, claim_dir, mark_owned

_TAG = re.compile(r"^v[0-9]+(\.[0-9]+)*$")
RELEASE_EXTRAS = ("stats.json", "card.json")
TOKEN_ENV = "HF_TOKEN"  # the environment variable that holds the Hub token, by default


class ReleaseError(UserError):
    pass


# Inherited git settings that would point a command at another repository (e.g. when
# the project runs inside a git hook of the user's repository).
_GIT_REPO_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
                 "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_CEILING_DIRECTORIES")


def _git(args: list[str], repo: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run git on exactly ``repo`` (an absolute path): ``git -C repo`` with discovery
    stopped at ``repo``'s parent, so a folder that is not itself a repository is an
    error, never the enclosing repository of the user's project."""
    repo = Path(repo)
    if not repo.is_absolute():
        raise ReleaseError(f"internal error: git on a relative path {repo}")
    env = {k: v for k, v in os.environ.items() if k not in _GIT_REPO_ENV}
    env.update(GIT_AUTHOR_NAME="trace-inversion", GIT_AUTHOR_EMAIL="trace-inversion@localhost",
               GIT_COMMITTER_NAME="trace-inversion", GIT_COMMITTER_EMAIL="trace-inversion@localhost",
               GIT_CEILING_DIRECTORIES=str(repo.parent), GIT_TERMINAL_PROMPT="0")
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)} in {repo} failed: {r.stderr.strip()[:500]}")
    return r


def _git_dir(repo: Path) -> Optional[Path]:
    """The repository git resolves at ``repo`` (never one above it), or None."""
    r = _git(["rev-parse", "--absolute-git-dir"], repo, check=False)
    return Path(r.stdout.strip()).resolve() if r.returncode == 0 else None


def _require_own_repo(repo: Path) -> None:
    """Stop unless git, run at ``repo``, works on ``repo``'s own repository."""
    found = _git_dir(repo)
    if found not in (repo / ".git", repo):  # a work tree, or a bare repository
        raise ReleaseError(f"git resolved {found or 'no repository'} for {repo}, not {repo}'s own repository; "
                           "nothing was written; fix: point --repo at a release repository or a new folder")


def _ensure_repo(repo: Path) -> None:
    if (repo / ".git").exists() or (repo / "HEAD").exists():
        _require_own_repo(repo)
        return
    if repo.exists() and any(repo.iterdir()):
        raise ReleaseError(f"{repo} exists, is not empty and is not a release repository; fix: choose a new "
                           "folder for the release repository")
    repo.mkdir(parents=True, exist_ok=True)
    _git(["init", "-q", "-b", "main"], repo)
    _require_own_repo(repo)
    _git(["config", "receive.denyCurrentBranch", "updateInstead"], repo)
    (repo / ".gitattributes").write_text("*.parquet binary\n")
    _git(["add", ".gitattributes"], repo)
    _git(["commit", "-q", "-m", "Initialise release repository"], repo)


def list_tags(repo: str | os.PathLike) -> list[str]:
    repo = absolute(repo)
    if not ((repo / ".git").exists() or (repo / "HEAD").exists()):
        return []
    return sorted_versions(_git(["tag", "--list", "v*"], repo).stdout.split())


def sorted_versions(names) -> list[str]:
    """The release tags (v1, v2.1, ...) among ``names``, oldest first."""
    return sorted((t for t in names if _TAG.match(t)), key=lambda t: [int(x) for x in t[1:].split(".")])


def version_after(tags: list[str]) -> str:
    """The version that follows sorted release ``tags``."""
    return f"v{int(tags[-1][1:].split('.')[0]) + 1}" if tags else "v1"


def check_version(version: Optional[str]) -> None:
    if version is not None and not _TAG.match(version):
        raise ReleaseError(f"version {version!r} is not a tag like v1 or v2.1; fix: use v<number>")


def next_version(repo: str | os.PathLike) -> str:
    return version_after(list_tags(repo))


def publish_local(stage_folder: str | os.PathLike, repo: str | os.PathLike, version: Optional[str] = None,
                  message: Optional[str] = None, skip_unchanged: bool = True) -> dict:
    """Publish ``stage_folder`` (data/ + README.md) as release ``version`` of ``repo``.

    With ``skip_unchanged`` (default) and no explicit version, content identical to the
    latest release is not released again: that release is returned (``unchanged``).
    Any write failure (disk full, permissions) raises ReleaseError and leaves the
    repository at its previous release."""
    try:
        return _publish_local(absolute(stage_folder), absolute(repo), version, message, skip_unchanged)
    except OSError as e:
        if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
            e = OSError(str(e.args[0][0][2]))  # copytree: report the first failed copy
        raise ReleaseError(f"writing the release failed: {e.strerror or e} ({e.filename or repo}); the previous "
                           "release is intact; fix: free disk space or fix permissions, then publish again") from e


def _publish_local(src: Path, repo: Path, version: Optional[str], message: Optional[str],
                   skip_unchanged: bool) -> dict:
    check_stage_folder(src)
    check_disjoint(repo, [src], "publish into")
    _ensure_repo(repo)
    version = version or next_version(repo)
    check_version(version)
    if version in list_tags(repo):
        raise ReleaseError(f"release {version} already exists in {repo}; versions are immutable; fix: publish as "
                           f"{next_version(repo)}")
    # The staging clone lives inside the release repository's own git folder: nothing
    # is written beside it, and a disk that fills up is the repository's disk.
    with tempfile.TemporaryDirectory(prefix="trace-inversion-release-", dir=_git_dir(repo)) as tmp:
        work = Path(tmp).resolve() / "work"
        _git(["clone", "-q", str(repo), str(work)], Path(tmp).resolve())
        _require_own_repo(work)  # every later write happens in this clone, and only there
        for old in ("data", "README.md"):
            p = work / old
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        shutil.copytree(src / "data", work / "data", ignore=shutil.ignore_patterns(".*"))
        shutil.copy2(src / "README.md", work / "README.md")
        for extra in RELEASE_EXTRAS:
            if (src / extra).exists():
                shutil.copy2(src / extra, work / extra)
        _git(["add", "-A"], work)
        tags = list_tags(repo)
        # data decides: a card differing only in timings is not a new release
        if skip_unchanged and tags and not _git(["status", "--porcelain", "--", "data"], work).stdout.strip():
            head = _git(["rev-parse", "HEAD"], work).stdout.strip()
            if _git(["rev-parse", f"{tags[-1]}^{{commit}}"], repo).stdout.strip() == head:
                return {"repo": str(repo), "version": tags[-1], "commit": head, "unchanged": True}
        _git(["commit", "-q", "--allow-empty", "-m", message or f"Release {version}"], work)
        _git(["tag", "-a", version, "-m", message or f"Release {version}"], work)
        # One atomic push: the commit and its tag land together or not at all.
        _git(["push", "-q", "--atomic", "origin", "HEAD:main", f"refs/tags/{version}"], work)
    commit = _git(["rev-parse", f"{version}^{{commit}}"], repo).stdout.strip()
    return {"repo": str(repo), "version": version, "commit": commit}


def checkout_release(repo: str | os.PathLike, version: str, dest: str | os.PathLike, force: bool = False) -> Path:
    """Materialise exactly release ``version`` in ``dest``: a new or empty folder, or a
    checkout this project made before (replaced); anything else needs ``force``."""
    repo, dest = absolute(repo), absolute(dest)
    if version not in list_tags(repo):
        raise ReleaseError(f"no release {version} in {repo} (have {list_tags(repo)})")
    _require_own_repo(repo)
    claim_dir(dest, force=force, inputs=[repo], empty=True)
    (dest / MARKER).unlink()  # git clone wants an empty folder; the mark moves into .git
    _git(["clone", "-q", "--branch", version, "--depth", "1", f"file://{repo}", str(dest)], dest.parent)
    _require_own_repo(dest)
    mark_owned(dest)
    return dest


def load_release(repo: str | os.PathLike, version: str, config: str, split: str = "train", workdir=None):
    """``datasets.load_dataset`` of one config of an exact release."""
    import datasets

    dest = Path(workdir or tempfile.mkdtemp(prefix="release-")) / f"{Path(repo).name}-{version}"
    checkout_release(repo, version, dest)
    return datasets.load_dataset(str(dest), config, split=split)


# ----------------------------------------------------------------------------- the Hub
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_stage_folder(src: Path) -> None:
    """A publishable folder: data shards and a card that validates against them."""
    from trace_inversion.hub_cards.card import CardError, validate_card

    if not (src / "README.md").exists() or not (src / "data").is_dir():
        raise ReleaseError(f"{src} is not a stage folder (needs README.md and data/); fix: run the stage first")
    try:
        validate_card((src / "README.md").read_text(encoding="utf-8"), src)
    except CardError as e:
        raise ReleaseError(f"{src}/README.md: {e}; fix: re-run the stage (it rewrites the card)") from e


def _files_sha256(src: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(src)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((src / "data").rglob("*.parquet")) if not p.name.startswith(".")}


def publish_hub(stage_folder: str | os.PathLike, repo_id: str, version: Optional[str] = None,
                message: Optional[str] = None, private: bool = True, token_env: str = TOKEN_ENV,
                skip_unchanged: bool = True) -> dict:
    """Publish ``stage_folder`` as release ``version`` of Hub dataset ``repo_id``.

    Creates the repo (private by default), uploads data/ + README.md (+ stats.json,
    card.json) in one commit that also deletes older shards, then creates the tag.
    The token comes only from the environment variable ``token_env``; the endpoint from
    ``HF_ENDPOINT`` (huggingface_hub's own setting). An existing tag is refused. If the
    tag step fails after the commit, running the same command again tags that commit
    instead of uploading again."""
    from huggingface_hub import DatasetCard, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    src = Path(stage_folder)
    if not _REPO_ID.match(repo_id or ""):
        raise ReleaseError(f"Hub repo id {repo_id!r} is not owner/name; fix: e.g. my-org/my-traces")
    check_version(version)
    token = os.environ.get(token_env)
    if not token:
        raise ReleaseError(f"no Hub token: environment variable {token_env} is not set; fix: export {token_env}=hf_...")
    check_stage_folder(src)
    card = DatasetCard((src / "README.md").read_text(encoding="utf-8"))
    api = HfApi(token=token)
    try:
        card.validate(repo_type="dataset")  # the Hub's own metadata check (POST /api/validate-yaml)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
        tags = sorted_versions(t.name for t in refs.tags)
        nxt = version_after(tags)
        if version in tags:
            raise ReleaseError(f"release {version} already exists in {repo_id}; versions are immutable; fix: publish "
                               f"as {nxt}")
        head = next(b.target_commit for b in refs.branches if b.name == "main")
        remote = {f.path: f.lfs.sha256 for f in api.list_repo_tree(repo_id, repo_type="dataset", revision=head,
                                                                    recursive=True)
                  if getattr(f, "lfs", None) and f.path.startswith("data/")}
        same_data = remote == _files_sha256(src)
        tagged = {t.target_commit: t.name for t in refs.tags}
        if skip_unchanged and version is None and same_data and head in tagged:
            return {"repo": repo_id, "version": tagged[head], "commit": head, "unchanged": True, "hub": True}
        version = version or nxt
        if same_data and head not in tagged and remote:
            commit = head  # a previous publish committed this content, then failed before tagging
        else:
            info = api.upload_folder(folder_path=str(src), repo_id=repo_id, repo_type="dataset",
                                     allow_patterns=["data/**", "README.md", *RELEASE_EXTRAS],
                                     ignore_patterns=["**/.*"], delete_patterns=["data/**"],
                                     commit_message=message or f"Release {version}")
            commit = info.oid
        api.create_tag(repo_id, repo_type="dataset", tag=version, revision=commit,
                       tag_message=message or f"Release {version}")
    except HfHubHTTPError as e:
        raise ReleaseError(f"Hub request failed: {str(e).splitlines()[0]}") from None
    return {"repo": repo_id, "version": version, "commit": commit, "private": private, "hub": True}


def add_parser(subparsers) -> None:
    """The ``publish`` command."""
    p = subparsers.add_parser("publish",
                              help="tool: publish a stage folder as a versioned release (local git or the Hub)",
                              description="Publish a stage folder (data/ + README card) as one commit + one tag, in a "
                                          "local git release repository (--repo) or a Hub dataset repo (--hub; token "
                                          "from $HF_TOKEN, endpoint from $HF_ENDPOINT). Existing versions are "
                                          "refused; unchanged data returns the existing release.")
    p.add_argument("stage_folder")
    p.add_argument("--repo", help="local release repository folder (created if missing)")
    p.add_argument("--hub", metavar="OWNER/NAME", help="Hub dataset repo id")
    p.add_argument("--public", action="store_true", help="create the Hub repo public (default private)")
    p.add_argument("--token-env", default=TOKEN_ENV, help="environment variable holding the Hub token")
    p.add_argument("--version", help="tag, e.g. v1 (default: next free)")
    p.add_argument("--message")
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.cli_options import print_json

    if bool(args.repo) == bool(args.hub):
        raise ReleaseError("give exactly one of --repo (a local release repository) or --hub (owner/name)")
    if args.hub:
        rel = publish_hub(args.stage_folder, args.hub, args.version, args.message, private=not args.public,
                          token_env=args.token_env)
    else:
        rel = publish_local(args.stage_folder, args.repo, args.version, args.message)
    print_json(rel)
    return 0
