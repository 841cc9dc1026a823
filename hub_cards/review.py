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

Humans check the verifiers. Each automated verdict of a row's final sample is shown
twice: as an Argilla *suggestion* (answer consistency on ``consistent``: yes / no; the
step verifiers' first wrong step on the optional text question ``wrong_step``:
its number, or ``none`` when every step is right; the web UI pre-fills a suggestion as
the answer of a pending record, marked with the suggestion icon and the verifier's name,
and the reviewer changes it where they disagree), and as filterable metadata
(``step_verdict``, ``first_wrong_step``, ``verdict_steps`` / ``verdict_judge`` /
``verdict_prm``; ``auto_verdict`` is the answer verifier's). The trace is shown with each
step -- a paragraph, split on blank lines (a trace without blank lines: a line), numbered
from 0 like the verifiers' index -- tagged ``[0]``, ``[1]``, ... so a reviewer can name
the first wrong one. Rows from
before the step verifiers (only ``inversion_verdict``) get the answer suggestion only.
``review pull`` pairs every submitted response with each verifier's verdict on its row
(answer verifier vs. the reviewer's *consistent*; step verifiers vs. the reviewer's
*first wrong step*, ``none`` = pass) and reports, per verifier and per reviewer, the
confusion counts, the observed agreement and Cohen's kappa (``None`` when undefined),
in ``review_stats.json`` (``verifier_agreement``) and the card. ``suggestions=False``
pushes without suggestions (blind review: pre-filled verdicts anchor reviewers, which
inflates agreement; the card says which way the reviewers saw them).

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
import re
import shutil
from pathlib import Path
from typing import Optional

from trace_inversion.data.io import read_split, write_json, write_split
from trace_inversion.errors import UserError
from trace_inversion.scoring.verifiers import STEP_VERIFIERS  # the step-level verifiers with their own metadata

QUESTIONS = ("consistent", "plausible", "rating", "comment")
STEP_QUESTION = "wrong_step"  # optional text: a step number, or "none"
ALL_QUESTIONS = ("consistent", "plausible", STEP_QUESTION, "rating", "comment")  # in page order
FIELDS = ("problem", "answer", "summary", "inverted_trace")  # in reading order
VERIFIER_NAMES = {"answer": "answer consistency", "steps": "step checker", "judge": "LLM judge",
                  "prm": "process reward model"}
METADATA = ("auto_verdict", "first_verdict", "reason", "n_attempts", "step_verdict", "first_wrong_step",
            *(f"verdict_{v}" for v in STEP_VERIFIERS))
SUGGESTED = ("consistent", STEP_QUESTION)  # the questions whose suggestions a push owns


API_URL_ENV = "ARGILLA_API_URL"
API_KEY_ENV = "ARGILLA_API_KEY"


class ReviewError(UserError):
    pass


def client_from_env(api_url: Optional[str] = None, key_env: str = API_KEY_ENV):
    import argilla as rg

    url = api_url or os.environ.get(API_URL_ENV)
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
    "4. **Inverted trace** -- the full reasoning our inverter reconstructed from 2 and 3. Each paragraph is "
    "one *step* and starts with its number in a grey tag: `[0]`, `[1]`, ...",
    "",
    "Then answer:",
    "",
    "- **Consistent with the answer?** *yes* if the trace arrives at exactly the target's final answer "
    "(the same value; formatting aside).",
    "- **Plausible reasoning?** *yes* if its steps are sound reasoning a model could have produced, not a "
    "post-hoc justification that jumps to the answer.",
    "- **First wrong step** (optional): the tag number of the first step whose reasoning or arithmetic is "
    "wrong, e.g. `3`; `none` if every step is right. Leave it empty if you did not check the steps.",
    "- **Overall quality**: 1 (useless) to 5 (could be the real trace). **Comment**: what is wrong (optional).",
    "",
    "Answers marked with the suggestion icon are pre-filled by the automatic checks (hover to see which). "
    "They are a starting point, not the answer: change every one you disagree with (a pre-filled label is "
    "already selected: clicking it again clears it). Your answers measure how far each automatic check can "
    "be trusted.",
    "",
    "**Submit** when done. **Save as draft** to come back later: drafts are not counted. **Discard** a record "
    "that should not be in the dataset at all (garbled or broken): it leaves the release like a rejected one. "
    "Several reviewers may answer the same record; the majority of submitted answers decides.",
    "",
    "To review by the automatic checks, use *Filters > Metadata*: **Automatic answer check** (consistent / "
    "inconsistent / unverifiable), **First sample's check**, **Reason** (why a sample was resampled or "
    "rejected), **Sampling rounds**, **Automatic step check** (correct / wrong / unverifiable / not checked), "
    "**First wrong step (automatic)**, and each step verifier's own verdict (**Verifier: ...**).",
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
        # a text question, not a span question on the trace: Argilla renders a field that has a
        # span question as plain text (no markdown, no LaTeX), and a step is a number to name
        questions=[rg.LabelQuestion(name="consistent", title="Is the trace consistent with the answer?",
                                    labels=["yes", "no"]),
                   rg.LabelQuestion(name="plausible", title="Is it plausible reasoning?", labels=["yes", "no"]),
                   rg.TextQuestion(name=STEP_QUESTION, title="First wrong step",
                                   description="The tag number of the first wrong step of the trace, e.g. 3; "
                                               "none if every step is right.", required=False),
                   rg.RatingQuestion(name="rating", title="Overall quality", values=[1, 2, 3, 4, 5]),
                   rg.TextQuestion(name="comment", title="Comment", required=False)],
        metadata=[rg.TermsMetadataProperty(name="auto_verdict", title="Automatic answer check"),
                  rg.TermsMetadataProperty(name="first_verdict", title="First sample's check"),
                  rg.TermsMetadataProperty(name="reason", title="Reason (resampled / rejected)"),
                  rg.IntegerMetadataProperty(name="n_attempts", title="Sampling rounds"),
                  rg.TermsMetadataProperty(name="step_verdict", title="Automatic step check"),
                  rg.IntegerMetadataProperty(name="first_wrong_step", title="First wrong step (automatic)"),
                  *(rg.TermsMetadataProperty(name=f"verdict_{v}", title=f"Verifier: {VERIFIER_NAMES[v]}")
                    for v in STEP_VERIFIERS)],
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


# ----------------------------------------------------------------------------- the verifiers' verdicts

_PARA_BREAK = re.compile(r"\n[ \t]*\n")


def trace_steps(text: Optional[str]) -> list[str]:
    """The steps of a trace, index 0 first, as the step verifiers count them: its
    paragraphs, split on blank lines; a trace with no blank line but several lines (the
    toy world's one step per line) is split on lines."""
    steps = [p.strip() for p in _PARA_BREAK.split(text or "") if p.strip()]
    if len(steps) == 1 and "\n" in steps[0]:
        steps = [line.strip() for line in steps[0].split("\n") if line.strip()]
    return steps


# a paragraph starting like this is a block (heading, list, quote, table, code, display math):
# its tag goes on a line of its own, so the block still renders
_BLOCK_START = re.compile(r"^(?: {4}|\t| {0,3}(?:#|>|\||[-*+](?:\s|$)|\d+[.)](?:\s|$)|```|~~~|\$\$|\\\[))")


def numbered_trace(text: Optional[str]) -> str:
    """The trace as the review page shows it: each step tagged with its index, `` `[i]` ``."""
    steps = trace_steps(text)
    if not steps:
        return text or ""
    return "\n\n".join(f"`[{i}]`\n\n{s}" if _BLOCK_START.match(s) else f"`[{i}]` {s}" for i, s in enumerate(steps))


def _bool_or_none(v) -> Optional[bool]:
    return v if isinstance(v, bool) else None


def _int_or_none(v) -> Optional[int]:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def row_verifiers(row: dict) -> dict[str, dict]:
    """``{verifier: {"verdict": True/False/None, "first_wrong_step": int/None}}`` for the
    final sample of an inversion row: the ``verification`` entries (a list of dicts, or
    its JSON), ``answer`` from ``inversion_verdict`` where ``verification`` has none (an
    older output; with ``verification``, ``inversion_verdict`` combines every verifier),
    and, where no step verifier is listed, ``steps`` from the flat ``step_verdict``
    column when it holds a verdict. ``{}`` for a row without any."""
    out: dict[str, dict] = {}
    for v in _verification(row):
        out[str(v["verifier"])] = {"verdict": _bool_or_none(v.get("verdict")),
                                   "first_wrong_step": _int_or_none(v.get("first_wrong_step"))}
    if "answer" not in out and "inversion_verdict" in row:
        out["answer"] = {"verdict": _bool_or_none(row["inversion_verdict"]), "first_wrong_step": None}
    if all(k == "answer" for k in out) and isinstance(row.get("step_verdict"), bool):
        out["steps"] = {"verdict": row["step_verdict"], "first_wrong_step": _int_or_none(row.get("first_wrong_step"))}
    return dict(sorted(out.items(), key=lambda kv: _verifier_order(kv[0])))


def _verification(row: dict) -> list[dict]:
    ver = row.get("verification")
    if isinstance(ver, str):
        try:
            ver = json.loads(ver)
        except ValueError:
            ver = None
    return [v for v in ver if isinstance(v, dict) and v.get("verifier")] if isinstance(ver, list) else []


def _verifier_order(name: str) -> tuple:
    order = ("answer", *STEP_VERIFIERS)
    return (order.index(name), "") if name in order else (len(order), name)


def step_check(row: dict) -> Optional[dict]:
    """The row's step-level verdict (the flat ``step_verdict`` / ``first_wrong_step``
    columns; without them, combined from the step verifiers: wrong if any says wrong, at
    the earliest step named, right if all that could verify say right) and the verifiers
    it comes from; ``None`` when no step verifier ran on the row."""
    steps = {k: v for k, v in row_verifiers(row).items() if k != "answer"}
    if "step_verdict" in row or "first_wrong_step" in row:
        verdict, first = _bool_or_none(row.get("step_verdict")), _int_or_none(row.get("first_wrong_step"))
        if not steps and verdict is None and first is None:
            return None
        same = [k for k, v in steps.items() if v["verdict"] == verdict and v["first_wrong_step"] == first]
        steps = {k: steps[k] for k in same} or steps  # the verifiers the flat verdict is the one of
    elif steps:
        verdicts = [v["verdict"] for v in steps.values()]
        wrong = [v["first_wrong_step"] for v in steps.values() if v["verdict"] is False]
        verdict = False if wrong else (True if True in verdicts else None)
        first = min((w for w in wrong if w is not None), default=None)
    else:
        return None
    return {"verdict": verdict, "first_wrong_step": first if verdict is False else None,
            "verifiers": sorted(steps, key=_verifier_order) or ["steps"]}


STEP_TERMS = {True: "correct", False: "wrong", None: "unverifiable"}
VERIFIER_TERMS = {True: "pass", False: "fail", None: "unverifiable"}


def _agent(*names: str) -> str:
    """A suggestion's agent (the tooltip in the web UI): letters, digits, ``-_:./`` and spaces only."""
    return re.sub(r"[^a-zA-Z0-9\-_:./ ]", " ", "trace-inversion: " + " / ".join(names))[:200]


def suggestions_of(row: dict) -> dict[str, dict]:
    """``{question: {"value", "agent"}}``: what the automatic checks answer on the review page."""
    out = {}
    answer = row_verifiers(row).get("answer")
    if answer and answer["verdict"] is not None:
        out["consistent"] = {"value": "yes" if answer["verdict"] else "no", "agent": _agent("answer consistency")}
    step = step_check(row)
    if step and (step["verdict"] is True or step["first_wrong_step"] is not None):
        out[STEP_QUESTION] = {"value": "none" if step["verdict"] else str(step["first_wrong_step"]),
                              "agent": _agent(*step["verifiers"])}
    return out


def _record_of(row: dict, question_ids: Optional[dict[str, str]] = None) -> dict:
    """The REST upsert item of one row, keyed by row id (Argilla's ``external_id``); with
    ``question_ids`` (question name -> id), the automatic checks' suggestions too."""
    fields = {"problem": row["problem"], "answer": _math_markdown(row.get("target_answer") or ""),
              "summary": row.get("target_summary") or None, "inverted_trace": numbered_trace(row["inverted_trace"])}
    verifiers, step = row_verifiers(row), step_check(row)
    listed = any(v["verifier"] == "answer" for v in _verification(row))  # else inversion_verdict is the answer's
    metadata = {"auto_verdict": _verdict_term(verifiers["answer"]["verdict"] if listed
                                              else row.get("inversion_verdict")),
                "first_verdict": _verdict_term(row.get("first_verdict")),
                "reason": str(row.get("inversion_reason") or "none")[:200],
                "n_attempts": int(row.get("n_attempts") or 0),
                "step_verdict": STEP_TERMS[step["verdict"]] if step else "not checked",
                **{f"verdict_{v}": VERIFIER_TERMS[verifiers[v]["verdict"]] if v in verifiers else "not run"
                   for v in STEP_VERIFIERS}}
    if step and step["first_wrong_step"] is not None:
        metadata["first_wrong_step"] = step["first_wrong_step"]
    item = {"external_id": str(row["id"]), "fields": {k: v for k, v in fields.items() if v is not None},
            "metadata": metadata}
    if question_ids is not None:
        item["suggestions"] = [{"question_id": question_ids[q], "type": "model", **s}
                               for q, s in suggestions_of(row).items() if q in question_ids]
    return item


def push_for_review(folder: str | os.PathLike, dataset: str, client, workspace: Optional[str] = None,
                    sample: Optional[int] = None, seed: int = 0, config: str = "inverted",
                    min_submitted: int = 1, suggestions: bool = True) -> dict:
    """Create Argilla dataset ``dataset`` and log the rows of ``config`` (or a seeded
    sample of them). Records are keyed by row id, so pushing again updates, never duplicates.
    ``min_submitted`` (reviewers per record) applies when the dataset is created.
    ``suggestions``: show the automatic checks' verdicts as suggestions (pre-filled answers);
    ``False`` pushes for a blind review. A push makes the records' suggestions on
    ``consistent`` and ``wrong_step`` match the rows (stale ones are deleted)."""
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
        have = ({f.name for f in ds.settings.fields}, {q.name for q in ds.settings.questions},
                {m.name for m in ds.settings.metadata})
        if have != (set(FIELDS), set(ALL_QUESTIONS), set(METADATA)):
            raise ReviewError(f"Argilla dataset {dataset!r} has other fields/questions/metadata ({sorted(have[0])}, "
                              f"{sorted(have[1])}, {sorted(have[2])}) than this version's review page (made by an "
                              "older trace-inversion?); fix: push to a new --dataset name")
    http = client.http_client
    r = http.get(f"/api/v1/datasets/{ds.id}/questions")
    if r.status_code != 200:
        raise ReviewError(f"Argilla answered {r.status_code} to GET the dataset's questions: {r.text[:300]}")
    qids = {q["name"]: str(q["id"]) for q in r.json()["items"]}
    # REST bulk upsert, not the SDK's records.log: that one parses the records it gets
    # back, and crashes on one holding a discard without answers (values: null)
    records = [_record_of(r, qids if suggestions else {}) for r in rows]
    owned = {qids[q] for q in SUGGESTED}
    stale: dict[str, list[str]] = {}
    for i in range(0, len(records), 500):  # the server's bulk limit
        chunk = records[i:i + 500]
        resp = http.put(f"/api/v1/datasets/{ds.id}/records/bulk", json={"items": chunk})
        if resp.status_code != 200:
            raise ReviewError(f"Argilla answered {resp.status_code} to the records upsert: {resp.text[:500]}")
        sent = {x["external_id"]: {s["question_id"] for s in x["suggestions"]} for x in chunk}
        for item in resp.json().get("items", []):  # the records as stored, with every suggestion
            old = [str(s["id"]) for s in item.get("suggestions") or []
                   if str(s["question_id"]) in owned - sent.get(str(item.get("external_id")), set())]
            if old:
                stale[str(item["id"])] = old
    for record_id, sids in stale.items():  # a verdict gone since the last push, or a blind push
        resp = http.delete(f"/api/v1/records/{record_id}/suggestions", params={"ids": ",".join(sids)})
        if resp.status_code not in (200, 204):
            raise ReviewError(f"Argilla answered {resp.status_code} to deleting stale suggestions: {resp.text[:300]}")
    ids = [str(r["id"]) for r in rows]
    manifest_path = Path(folder) / "review_push.json"
    shown = suggestions
    try:  # pushing more samples to the same dataset: remember every row ever pushed
        before = json.loads(manifest_path.read_text())
        if (before.get("dataset"), before.get("workspace")) == (dataset, ws):
            ids = sorted(set(before.get("ids", [])) | set(ids))
            shown = shown or bool(before.get("suggestions_shown"))
    except (OSError, ValueError):
        pass
    suggested = {q: sum(1 for x in records for s in x["suggestions"] if s["question_id"] == qids[q]) for q in SUGGESTED}
    manifest = {"dataset": dataset, "workspace": ws, "pushed": len(records), "suggested": suggested,
                "suggestions_shown": shown, "ids": ids}
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
                              **{q: (values.get(q) or {}).get("value") for q in ALL_QUESTIONS}})
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


