"""A local server for the Hugging Face Hub endpoints that trace-inversion's Hub
publishing uses, for contract tests and offline dry runs.

No installable server implements the Hub's write API, so this one implements the
subset ``huggingface_hub`` (2.x, with ``HF_HUB_DISABLE_XET=1``) calls to create a
dataset repo, upload a folder (preupload, LFS batch + upload + verify, NDJSON commit),
tag it, and read it back:

- ``POST /api/repos/create``; ``GET /api/datasets/{repo}[/revision/{rev}]``
- ``POST /api/datasets/{repo}/preupload/{rev}``; ``POST /datasets/{repo}.git/info/lfs/objects/batch``;
  ``PUT /lfs/{oid}``; ``POST /lfs/verify``; ``POST /api/datasets/{repo}/commit/{rev}``
- ``GET /api/datasets/{repo}/refs``; ``POST /api/datasets/{repo}/tag/{rev}``;
  ``GET /api/datasets/{repo}/tree/{rev}[/{path}]``
- ``HEAD|GET /datasets/{repo}/resolve/{rev}/{path}``; ``POST /api/validate-yaml``
- ``GET /stats`` (requests per endpoint, for tests)

Writes and private reads need ``Authorization: Bearer <token>`` with the server's
token. State (repos, commits, tags, blobs by sha256) lives in memory and is lost when
the server stops. Run: ``python -m trace_inversion.local_services.hub_server --port 0 --token T``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote

import yaml

LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors", ".zip", ".gz")


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict = field(default_factory=dict)  # oid -> {"parent", "files": {path: blob}, "message"}
    branches: dict = field(default_factory=dict)  # name -> oid
    tags: dict = field(default_factory=dict)  # name -> {"oid", "message"}


@dataclass
class State:
    token: str
    repos: dict = field(default_factory=dict)
    blobs: dict = field(default_factory=dict)  # sha256 -> bytes
    calls: Counter = field(default_factory=Counter)


def _oid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def validate_card_yaml(content: str) -> list[str]:
    """The subset of the Hub's dataset-card metadata checks this project relies on."""
    if not content.startswith("---"):
        return []  # a card without metadata is valid
    parts = content.split("\n---", 1)
    if len(parts) < 2:
        return ["metadata block is not closed with ---"]
    try:
        meta = yaml.safe_load(parts[0].lstrip("-").strip("\n")) or {}
    except yaml.YAMLError as e:
        return [f"metadata is not valid YAML: {e}"]
    if not isinstance(meta, dict):
        return ["metadata must be a mapping"]
    errs = []
    for key in ("tags", "task_categories", "language"):
        if key in meta and not (isinstance(meta[key], list) and all(isinstance(x, str) for x in meta[key])):
            errs.append(f'"{key}" must be an array of strings')
    if "license" in meta and not isinstance(meta["license"], (str, list)):
        errs.append('"license" must be a string')
    configs = meta.get("configs", [])
    if not isinstance(configs, list):
        errs.append('"configs" must be an array')
    else:
        for c in configs:
            if not isinstance(c, dict) or not isinstance(c.get("config_name"), str):
                errs.append('"configs[]" items need a string "config_name"')
                continue
            files = c.get("data_files")
            if isinstance(files, list):
                for f in files:
                    if not isinstance(f, (str, dict)) or (isinstance(f, dict) and not {"split", "path"} <= set(f)):
                        errs.append(f'"configs[{c["config_name"]}].data_files[]" needs "split" and "path"')
    infos = meta.get("dataset_info")
    if infos is not None:
        items = infos if isinstance(infos, list) else [infos]
        for i in items:
            if not isinstance(i, dict):
                errs.append('"dataset_info" items must be mappings')
                continue
            for s in i.get("splits", []) or []:
                if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(
                        s.get("num_examples", 0), int):
                    errs.append('"dataset_info.splits[]" needs a string "name" and an integer "num_examples"')
    return errs


