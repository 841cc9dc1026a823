"""The Argilla review round trip against a real argilla-server stack (redis, osmem search
engine, server, RQ worker): push -> two reviewers respond -> pull -> reviewed release."""

import json
import os
import subprocess
import sys

import pytest

from trace_inversion.hub_cards.card import card_context, validate_card, write_card
from trace_inversion.hub_cards.publish import load_release, publish_local
from trace_inversion.io import read_split, write_split

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