# ----------------------------------------------------------------------------- verifiers vs. reviewers

CONFUSION_KEYS = ("both_pass", "verifier_pass_reviewer_fail", "verifier_fail_reviewer_pass", "both_fail")
EXCLUDED_KEYS = ("verifier_unverifiable", "no_answer", "unreadable_answer")


def confusion_counts(pairs) -> dict[str, int]:
    """Counts of ``(verifier passes, reviewer passes)`` pairs; *pass* is consistent (answer
    verifier) or every step right (step verifiers)."""
    c = dict.fromkeys(CONFUSION_KEYS, 0)
    for verifier, reviewer in pairs:
        c[CONFUSION_KEYS[2 * (not verifier) + (not reviewer)]] += 1
    return c


def cohen_kappa(c: dict[str, int]) -> Optional[float]:
    """Cohen's kappa of a confusion count (``confusion_counts``): (p_o - p_e) / (1 - p_e);
    ``None`` when undefined (no pairs, or p_e = 1: both sides gave one and the same verdict)."""
    a, b, c_, d = (c[k] for k in CONFUSION_KEYS)
    n = a + b + c_ + d
    chance = (a + b) * (a + c_) + (c_ + d) * (b + d)  # n^2 * p_e, in integers: exact
    if n == 0 or chance == n * n:
        return None
    return ((a + d) * n - chance) / (n * n - chance)


