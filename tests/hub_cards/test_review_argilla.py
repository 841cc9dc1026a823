"""The Argilla review round trip against a real argilla-server stack (redis, osmem search
engine, server, RQ worker): push -> two reviewers respond -> pull -> reviewed release."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trace_inversion.hub_cards.card import card_context, validate_card, write_card
from trace_inversion.hub_cards.publish import load_release, publish_local
from trace_inversion.data.io import read_split, write_split

pytestmark = pytest.mark.slow


def _inversion_folder(folder, n=24):
    rows = [{"id": f"r{i:03d}", "problem": f"What is {i}+1?", "target_answer": f"\\boxed{{{i + 1}}}",
             "target_summary": None if i % 5 == 0 else f"added one to {i}", "inverted_trace": f"{i} + 1 = {i + 1}",
             "inversion_verdict": True if i % 7 else None, "inversion_reason": None, "first_verdict": True,
             "n_attempts": 1 + i % 3} for i in range(n)]
    write_split(folder, "inverted", rows)
    write_split(folder, "rejected", [{"id": "x1", "problem": "p", "inverted_trace": "t", "inversion_reason": "inconsistent"}])
    write_card(folder, card_context("t: invert", "invert", {"name": "t"}, {"rows_in": n + 1, "kept": n},
                                    {"inverted": n, "rejected": 1}))
    return rows


def cli(stack, *args):
    env = dict(os.environ, ARGILLA_API_URL=stack.url, ARGILLA_API_KEY=stack.api_key)
    return subprocess.run([sys.executable, "-m", "trace_inversion.cli", "review", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_push_respond_pull_reviewed_release(argilla_stack, tmp_path):
    import argilla as rg

    stage = tmp_path / "inversion"
    rows = _inversion_folder(stage)
    r = cli(argilla_stack, "push", str(stage), "--dataset", "inv-review")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["pushed"] == 24
    r = cli(argilla_stack, "push", str(stage), "--dataset", "inv-review")  # idempotent: keyed by row id
    assert r.returncode == 0, r.stderr[-3000:]

    owner = rg.Argilla(api_url=argilla_stack.url, api_key=argilla_stack.api_key)
    ds = owner.datasets(name="inv-review", workspace=json.loads(r.stdout)["workspace"])
    records = list(ds.records)
    assert len(records) == 24 and {str(x.id) for x in records} == {x["id"] for x in rows}
    ws = owner.workspaces(json.loads(r.stdout)["workspace"])
    second = rg.User(username="reviewer2", password="reviewer2-pass", role="annotator", client=owner).create()
    second.add_to_workspace(ws)
    # reviewer 1 (owner) answers rows 0-11, reviewer 2 rows 6-17; rows 18-23 stay unreviewed
    plan = {}
    for i, rec in enumerate(sorted(records, key=lambda x: str(x.id))):
        answers = []
        if i < 12:
            answers.append((owner.me.id, "no" if i % 4 == 0 else "yes", 2 if i % 4 == 0 else 5, "r1 note"))
        if 6 <= i < 18:
            answers.append((second.id, "no" if i % 3 == 0 else "yes", 3, None))
        for uid, ok, rating, comment in answers:
            rec.responses.add(rg.Response("consistent", ok, user_id=uid, status="submitted"))
            rec.responses.add(rg.Response("plausible", "yes", user_id=uid, status="submitted"))
            rec.responses.add(rg.Response("rating", rating, user_id=uid, status="submitted"))
            if comment:
                rec.responses.add(rg.Response("comment", comment, user_id=uid, status="submitted"))
        plan[str(rec.id)] = [a[1] for a in answers]
    ds.records.log(records)

    out = tmp_path / "reviewed"
    r = cli(argilla_stack, "pull", str(stage), "--dataset", "inv-review", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(r.stdout)
    expect = {}
    for rid, votes in plan.items():
        expect[rid] = ("unreviewed" if not votes else
                       "accepted" if votes.count("yes") > len(votes) - votes.count("yes") else "rejected")
    kept, rejected = read_split(out, "inverted"), read_split(out, "review_rejected")
    # no record lost, none duplicated
    assert sorted([x["id"] for x in kept] + [x["id"] for x in rejected]) == sorted(x["id"] for x in rows)
    assert {x["id"]: x["review_status"] for x in kept + rejected} == expect
    assert stats["rejected"] == sum(v == "rejected" for v in expect.values()) > 0
    assert stats["unreviewed"] == 6 and stats["accepted"] > 0
    two = next(x for x in kept + rejected if len(plan[x["id"]]) == 2)
    assert x_has_both(two)
    assert read_split(out, "rejected") == read_split(stage, "rejected")  # other configs carried over
    card = (out / "README.md").read_text()
    validate_card(card, out)
    assert "## Human review" in card and "review_rejected" in card

    rel = publish_local(out, tmp_path / "releases")
    ds_v1 = load_release(tmp_path / "releases", rel["version"], "inverted", workdir=tmp_path / "co")
    assert ds_v1.num_rows == len(kept) and "review_responses" in ds_v1.column_names


def x_has_both(row):
    resp = json.loads(row["review_responses"])
    return len(resp) == 2 and all(r["status"] == "submitted" and r["consistent"] in ("yes", "no") for r in resp)


def test_review_cli_errors_are_clear(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", "review", "push", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "ARGILLA_API_URL" in r.stderr


# ------------------------------------------------------------------ every reviewer action, at the REST level
# (the calls the web UI makes; tests/hub_cards/test_review_browser.py drives the UI itself)

def _api(stack, key=None):
    import httpx

    return httpx.Client(base_url=stack.url, headers={"X-Argilla-Api-Key": key or stack.api_key}, timeout=60)


def _ok(r, *codes):
    assert r.status_code in (codes or (200, 201)), (r.request.method, r.request.url, r.status_code, r.text[:500])
    return r.json() if r.content else None


def _answers(consistent=None, plausible=None, rating=None, comment=None):
    vals = {"consistent": consistent, "plausible": plausible, "rating": rating, "comment": comment}
    return {k: {"value": v} for k, v in vals.items() if v is not None}


def _my_status_count(api, dataset_id, status):
    body = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"},
                                 "values": [status]}]}}
    return _ok(api.post(f"/api/v1/me/datasets/{dataset_id}/records/search", json=body))["total"]


def test_pull_every_reviewer_action(argilla_stack, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from trace_inversion.hub_cards import review

    stage = tmp_path / "inversion"
    rows = _inversion_folder(stage, n=10)
    r = cli(argilla_stack, "push", str(stage), "--dataset", "every-action", "--sample", "9",
            "--reviewers-per-record", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    ws_name = json.loads(r.stdout)["workspace"]
    pushed = sorted(json.loads((stage / "review_push.json").read_text())["ids"])
    (not_pushed,) = {x["id"] for x in rows} - set(pushed)
    owner = _api(argilla_stack)
    ds = next(d for d in _ok(owner.get("/api/v1/me/datasets"))["items"] if d["name"] == "every-action")
    ws = next(w for w in _ok(owner.get("/api/v1/me/workspaces"))["items"] if w["name"] == ws_name)
    keys = {}
    for name in ("rev-b", "rev-c"):
        u = _ok(owner.post("/api/v1/users", json={"first_name": name, "username": name, "password": name + "-pass1",
                                                  "role": "annotator"}))
        _ok(owner.post(f"/api/v1/workspaces/{ws['id']}/users", json={"user_id": u["id"]}))
        keys[name] = u["api_key"]
    a, b, c = owner, _api(argilla_stack, keys["rev-b"]), _api(argilla_stack, keys["rev-c"])
    rec = {x["external_id"]: x["id"] for x in _ok(owner.get(f"/api/v1/datasets/{ds['id']}/records",
                                                            params={"limit": 100}))["items"]}
    p = [rec[i] for i in pushed]

    def respond(api, i, status, **answers):
        body = {"status": status, **({"values": _answers(**answers)} if answers else {})}
        return _ok(api.post(f"/api/v1/records/{p[i]}/responses", json=body))

    yes = dict(consistent="yes", plausible="yes", rating=5)
    respond(a, 0, "submitted", **yes, comment="fine")
    respond(b, 0, "submitted", **yes)
    respond(a, 1, "submitted", **yes)
    respond(b, 1, "submitted", consistent="no", plausible="yes", rating=2, comment="off by one")
    with ThreadPoolExecutor(3) as pool:  # three reviewers on one record at once: no update lost
        list(pool.map(lambda args: respond(args[0], 2, "submitted", **args[1]),
                      [(a, yes), (b, yes), (c, dict(consistent="no", plausible="no", rating=1))]))
    draft = respond(a, 3, "draft", consistent="yes")                       # partial answers, a draft
    respond(a, 4, "discarded", consistent="no", comment="garbled")         # discarded with answers
    respond(a, 5, "discarded")                                              # discarded, values null
    respond(a, 6, "submitted", **yes)
    respond(b, 6, "discarded")
    respond(a, 8, "submitted", **yes)
    gone = respond(b, 4, "draft", consistent="yes")                         # a response deleted again
    _ok(owner.delete(f"/api/v1/responses/{gone['id']}"))
    # suggestions: upsert, delete one by id and one through the record's bulk delete
    q = {x["name"]: x["id"] for x in _ok(owner.get(f"/api/v1/datasets/{ds['id']}/questions"))["items"]}
    s1 = _ok(owner.put(f"/api/v1/records/{p[7]}/suggestions", json={"question_id": q["consistent"], "value": "yes"}))
    s2 = _ok(owner.put(f"/api/v1/records/{p[7]}/suggestions", json={"question_id": q["rating"], "value": 4}))
    _ok(owner.delete(f"/api/v1/suggestions/{s1['id']}"))
    _ok(owner.delete(f"/api/v1/records/{p[7]}/suggestions", params={"ids": s2["id"]}), 204)
    assert _ok(owner.get(f"/api/v1/records/{p[7]}/suggestions"))["items"] == []
    # the search index followed every change (what the UI's status filters show each reviewer)
    assert [_my_status_count(a, ds["id"], s) for s in ("submitted", "draft", "discarded")] == [5, 1, 2]
    assert [_my_status_count(b, ds["id"], s) for s in ("submitted", "draft", "discarded")] == [3, 0, 1]
    assert _my_status_count(c, ds["id"], "submitted") == 1
    # pushing again re-indexes records that hold a discard without answers
    r = cli(argilla_stack, "push", str(stage), "--dataset", "every-action", "--sample", "9")
    assert r.returncode == 0, r.stderr[-3000:]
    # a record deleted in Argilla (the SDK's / API's delete; the 2.8 web UI has none)
    _ok(owner.delete(f"/api/v1/datasets/{ds['id']}/records", params={"ids": p[8]}), 204)
    assert _my_status_count(a, ds["id"], "submitted") == 4

    out = tmp_path / "reviewed"
    r = cli(argilla_stack, "pull", str(stage), "--dataset", "every-action", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(r.stdout)
    kept, moved = read_split(out, "inverted"), read_split(out, "review_rejected")
    landed = {x["id"]: x for x in kept + moved}
    assert sorted(landed) == sorted(x["id"] for x in rows)
    expect = ["accepted", "rejected", "accepted", "unreviewed", "discarded", "discarded", "rejected", "unreviewed",
              "unreviewed"]
    assert [landed[i]["review_status"] for i in pushed] == expect
    assert landed[not_pushed]["review_status"] == "unreviewed" and landed[not_pushed]["review_note"] == "not pushed"
    assert [landed[pushed[i]]["review_note"] for i in (3, 7, 8)] == ["drafts only", "no responses",
                                                                     "deleted in Argilla"]
    assert {x["id"] for x in moved} == {pushed[i] for i in (1, 4, 5, 6)}
    assert (stats["accepted"], stats["rejected"], stats["discarded"], stats["unreviewed"]) == (2, 2, 2, 4)
    assert stats["responses"] == {"submitted": 8, "draft": 1, "discarded": 3}

    def resp(i):
        return {(x["user"], x["status"]): {k: x[k] for k in review.QUESTIONS}
                for x in json.loads(landed[pushed[i]]["review_responses"])}

    assert resp(1) == {("argilla", "submitted"): {"consistent": "yes", "plausible": "yes", "rating": 5, "comment": None},
                       ("rev-b", "submitted"): {"consistent": "no", "plausible": "yes", "rating": 2,
                                                "comment": "off by one"}}
    assert set(resp(2)) == {("argilla", "submitted"), ("rev-b", "submitted"), ("rev-c", "submitted")}
    assert resp(3) == {("argilla", "draft"): {"consistent": "yes", "plausible": None, "rating": None, "comment": None}}
    assert resp(4) == {("argilla", "discarded"): {"consistent": "no", "plausible": None, "rating": None,
                                                  "comment": "garbled"}}
    assert resp(5) == {("argilla", "discarded"): dict.fromkeys(review.QUESTIONS)}
    assert resp(6)[("rev-b", "discarded")] == dict.fromkeys(review.QUESTIONS)
    assert landed[pushed[0]]["review_n"] == 2 and json.loads(landed[pushed[0]]["review_comments"]) == ["fine"]
    assert landed[pushed[3]]["review_n"] == 0 and landed[pushed[3]]["review_rating_mean"] is None
    card = (out / "README.md").read_text()
    validate_card(card, out)
    assert "2 accepted, 2 rejected and 2 discarded" in card and "4 unreviewed" in card

    # reviewed after that pull: the draft is submitted, a new reviewer answers; pull again into the same folder
    _ok(a.put(f"/api/v1/responses/{draft['id']}", json={"status": "submitted", "values": _answers(**yes)}))
    respond(c, 7, "submitted", consistent="no", plausible="no", rating=1)
    r = cli(argilla_stack, "pull", str(stage), "--dataset", "every-action", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    again = {x["id"]: x["review_status"] for x in read_split(out, "inverted") + read_split(out, "review_rejected")}
    assert again[pushed[3]] == "accepted" and again[pushed[7]] == "rejected"
    assert (json.loads(r.stdout)["accepted"], json.loads(r.stdout)["unreviewed"]) == (3, 2)


def test_decide_rules():
    from trace_inversion.hub_cards.review import decide

    y = {"status": "submitted", "consistent": "yes", "plausible": "yes"}
    n = {"status": "submitted", "consistent": "yes", "plausible": "no"}
    d, dr = {"status": "discarded"}, {"status": "draft", "consistent": "yes", "plausible": "yes"}
    assert decide([]) == "unreviewed" and decide([dr, dr]) == "unreviewed"
    assert decide([d]) == "discarded" and decide([d, dr]) == "discarded"
    assert decide([y]) == "accepted" and decide([y, y, n]) == "accepted" and decide([y, dr]) == "accepted"
    assert decide([y, n]) == "rejected" and decide([y, d]) == "rejected" and decide([n, dr]) == "rejected"
    assert decide([{"status": "ResponseStatus.submitted", "consistent": "yes", "plausible": "yes"}]) == "accepted"


# ------------------------------------------------------------------ the compatibility layer and `review serve`

def test_compat_layer_covers_every_scripted_update():
    """Every scripted index update argilla-server issues is one the patch replaces."""
    import ast

    from trace_inversion.local_services.argilla_osmem_compat import PATCHED
    from trace_inversion.local_services.argilla_stack import server_python

    (site,) = server_python().parent.parent.glob("lib/python3*/site-packages/argilla_server")
    scripted = set()
    for path in site.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "script"
                                                          for k in node.keys):
                        scripted.add(fn.name)
    assert scripted == set(PATCHED)  # (every stack starts through the patch: the tests above use it)


def _serve(folder, ignore_sigint=True):
    import signal

    return subprocess.Popen([sys.executable, "-m", "trace_inversion.cli", "review", "serve", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint
                            else None)


def _wait_for(cond, timeout=180, what="condition"):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pids):
    out = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(pid)
        except OSError:
            pass
    return out


def _stack_pids(folder):
    import psutil

    state = json.loads((Path(folder) / "stack.json").read_text())
    pids = [pid for pid, _ in state["parts"].values()]
    return pids + [c.pid for pid in pids for c in psutil.Process(pid).children(recursive=True)]


def _parts_started(folder, *names):
    """The pids a starting stack recorded, once it recorded all of ``names``."""
    def ready():
        try:
            parts = json.loads((Path(folder) / "stack.json").read_text())["parts"]
        except (OSError, ValueError, KeyError):
            return None
        return set(names) <= set(parts) and _stack_pids(folder)
    return _wait_for(ready, 120, f"{names} to start")


def test_serve_owns_its_stack(tmp_path):
    """`review serve` in the background (SIGINT ignored, as a shell's `&` does): killed
    with SIGKILL mid-start, its processes are stopped by the next serve on the folder;
    SIGINT and SIGHUP stop every process, also during startup. (SIGTERM, and a second
    serve refused, on a running stack: tests/hub_cards/test_review_browser.py.)"""
    import signal

    home = tmp_path / "stack"
    first = _serve(home)
    left = _parts_started(home, "redis", "search", "server")
    first.kill()  # SIGKILL: no chance to clean up
    first.wait(timeout=30)
    assert _alive(left)
    second = _serve(home)
    line = _wait_for(lambda: second.stderr.readline() or second.poll() is not None, 120, "second serve")
    assert "left running by an earlier stack" in str(line)
    assert _alive(left) == []
    mine = _parts_started(home, "redis", "search")
    os.kill(second.pid, signal.SIGINT)
    assert second.wait(timeout=60) == 0 and "stopped on SIGINT" in second.stderr.read()
    _wait_for(lambda: not _alive(mine), 15, "the stack to stop")

    third = _serve(tmp_path / "other")
    started = _parts_started(tmp_path / "other", "redis", "search")
    os.kill(third.pid, signal.SIGHUP)
    assert third.wait(timeout=60) == 0 and "stopped on SIGHUP" in third.stderr.read()
    _wait_for(lambda: not _alive(started), 15, "the stack to stop")
    assert not (tmp_path / "other" / "stack.json").exists()


def test_push_to_a_dataset_with_the_previous_settings_fails_clearly(argilla_stack, tmp_path):
    """A dataset made before the verifiers' question and metadata (issue 14) is refused with
    the fix, and nothing is logged to it."""
    import argilla as rg

    from trace_inversion.hub_cards import review

    client = rg.Argilla(api_url=argilla_stack.url, api_key=argilla_stack.api_key)
    md = dict(use_markdown=True)
    previous = rg.Settings(  # review_settings() before the verifiers' question and metadata
        fields=[rg.TextField(name="problem", **md), rg.TextField(name="answer", **md),
                rg.TextField(name="summary", required=False, **md), rg.TextField(name="inverted_trace", **md)],
        questions=[rg.LabelQuestion(name="consistent", labels=["yes", "no"]),
                   rg.LabelQuestion(name="plausible", labels=["yes", "no"]),
                   rg.RatingQuestion(name="rating", values=[1, 2, 3, 4, 5]),
                   rg.TextQuestion(name="comment", required=False)],
        metadata=[rg.TermsMetadataProperty(name="auto_verdict"), rg.TermsMetadataProperty(name="first_verdict"),
                  rg.TermsMetadataProperty(name="reason"), rg.IntegerMetadataProperty(name="n_attempts")],
        allow_extra_metadata=False)
    ds = rg.Dataset(name="previous-settings", workspace=review._default_workspace(client), settings=previous,
                    client=client).create()
    stage = tmp_path / "inversion"
    _inversion_folder(stage, n=3)
    r = cli(argilla_stack, "push", str(stage), "--dataset", "previous-settings")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "other fields/questions/metadata" in r.stderr and "fix: push to a new --dataset name" in r.stderr
    assert len(list(ds.records)) == 0
