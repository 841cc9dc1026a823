"""The Argilla review round trip: push a release (or a sample) to an Argilla 2.x
dataset, pull every reviewer's responses back, and build a reviewed release that
records them and moves the rows reviewers rejected or discarded out of the release.

The review page shows, in reading order and as markdown with LaTeX: the problem, the
target's final answer, its reasoning summary, the inverted trace. The automatic checks
are metadata a reviewer can filter on (``auto_verdict``, ``first_verdict``, ``reason``,
``n_attempts``). Questions: is the trace consistent with the answer (yes/no), is it
plausible reasoning (yes/no), a 1-5 rating and an optional comment.

Where a row lands (``review_status``), from all its reviewers' responses:

* **accepted** -- some submitted responses, and more of them say yes to both
  questions than there are other submitted or discarded responses; kept in ``inverted``;
* **rejected** -- some submitted responses, but not such a majority (ties reject);
  moved to ``review_rejected``;
* **discarded** -- no submitted response, at least one reviewer discarded the record
  (with or without answers); moved to ``review_rejected``;
* **unreviewed** -- no submitted or discarded response: nobody answered, only drafts
  (a draft never counts), the record was deleted in Argilla, or the row was never
  pushed (``review_note`` says which); kept in ``inverted``.

Every row carries every reviewer's responses -- drafts, discards and partial answers
included -- in ``review_responses``. Responses are read through Argilla's REST API
(``GET /api/v1/datasets/{id}/records?include=responses``), not the SDK's record
objects, which cannot hold a discard without answers (``values: null``). A pull is a
snapshot: pulling again later picks up what was reviewed since.
Credentials come only from ``ARGILLA_API_URL`` / ``ARGILLA_API_KEY``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Optional

from trace_inversion.io import read_split, write_json, write_split
from trace_inversion.errors import UserError

QUESTIONS = ("consistent", "plausible", "rating", "comment")
FIELDS = ("problem", "answer", "summary", "inverted_trace")  # in reading order
METADATA = ("auto_verdict", "first_verdict", "reason", "n_attempts")


class ReviewError(UserError):
    pass


def client_from_env(api_url: Optional[str] = None, key_env: str = "ARGILLA_API_KEY"):
    import argilla as rg

    url = api_url or os.environ.get("ARGILLA_API_URL")
    key = os.environ.get(key_env)
    if not url:
        raise ReviewError("no Argilla server: set ARGILLA_API_URL (or pass --api-url); "
                          "fix: `trace-inversion review serve DIR` starts a local one")
    if not key:
        raise ReviewError(f"no Argilla API key: environment variable {key_env} is not set")
    return rg.Argilla(api_url=url, api_key=key)


GUIDELINES = "\n".join([  # one line per paragraph: the web UI keeps line breaks
    "## Reviewing inverted traces",
    "",
    "Each record is one problem the target model solved. Read it top to bottom:",
    "",
    "1. **Problem** -- what the target was asked.",
    "2. **Target's final answer** -- what it answered (the reference for this review, right or wrong).",
    "3. **Target's reasoning summary** -- the short summary its API returned (may be empty).",
    "4. **Inverted trace** -- the full reasoning our inverter reconstructed from 2 and 3.",
    "",
    "Then answer:",
    "",
    "- **Consistent with the answer?** *yes* if the trace arrives at exactly the target's final answer "
    "(the same value; formatting aside).",
    "- **Plausible reasoning?** *yes* if its steps are sound reasoning a model could have produced, not a "
    "post-hoc justification that jumps to the answer.",
    "- **Overall quality**: 1 (useless) to 5 (could be the real trace). **Comment**: what is wrong (optional).",
    "",
    "**Submit** when done. **Save as draft** to come back later: drafts are not counted. **Discard** a record "
    "that should not be in the dataset at all (garbled or broken): it leaves the release like a rejected one. "
    "Several reviewers may answer the same record; the majority of submitted answers decides.",
    "",
    "To review by the automatic checks, use *Filters > Metadata*: **Automatic answer check** (consistent / "
    "inconsistent / unverifiable), **First sample's check**, **Reason** (why a sample was resampled or "
    "rejected), **Sampling rounds**.",
]) + "\n"


def review_settings(min_submitted: int = 1):
    """``min_submitted``: reviewers per record -- a record stays in every reviewer's
    *pending* queue until that many have submitted it (Argilla's task distribution)."""
    import argilla as rg

    md = dict(use_markdown=True)  # markdown with LaTeX ($...$, $$...$$) in the web UI
    return rg.Settings(
        guidelines=GUIDELINES,
        fields=[rg.TextField(name="problem", title="Problem", **md),
                rg.TextField(name="answer", title="Target's final answer", **md),
                rg.TextField(name="summary", title="Target's reasoning summary", required=False, **md),
                rg.TextField(name="inverted_trace", title="Inverted trace", **md)],
        questions=[rg.LabelQuestion(name="consistent", title="Is the trace consistent with the answer?",
                                    labels=["yes", "no"]),
                   rg.LabelQuestion(name="plausible", title="Is it plausible reasoning?", labels=["yes", "no"]),
                   rg.RatingQuestion(name="rating", title="Overall quality", values=[1, 2, 3, 4, 5]),
                   rg.TextQuestion(name="comment", title="Comment", required=False)],
        metadata=[rg.TermsMetadataProperty(name="auto_verdict", title="Automatic answer check"),
                  rg.TermsMetadataProperty(name="first_verdict", title="First sample's check"),
                  rg.TermsMetadataProperty(name="reason", title="Reason (resampled / rejected)"),
                  rg.IntegerMetadataProperty(name="n_attempts", title="Sampling rounds")],
        allow_extra_metadata=False,
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )


VERDICT_TERMS = {True: "consistent", False: "inconsistent", None: "unverifiable"}


def _verdict_term(v) -> str:
    return VERDICT_TERMS.get(v, str(v)) if isinstance(v, (bool, type(None))) else str(v)


def _math_markdown(text: str) -> str:
    """A bare LaTeX answer (``\\boxed{12}``) as inline math, so the markdown field renders it."""
    t = text.strip()
    return f"${t}$" if t and "\\" in t and "$" not in t and "\n" not in t else text


def _record_of(row: dict) -> dict:
    """The REST upsert item of one row, keyed by row id (Argilla's ``external_id``)."""
    fields = {"problem": row["problem"], "answer": _math_markdown(row.get("target_answer") or ""),
              "summary": row.get("target_summary") or None, "inverted_trace": row["inverted_trace"] or ""}
    return {"external_id": str(row["id"]), "fields": {k: v for k, v in fields.items() if v is not None},
            "metadata": {"auto_verdict": _verdict_term(row.get("inversion_verdict")),
                         "first_verdict": _verdict_term(row.get("first_verdict")),
                         "reason": str(row.get("inversion_reason") or "none")[:200],
                         "n_attempts": int(row.get("n_attempts") or 0)}}


def push_for_review(folder: str | os.PathLike, dataset: str, client, workspace: Optional[str] = None,
                    sample: Optional[int] = None, seed: int = 0, config: str = "inverted",
                    min_submitted: int = 1) -> dict:
    """Create Argilla dataset ``dataset`` and log the rows of ``config`` (or a seeded
    sample of them). Records are keyed by row id, so pushing again updates, never duplicates.
    ``min_submitted`` (reviewers per record) applies when the dataset is created."""
    import argilla as rg

    rows = read_split(folder, config)
    if not rows:
        raise ReviewError(f"{folder}: config {config!r} has no rows to review")
    missing = [c for c in ("id", "problem", "inverted_trace") if c not in rows[0]]
    if missing:
        raise ReviewError(f"{folder}: config {config!r} lacks columns {missing}; fix: push an inversion output")
    if sample is not None and sample < len(rows):
        rows = random.Random(seed).sample(rows, sample)
    ws = workspace or _default_workspace(client)
    ds = client.datasets(name=dataset, workspace=ws)
    if ds is None:
        ds = rg.Dataset(name=dataset, workspace=ws, settings=review_settings(min_submitted), client=client).create()
    else:
        have = ({f.name for f in ds.settings.fields}, {m.name for m in ds.settings.metadata})
        if have != (set(FIELDS), set(METADATA)):
            raise ReviewError(f"Argilla dataset {dataset!r} has other fields/metadata ({sorted(have[0])}, "
                              f"{sorted(have[1])}) than this version's review page; fix: push to a new --dataset name")
    # REST bulk upsert, not the SDK's records.log: that one parses the records it gets
    # back, and crashes on one holding a discard without answers (values: null)
    records = [_record_of(r) for r in rows]
    for i in range(0, len(records), 500):  # the server's bulk limit
        resp = client.http_client.put(f"/api/v1/datasets/{ds.id}/records/bulk", json={"items": records[i:i + 500]})
        if resp.status_code != 200:
            raise ReviewError(f"Argilla answered {resp.status_code} to the records upsert: {resp.text[:500]}")
    ids = [str(r["id"]) for r in rows]
    manifest_path = Path(folder) / "review_push.json"
    try:  # pushing more samples to the same dataset: remember every row ever pushed
        before = json.loads(manifest_path.read_text())
        if (before.get("dataset"), before.get("workspace")) == (dataset, ws):
            ids = sorted(set(before.get("ids", [])) | set(ids))
    except (OSError, ValueError):
        pass
    manifest = {"dataset": dataset, "workspace": ws, "pushed": len(records), "ids": ids}
    write_json(manifest, manifest_path)
    return {k: v for k, v in manifest.items() if k != "ids"}


def _default_workspace(client) -> str:
    import argilla as rg

    wss = list(client.workspaces)
    if wss:
        return wss[0].name
    return rg.Workspace(name="trace-inversion", client=client).create().name


def _status(response: dict) -> str:
    return str(response.get("status") or "").rsplit(".", 1)[-1]


def _paged(http, path: str, params: dict, limit: int = 1000):
    offset = 0
    while True:
        r = http.get(path, params=dict(params, offset=offset, limit=limit))
        if r.status_code != 200:
            raise ReviewError(f"Argilla answered {r.status_code} to GET {path}: {r.text[:300]}")
        items = r.json().get("items", [])
        yield from items
        if len(items) < limit:
            return
        offset += limit


def _usernames(http) -> dict[str, str]:
    r = http.get("/api/v1/users")
    if r.status_code != 200:  # an annotator's key may not list users: keep the ids
        return {}
    return {str(u["id"]): u["username"] for u in r.json().get("items", [])}


def pull_reviews(dataset: str, client, workspace: Optional[str] = None) -> dict[str, list[dict]]:
    """``{row id: [response, ...]}`` for every record in the dataset: each response of
    each reviewer with its ``status`` (submitted / draft / discarded), ``user``
    (username), ``user_id``, ``updated_at`` and the answers given (``None`` for a
    question left unanswered). Read through the REST API (see the module docstring)."""
    ws = workspace or _default_workspace(client)
    ds = client.datasets(name=dataset, workspace=ws)
    if ds is None:
        raise ReviewError(f"no Argilla dataset {dataset!r} in workspace {ws!r}; fix: review push first")
    http = client.http_client
    names = _usernames(http)
    out: dict[str, list[dict]] = {}
    for rec in _paged(http, f"/api/v1/datasets/{ds.id}/records", {"include": "responses"}):
        responses = []
        for resp in rec.get("responses") or []:
            values = resp.get("values") or {}  # null for a discard without answers
            uid = str(resp.get("user_id"))
            responses.append({"user": names.get(uid, uid), "user_id": uid, "status": _status(resp),
                              "updated_at": resp.get("updated_at"),
                              **{q: (values.get(q) or {}).get("value") for q in QUESTIONS}})
        out[str(rec.get("external_id") or rec["id"])] = sorted(responses, key=lambda x: (x["user"], x["user_id"]))
    return out


def decide(responses: list[dict]) -> str:
    """accepted / rejected / discarded / unreviewed (see the module docstring)."""
    submitted = [r for r in responses if _status(r) == "submitted"]
    discarded = sum(1 for r in responses if _status(r) == "discarded")
    if not submitted:
        return "discarded" if discarded else "unreviewed"
    yes = sum(1 for r in submitted if r.get("consistent") == "yes" and r.get("plausible") == "yes")
    return "accepted" if yes > len(submitted) + discarded - yes else "rejected"


def _unreviewed_note(rid: str, reviews: dict, pushed: Optional[set]) -> str:
    if rid in reviews:
        return "drafts only" if any(_status(x) == "draft" for x in reviews[rid]) else "no responses"
    if pushed is not None and rid not in pushed:
        return "not pushed"
    return "deleted in Argilla" if pushed is not None else "not in Argilla"


def build_reviewed(folder: str | os.PathLike, reviews: dict[str, list[dict]], out: str | os.PathLike,
                   config: str = "inverted", force: bool = False) -> dict:
    """A reviewed copy of stage folder ``folder`` in ``out``: review columns on
    ``config``, rejected rows moved to ``review_rejected``, the card re-rendered."""
    from trace_inversion.hub_cards.card import load_context, write_card
    from trace_inversion.safe_paths import absolute, claim_dir

    src = absolute(folder)
    # a folder of the project's (or --force) is replaced; never the pushed folder or one around it
    dst = claim_dir(out, force=force, inputs=[src], empty=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*", "README.md"), dirs_exist_ok=True)
    rows = read_split(src, config)
    try:
        pushed: Optional[set] = set(json.loads((src / "review_push.json").read_text())["ids"])
    except (OSError, ValueError, KeyError):
        pushed = None
    kept, rejected = [], []
    counts = {"accepted": 0, "rejected": 0, "discarded": 0, "unreviewed": 0}
    notes: dict[str, int] = {}
    n_resp = {"submitted": 0, "draft": 0, "discarded": 0}
    for r in rows:
        rid = str(r["id"])
        resp = reviews.get(rid, [])
        status = decide(resp)
        counts[status] += 1
        note = _unreviewed_note(rid, reviews, pushed) if status == "unreviewed" else None
        if note:
            notes[note] = notes.get(note, 0) + 1
        for x in resp:
            n_resp[_status(x)] = n_resp.get(_status(x), 0) + 1
        final = [x for x in resp if _status(x) == "submitted"]
        ratings = [x["rating"] for x in final if x.get("rating") is not None]
        r.update(review_status=status, review_note=note, review_responses=json.dumps(resp, sort_keys=True),
                 review_n=len(final), review_rating_mean=(sum(ratings) / len(ratings)) if ratings else None,
                 review_comments=json.dumps([x["comment"] for x in resp
                                             if x.get("comment") and _status(x) != "draft"]))
        (rejected if status in ("rejected", "discarded") else kept).append(r)
    unknown = sorted(set(reviews) - {str(r["id"]) for r in rows})
    if unknown:
        raise ReviewError(f"{len(unknown)} reviewed records are not rows of {src}/{config} (e.g. {unknown[:3]}); "
                          "fix: pull into the folder that was pushed")
    write_split(dst, config, kept, like=rejected)
    write_split(dst, "review_rejected", rejected, like=kept)
    ctx = load_context(src)
    ctx["counts"] = dict(ctx["counts"], **{config: len(kept), "review_rejected": len(rejected)})
    ctx["stats"] = dict(ctx["stats"], review_verdicts=counts, review_responses=n_resp)
    detail = ", ".join(f"{n} {k}" for k, n in sorted(notes.items()))
    ctx["sections"] = dict(ctx.get("sections", {}), **{"Human review": (
        f"Reviewed in Argilla: {counts['accepted']} accepted, {counts['rejected']} rejected and "
        f"{counts['discarded']} discarded (both moved to `review_rejected`), {counts['unreviewed']} unreviewed "
        f"(kept, `review_status: unreviewed`{'; ' + detail if detail else ''}). From {n_resp['submitted']} "
        f"submitted, {n_resp['discarded']} discarded and {n_resp['draft']} draft responses (drafts never count). "
        "Each row carries every reviewer's answers in `review_responses`.")})
    ctx["title"] = ctx["title"] + " (reviewed)"
    write_card(dst, ctx)
    stats = {"rows": len(rows), **counts, "kept": len(kept), "moved_to_review_rejected": len(rejected),
             "unreviewed_detail": notes, "responses": n_resp, "output_dir": str(dst)}
    write_json(stats, dst / "review_stats.json")
    return stats