_NO_WRONG_STEP = re.compile(r"none|no|-|-1|n/?a|no wrong steps?|all (?:steps )?(?:are )?(?:right|correct|ok)")
_WRONG_STEP = re.compile(r"(?:step|paragraph|tag)?\s*[\[#(]?\s*(\d+)\s*[\])]?")


def parse_step_answer(value, n_steps: Optional[int] = None) -> tuple[str, Optional[int]]:
    """A reviewer's *first wrong step*: ``("pass", None)`` (none wrong), ``("fail", k)``,
    ``("blank", None)`` (not answered) or ``("unreadable", None)`` (not a step of the trace)."""
    text = str(value).strip().lower().rstrip(".!") if value is not None else ""
    if not text:
        return "blank", None
    if _NO_WRONG_STEP.fullmatch(text):
        return "pass", None
    m = _WRONG_STEP.fullmatch(text)
    if m and (n_steps is None or int(m.group(1)) < n_steps):
        return "fail", int(m.group(1))
    return "unreadable", None


def _ratio(k: int, n: int) -> Optional[float]:
    return round(k / n, 4) if n else None


def _agreement(pairs: list[tuple], step_level: bool) -> dict:
    c = confusion_counts((v, h) for v, h, *_ in pairs)
    kappa = cohen_kappa(c)
    out = {"judgments": len(pairs), "confusion": c,
           "agreement": _ratio(c["both_pass"] + c["both_fail"], len(pairs)),
           "kappa": None if kappa is None else round(kappa, 4),
           "reviewer_pass_rate_when_verifier_passes": _ratio(c["both_pass"],
                                                             c["both_pass"] + c["verifier_pass_reviewer_fail"]),
           "reviewer_fail_rate_when_verifier_fails": _ratio(c["both_fail"],
                                                            c["both_fail"] + c["verifier_fail_reviewer_pass"])}
    if step_level:  # where both say a step is wrong and both name one: the same one?
        located = [(vs, hs) for v, h, vs, hs, _ in pairs if not v and not h and vs is not None and hs is not None]
        out["first_wrong_step"] = {"both_fail_located": len(located), "same_step": sum(vs == hs for vs, hs in located)}
    return out