def make_app(state: State):
    from aiohttp import web

    def err(status: int, msg: str):
        return web.json_response({"error": msg}, status=status, headers={"X-Error-Message": msg})

    def authorized(request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {state.token}"

    def repo_of(request, write: bool = False):
        rid = f"{request.match_info['ns']}/{request.match_info['name']}".removesuffix(".git")
        repo = state.repos.get(rid)
        if repo is None or ((repo.private or write) and not authorized(request)):
            return None, err(401 if not authorized(request) else 404, f"Repository Not Found for url: {request.url}")
        return repo, None

    def resolve(repo: Repo, rev: str):
        rev = unquote(rev)
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.tags:
            return repo.tags[rev]["oid"]
        if rev in repo.commits:
            return rev
        return None

    def base(request) -> str:
        return f"{request.scheme}://{request.host}"

    @web.middleware
    async def count(request, handler):
        state.calls[f"{request.method} {request.match_info.route.resource.canonical if request.match_info.route.resource else request.path}"] += 1
        return await handler(request)

    async def create(request):
        if not authorized(request):
            return err(401, "Invalid credentials in Authorization header")
        body = await request.json()
        if body.get("type", "model") != "dataset":
            return err(400, "this test server only hosts dataset repos")
        rid = f"{body.get('organization') or 'user'}/{body['name']}"
        url = f"{base(request)}/datasets/{rid}"
        if rid in state.repos:
            return web.json_response({"error": "You already created this dataset repo", "url": url}, status=409)
        private = body.get("private", body.get("visibility", "private") != "public")
        repo = Repo(rid, bool(private))
        root = hashlib.sha1(f"init {rid}".encode()).hexdigest()
        repo.commits[root] = {"parent": None, "files": {}, "message": "initial commit", "time": time.time()}
        repo.branches["main"] = root
        state.repos[rid] = repo
        return web.json_response({"url": url, "name": rid, "id": rid})

    async def info(request):
        repo, e = repo_of(request)
        if e:
            return e
        oid = resolve(repo, request.match_info.get("rev", "main"))
        if oid is None:
            return err(404, "Revision Not Found")
        files = repo.commits[oid]["files"]
        return web.json_response({"id": repo.repo_id, "_id": repo.repo_id, "sha": oid, "private": repo.private,
                                  "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                                  "siblings": [{"rfilename": p} for p in sorted(files)],
                                  "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"})

    async def preupload(request):
        repo, e = repo_of(request, write=True)
        if e:
            return e
        body = await request.json()
        head = repo.commits.get(resolve(repo, request.match_info["rev"]) or "", {"files": {}})["files"]
        out = []
        for f in body.get("files", []):
            lfs = f["path"].endswith(LFS_SUFFIXES) or f.get("size", 0) > 10 * 1024 * 1024
            cur = head.get(f["path"])
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": cur["git_sha"] if cur and not cur["lfs"] else None})
        return web.json_response({"files": out, "commitOid": repo.branches.get("main")})

    async def lfs_batch(request):
        repo, e = repo_of(request, write=True)
        if e:
            return e
        body = await request.json()
        objs = []
        for o in body.get("objects", []):
            item = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in state.blobs:
                item["actions"] = {"upload": {"href": f"{base(request)}/lfs/{o['oid']}"},
                                   "verify": {"href": f"{base(request)}/lfs/verify"}}
            objs.append(item)
        return web.json_response({"transfer": "basic", "objects": objs, "hash_algo": "sha256"})

    async def lfs_put(request):
        data = await request.read()
        if _oid(data) != request.match_info["oid"]:
            return err(400, "sha256 of the uploaded content does not match its oid")
        state.blobs[request.match_info["oid"]] = data
        return web.Response(status=200)

    async def lfs_verify(request):
        body = await request.json()
        blob = state.blobs.get(body.get("oid"))
        if blob is None or len(blob) != body.get("size"):
            return err(404, "object not found or wrong size")
        return web.json_response({})

    async def commit(request):
        repo, e = repo_of(request, write=True)
        if e:
            return e
        branch = unquote(request.match_info["rev"])
        if branch not in repo.branches:
            return err(404, f"branch {branch} not found")
        lines = [json.loads(x) for x in (await request.read()).splitlines() if x.strip()]
        if not lines or lines[0].get("key") != "header":
            return err(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        head = repo.branches[branch]
        if header.get("parentCommit") and header["parentCommit"] != head:
            return err(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head]["files"])
        for item in lines[1:]:
            k, v = item["key"], item["value"]
            if k == "file":
                data = base64.b64decode(v["content"])
                sha = _oid(data)
                state.blobs[sha] = data
                files[v["path"]] = {"sha256": sha, "size": len(data), "lfs": False, "git_sha": _git_blob_sha(data)}
            elif k == "lfsFile":
                if v["oid"] not in state.blobs:
                    return err(422, f"LFS object {v['oid']} for {v['path']} was never uploaded")
                files[v["path"]] = {"sha256": v["oid"], "size": v["size"], "lfs": True,
                                    "git_sha": _git_blob_sha(state.blobs[v["oid"]])}
            elif k == "deletedFile":
                if files.pop(v["path"], None) is None:
                    return err(404, f"cannot delete {v['path']}: not in the repo")
            elif k == "deletedFolder":
                prefix = v["path"].rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
            else:
                return err(400, f"unsupported commit operation {k}")
        oid = hashlib.sha1(json.dumps([head, files, header.get("summary")], sort_keys=True).encode()
                           + str(time.time_ns()).encode()).hexdigest()
        repo.commits[oid] = {"parent": head, "files": files, "message": header.get("summary"), "time": time.time()}
        repo.branches[branch] = oid
        return web.json_response({"commitUrl": f"{base(request)}/datasets/{repo.repo_id}/commit/{oid}",
                                  "commitOid": oid, "pullRequestUrl": None, "success": True})

    async def refs(request):
        repo, e = repo_of(request)
        if e:
            return e
        return web.json_response({
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": v["oid"]} for t, v in repo.tags.items()],
            "converts": []})

    async def tag(request):
        repo, e = repo_of(request, write=True)
        if e:
            return e
        body = await request.json()
        name = body.get("tag", "")
        oid = resolve(repo, request.match_info["rev"])
        if oid is None:
            return err(404, "Revision Not Found")
        if not name or name in repo.tags or name in repo.branches:
            return err(409, f"Tag {name} already exists")
        repo.tags[name] = {"oid": oid, "message": body.get("message")}
        return web.json_response({})

    async def tree(request):
        repo, e = repo_of(request)
        if e:
            return e
        oid = resolve(repo, request.match_info["rev"])
        if oid is None:
            return err(404, "Revision Not Found")
        prefix = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive", "false").lower() in ("1", "true")
        files = repo.commits[oid]["files"]
        out, dirs = [], set()
        for p, b in sorted(files.items()):
            if prefix and not p.startswith(prefix + "/"):
                continue
            rest = p[len(prefix) + 1:] if prefix else p
            if not recursive and "/" in rest:
                d = (prefix + "/" if prefix else "") + rest.split("/")[0]
                if d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0})
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(len(parts)):
                    d = "/".join(([prefix] if prefix else []) + parts[: i + 1])
                    if d not in dirs:
                        dirs.add(d)
                        out.append({"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(),
                                    "size": 0})
            item = {"type": "file", "path": p, "size": b["size"], "oid": b["git_sha"]}
            if b["lfs"]:
                item["lfs"] = {"oid": b["sha256"], "size": b["size"], "pointerSize": 130}
            out.append(item)
        return web.json_response(out)

    async def resolve_file(request):
        repo, e = repo_of(request)
        if e:
            return e
        oid = resolve(repo, request.match_info["rev"])
        path = unquote(request.match_info["path"])
        b = repo.commits[oid]["files"].get(path) if oid else None
        if b is None:
            return web.json_response({"error": "Entry not found"}, status=404,
                                     headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid or ""})
        headers = {"X-Repo-Commit": oid, "ETag": f'"{b["sha256"] if b["lfs"] else b["git_sha"]}"',
                   "Content-Length": str(b["size"])}
        if b["lfs"]:
            headers["X-Linked-Etag"] = f'"{b["sha256"]}"'
            headers["X-Linked-Size"] = str(b["size"])
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        return web.Response(body=state.blobs[b["sha256"]], headers=headers)

    async def validate(request):
        body = await request.json()
        errs = validate_card_yaml(body.get("content", ""))
        if body.get("repoType", "model") not in ("model", "dataset", "space"):
            errs.append("unknown repoType")
        return web.json_response({"errors": [{"message": m} for m in errs], "warnings": []},
                                 status=400 if errs else 200)

    async def stats(request):
        return web.json_response({"calls": dict(state.calls), "repos": {
            rid: {"private": r.private, "tags": {t: v["oid"] for t, v in r.tags.items()}, "branches": r.branches,
                  "commits": len(r.commits)} for rid, r in state.repos.items()}})

    app = web.Application(middlewares=[count], client_max_size=1024 ** 3)
    r = "/api/datasets/{ns}/{name}"
    app.router.add_post("/api/repos/create", create)
    app.router.add_get(r, info)
    app.router.add_get(r + "/revision/{rev:.+}", info)
    app.router.add_post(r + "/preupload/{rev}", preupload)
    app.router.add_post("/datasets/{ns}/{name}/info/lfs/objects/batch", lfs_batch)
    app.router.add_put("/lfs/{oid}", lfs_put)
    app.router.add_post("/lfs/verify", lfs_verify)
    app.router.add_post(r + "/commit/{rev}", commit)
    app.router.add_get(r + "/refs", refs)
    app.router.add_post(r + "/tag/{rev}", tag)
    app.router.add_get(r + "/tree/{rev}", tree)
    app.router.add_get(r + "/tree/{rev}/{path:.*}", tree)
    app.router.add_get("/datasets/{ns}/{name}/resolve/{rev}/{path:.+}", resolve_file)
    app.router.add_post("/api/validate-yaml", validate)
    app.router.add_get("/stats", stats)
    return app


def main(argv: list[str] | None = None) -> None:
    from aiohttp import web

    ap = argparse.ArgumentParser(description="Local Hub contract server (see module docstring).")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", required=True, help="the token clients must send (a test value, not a real one)")
    args = ap.parse_args(argv)

    async def run():
        runner = web.AppRunner(make_app(State(token=args.token)))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main(sys.argv[1:])
