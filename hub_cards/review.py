"""The Argilla review round trip: push a release (or a sample) to an Argilla 2.x
dataset, pull the submitted responses back, and build a reviewed release that records
every reviewer verdict and drops the rows reviewers rejected.

Record fields: problem, answer, summary, inverted trace, and the automatic verdicts.
Questions: is the trace consistent with the answer (yes/no), is it plausible reasoning
(yes/no), a 1-5 rating and an optional comment. A row is *accepted* when most of its
submitted responses say yes to both, *rejected* when most say no to either (ties and
discarded responses count as rejections), *unreviewed* without submitted responses.
Every pushed row ends in exactly one of ``inverted`` (accepted + unreviewed, with
review columns) and ``review_rejected``; rows never pushed stay in ``inverted`` as
unreviewed. Credentials come only from ``ARGILLA_API_URL`` / ``ARGILLA_API_KEY``.
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


def review_settings():
    import argilla as rg

    return rg.Settings(
        guidelines=("Check each inverted trace against the target's final answer and reasoning summary. "
                    "Consistent: the trace arrives at exactly the answer. Plausible: the steps are "
                    "sound reasoning a model could have produced, not a post-hoc justification."),
        fields=[rg.TextField(name="problem", title="Problem"),
                rg.TextField(name="answer", title="Target's final answer"),
                rg.TextField(name="summary", title="Target's reasoning summary", required=False),
                rg.TextField(name="inverted_trace", title="Inverted trace"),
                rg.TextField(name="verdicts", title="Automatic verdicts", use_markdown=True)],
        questions=[rg.LabelQuestion(name="consistent", title="Is the trace consistent with the answer?",
                                    labels=["yes", "no"]),
                   rg.LabelQuestion(name="plausible", title="Is it plausible reasoning?", labels=["yes", "no"]),
                   rg.RatingQuestion(name="rating", title="Overall quality", values=[1, 2, 3, 4, 5]),
                   rg.TextQuestion(name="comment", title="Comment", required=False)],
        metadata=[rg.TermsMetadataProperty(name="auto_verdict"), rg.IntegerMetadataProperty(name="n_attempts")],
        allow_extra_metadata=False,
    )


def _verdict_text(r: dict) -> str:
    v = {True: "consistent", False: "inconsistent", None: "unverifiable"}.get(r.get("inversion_verdict"), "unknown")
    return (f"- answer check: **{v}**\n- sampling rounds: {r.get('n_attempts', '?')}\n"
            f"- first sample: {r.get('first_verdict')}\n- reason: {r.get('inversion_reason') or '—'}")


def push_for_review(folder: str | os.PathLike, dataset: str, client, workspace: Optional[str] = None,
                    sample: Optional[int] = None, seed: int = 0, config: str = "inverted") -> dict:
    """Create Argilla dataset ``dataset`` and log the rows of ``config`` (or a seeded
    sample of them). Records are keyed by row id, so pushing again updates, never duplicates."""
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
        ds = rg.Dataset(name=dataset, workspace=ws, settings=review_settings(), client=client).create()
    records = [rg.Record(id=str(r["id"]), fields={
        "problem": r["problem"], "answer": r.get("target_answer") or "",
        "summary": r.get("target_summary") or None, "inverted_trace": r["inverted_trace"] or "",
        "verdicts": _verdict_text(r)},
        metadata={"auto_verdict": str(r.get("inversion_verdict")), "n_attempts": int(r.get("n_attempts") or 0)})
        for r in rows]
    ds.records.log(records)
    manifest = {"dataset": dataset, "workspace": ws, "pushed": len(records), "ids": [str(r["id"]) for r in rows]}
    write_json(manifest, Path(folder) / "review_push.json")
    return {k: v for k, v in manifest.items() if k != "ids"}


def _default_workspace(client) -> str:
    import argilla as rg

    wss = list(client.workspaces)
    if wss:
        return wss[0].name
    return rg.Workspace(name="trace-inversion", client=client).create().name


def pull_reviews(dataset: str, client, workspace: Optional[str] = None) -> dict[str, list[dict]]:
    """``{record id: [response, ...]}`` with each response's status, user and answers."""
    ws = workspace or _default_workspace(client)
    ds = client.datasets(name=dataset, workspace=ws)
    if ds is None:
        raise ReviewError(f"no Argilla dataset {dataset!r} in workspace {ws!r}; fix: review push first")
    out: dict[str, list[dict]] = {}
    for rec in ds.records(with_responses=True):
        by_user: dict[str, dict] = {}
        for resp in rec.responses:
            if resp.question_name in QUESTIONS:
                u = by_user.setdefault(str(resp.user_id), {"user": str(resp.user_id),
                                                       "status": str(getattr(resp.status, "value", resp.status))})
                u[resp.question_name] = resp.value
        out[str(rec.id)] = list(by_user.values())
    return out


def decide(responses: list[dict]) -> str:
    submitted = [r for r in responses if r.get("status", "").endswith(("submitted", "discarded"))]
    if not submitted:
        return "unreviewed"
    yes = sum(1 for r in submitted if r.get("status", "").endswith("submitted")
              and r.get("consistent") == "yes" and r.get("plausible") == "yes")
    return "accepted" if yes > len(submitted) - yes else "rejected"


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
    kept, rejected, counts = [], [], {"accepted": 0, "rejected": 0, "unreviewed": 0}
    for r in rows:
        resp = reviews.get(str(r["id"]), [])
        status = decide(resp)
        counts[status] += 1
        ratings = [x["rating"] for x in resp if x.get("rating") is not None]
        r.update(review_status=status, review_responses=json.dumps(resp, sort_keys=True),
                 review_n=len(resp), review_rating_mean=(sum(ratings) / len(ratings)) if ratings else None,
                 review_comments=json.dumps([x["comment"] for x in resp if x.get("comment")]))
        (rejected if status == "rejected" else kept).append(r)
    unknown = sorted(set(reviews) - {str(r["id"]) for r in rows})
    if unknown:
        raise ReviewError(f"{len(unknown)} reviewed records are not rows of {src}/{config} (e.g. {unknown[:3]}); "
                          "fix: pull into the folder that was pushed")
    write_split(dst, config, kept, like=rejected)
    write_split(dst, "review_rejected", rejected, like=kept)
    ctx = load_context(src)
    ctx["counts"] = dict(ctx["counts"], **{config: len(kept), "review_rejected": len(rejected)})
    ctx["stats"] = dict(ctx["stats"], review_verdicts=counts)
    ctx["sections"] = dict(ctx.get("sections", {}), **{"Human review": (
        f"Reviewed in Argilla: {counts['accepted']} accepted, {counts['rejected']} rejected (moved to "
        f"`review_rejected`), {counts['unreviewed']} unreviewed (kept, `review_status: unreviewed`). "
        "Each row carries every reviewer's answers in `review_responses`.")})
    ctx["title"] = ctx["title"] + " (reviewed)"
    write_card(dst, ctx)
    stats = {"rows": len(rows), **counts, "kept": len(kept), "output_dir": str(dst)}
    write_json(stats, dst / "review_stats.json")
    return stats