def verifier_agreement(rows: list[dict], reviews: dict[str, list[dict]]) -> dict[str, dict]:
    """Per verifier (``row_verifiers``), its agreement with the reviewers: every submitted
    response to a row is one judgment, paired with the verifier's verdict on that row --
    the answer verifier with the reviewer's ``consistent``, a step verifier with the
    reviewer's ``wrong_step`` (``none`` = pass, a step number = fail). Pooled over
    reviewers and ``per_reviewer``: confusion counts, observed agreement, Cohen's kappa
    (``None`` when undefined), how often reviewers pass what it passes and fail what it
    fails, and, for step verifiers, how often both name the same first wrong step. Pairs
    the verifier could not verify, or the reviewer left unanswered or unreadable, are
    counted in ``excluded``."""
    acc: dict[str, dict] = {}
    for row in rows:
        submitted = [r for r in reviews.get(str(row["id"]), []) if _status(r) == "submitted"]
        if not submitted:
            continue
        n_steps = len(trace_steps(row.get("inverted_trace")))
        for name, v in row_verifiers(row).items():
            a = acc.setdefault(name, {"pairs": [], "rows": set(), "excluded": dict.fromkeys(EXCLUDED_KEYS, 0)})
            for resp in submitted:
                if name == "answer":
                    human = {"yes": True, "no": False}.get(resp.get("consistent"))
                    kind, step = ("blank" if human is None else "ok"), None
                else:
                    kind, step = parse_step_answer(resp.get(STEP_QUESTION), n_steps)
                    human = kind == "pass"
                if v["verdict"] is None:
                    a["excluded"]["verifier_unverifiable"] += 1
                elif kind in ("blank", "unreadable"):
                    a["excluded"]["no_answer" if kind == "blank" else "unreadable_answer"] += 1
                else:
                    a["pairs"].append((v["verdict"], human, v["first_wrong_step"], step, resp.get("user")))
                    a["rows"].add(str(row["id"]))
    out = {}
    for name in sorted(acc, key=_verifier_order):
        a, step_level = acc[name], name != "answer"
        users = sorted({p[-1] for p in a["pairs"]}, key=str)
        out[name] = {"reviewer_question": "consistent" if name == "answer" else STEP_QUESTION,
                     "rows": len(a["rows"]), **_agreement(a["pairs"], step_level), "excluded": a["excluded"],
                     "per_reviewer": {str(u): _agreement([p for p in a["pairs"] if p[-1] == u], step_level)
                                      for u in users}}
    return out


def agreement_section(agreement: dict[str, dict], suggestions_shown: Optional[bool]) -> str:
    """The card's *Verifier agreement* section (markdown)."""
    from trace_inversion.hub_cards.card import md_cell

    def num(x):
        return "–" if x is None else f"{x:.2f}"

    def pct(x):
        return "–" if x is None else f"{int(100 * x + 0.5)}%"

    def label(name):
        return md_cell(f"{VERIFIER_NAMES.get(name, name)} ({name})")

    parts = ["How far each automatic verifier agrees with the human reviewers. Each submitted response to a row "
             "is one judgment (drafts and discards never count): the answer verifier against the reviewer's "
             "*consistent with the answer?*, each step verifier against the reviewer's *first wrong step* "
             "(`none`: every step right). *Pass*: consistent, or every step right. Cohen's κ corrects the "
             "agreement for chance (1: perfect, 0: chance level; –: undefined, with no judgments or a single "
             "verdict on both sides). *Reviewers pass what it passes*: how far a row this filter keeps can be "
             "trusted. Details per reviewer and the excluded judgments: `verifier_agreement` in the statistics."]
    if not agreement:
        parts.append("No verifier verdict could be compared: no submitted response on a row with a verdict.")
    else:
        table = ["| verifier | judgments (rows) | both pass | verifier pass, reviewer fail | verifier fail, "
                 "reviewer pass | both fail | agreement | Cohen's κ | reviewers pass what it passes | "
                 "same first wrong step |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, a in agreement.items():
            c, loc = a["confusion"], a.get("first_wrong_step")
            table.append(f"| {label(name)} | {a['judgments']} ({a['rows']}) | "
                         + " | ".join(str(c[k]) for k in CONFUSION_KEYS)
                         + f" | {pct(a['agreement'])} | {num(a['kappa'])} | "
                         f"{pct(a['reviewer_pass_rate_when_verifier_passes'])} | "
                         + (f"{loc['same_step']} of {loc['both_fail_located']}" if loc else "") + " |")
        parts.append("\n".join(table))
        per = ["| verifier | reviewer | judgments | agreement | Cohen's κ |", "|---|---|---|---|---|"]
        per += [f"| {label(name)} | {md_cell(user)} | {r['judgments']} | {pct(r['agreement'])} | {num(r['kappa'])} |"
                for name, a in agreement.items() for user, r in a["per_reviewer"].items()]
        parts.append("Per reviewer:\n\n" + "\n".join(per))
    if suggestions_shown:
        parts.append("Reviewers saw each verdict pre-filled as a suggestion, which anchors them toward agreeing: "
                     "read these figures as upper bounds (for a blind review, push with "
                     "`push_for_review(..., suggestions=False)`).")
    elif suggestions_shown is False:
        parts.append("Reviewers did not see the verifiers' verdicts as suggestions (blind review).")
    return "\n\n".join(parts)


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
    from trace_inversion.config.safe_paths import absolute, claim_dir

    src = absolute(folder)
    # a folder of the project's (or --force) is replaced; never the pushed folder or one around it
    dst = claim_dir(out, force=force, inputs=[src], empty=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*", "README.md"), dirs_exist_ok=True)
    rows = read_split(src, config)
    try:
        manifest = json.loads((src / "review_push.json").read_text())
        pushed: Optional[set] = set(manifest["ids"])
    except (OSError, ValueError, KeyError, TypeError):
        manifest, pushed = {}, None
    agreement = verifier_agreement(rows, reviews)
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
    ctx["stats"] = dict(ctx["stats"], review_verdicts=counts, review_responses=n_resp, verifier_agreement=agreement)
    detail = ", ".join(f"{n} {k}" for k, n in sorted(notes.items()))
    ctx["sections"] = dict(ctx.get("sections", {}), **{"Human review": (
        f"Reviewed in Argilla: {counts['accepted']} accepted, {counts['rejected']} rejected and "
        f"{counts['discarded']} discarded (both moved to `review_rejected`), {counts['unreviewed']} unreviewed "
        f"(kept, `review_status: unreviewed`{'; ' + detail if detail else ''}). From {n_resp['submitted']} "
        f"submitted, {n_resp['discarded']} discarded and {n_resp['draft']} draft responses (drafts never count). "
        "Each row carries every reviewer's answers in `review_responses`."),
        "Verifier agreement": agreement_section(agreement, manifest.get("suggestions_shown"))})
    ctx["title"] = ctx["title"] + " (reviewed)"
    write_card(dst, ctx)
    stats = {"rows": len(rows), **counts, "kept": len(kept), "moved_to_review_rejected": len(rejected),
             "unreviewed_detail": notes, "responses": n_resp, "verifier_agreement": agreement,
             "output_dir": str(dst)}
    write_json(stats, dst / "review_stats.json")
    return stats


def add_parser(subparsers) -> None:
    """The ``review`` command."""
    from trace_inversion.cli_options import add_force

    p = subparsers.add_parser("review", help="tool: Argilla review round trip (push, pull -> reviewed release, serve)",
                              description="push: log an inversion output (or --sample N rows) to an Argilla dataset. "
                                          "pull: fetch submitted responses and write a reviewed release folder "
                                          "(rejected rows moved to review_rejected). serve: run a local Argilla stack "
                                          "in FOLDER. Server from $ARGILLA_API_URL (or --api-url), key from "
                                          "$ARGILLA_API_KEY.")
    p.add_argument("action", choices=["push", "pull", "serve"])
    p.add_argument("folder", help="push/pull: an inversion output or release folder; serve: the stack's workdir")
    p.add_argument("--dataset", default="trace-inversion-review", help="Argilla dataset name")
    p.add_argument("--blind", action="store_true",
                   help="push: no pre-filled verifier suggestions (reviewers are not anchored by the verdicts)")
    p.add_argument("--workspace", help="Argilla workspace (default: the first one)")
    p.add_argument("--sample", type=int, help="push only a seeded sample of N rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reviewers-per-record", type=int, default=1, metavar="N",
                   help="push: a record stays pending for every reviewer until N have submitted it (default 1)")
    p.add_argument("--out", help="pull: folder for the reviewed release")
    add_force(p)
    p.add_argument("--api-url", help="Argilla URL (default $ARGILLA_API_URL)")
    p.add_argument("--key-env", default=API_KEY_ENV, help="environment variable holding the API key")
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.cli_options import print_json

    if args.action == "serve":
        from trace_inversion.local_services.argilla_stack import main as serve

        return serve([args.folder])
    client = client_from_env(args.api_url, args.key_env)
    if args.action == "push":
        out = push_for_review(args.folder, args.dataset, client, args.workspace, args.sample, args.seed,
                              min_submitted=args.reviewers_per_record, suggestions=not args.blind)
    else:
        if not args.out:
            raise ReviewError("review pull needs --out (the reviewed release folder to write)")
        out = build_reviewed(args.folder, pull_reviews(args.dataset, client, args.workspace), args.out,
                             force=args.force)
    print_json(out)
    return 0
