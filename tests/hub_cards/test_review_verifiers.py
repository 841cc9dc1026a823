"""Humans check the verifiers (issue 14, item 6): the automatic verdicts on the review
page (suggestions + filterable metadata, the trace's steps tagged) and, after a review,
each verifier's agreement with the reviewers (confusion counts, Cohen's kappa).

Fast tests of the pieces here; the round trip against a real Argilla stack with two
reviewers who disagree with the verifiers on known rows is ``test_verifiers_round_trip``
(slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction

import pytest

from trace_inversion.hub_cards import review
from trace_inversion.hub_cards.card import card_context, validate_card, write_card
from trace_inversion.data.io import read_split, write_split

TRACE = "First, $3 + 4 = 7$.\n\nThen $7 \\cdot 7 = 49$, so 9 mod 10.\n\nSo the answer is $\\boxed{9}$."


def _v(verifier, verdict, first=None):
    return {"verifier": verifier, "verdict": verdict, "reason": "" if verdict else f"{verifier} says no",
            "first_wrong_step": first}


def _row(rid, answer, *checks):
    """An inversion row with known verifier columns, as the invert stage writes them:
    ``checks`` are the step verifiers' ``(verifier, verdict, first wrong step)`` in run
    order; ``inversion_verdict`` combines every verdict (False if any, else None if any,
    else True) and the flat ``step_verdict`` / ``first_wrong_step`` are the first step
    verifier's. Without ``checks``, an older row: ``inversion_verdict`` is the answer's."""
    row = {"id": rid, "problem": f"Problem {rid}: evaluate left to right modulo 10: 3 + 4 * 7",
           "target_answer": "\\boxed{9}", "target_summary": "step 2 gives 9.", "inverted_trace": TRACE,
           "inversion_verdict": answer, "inversion_reason": None, "first_verdict": answer, "n_attempts": 1}
    if checks:
        ver = [_v("answer", answer)] + [_v(*c) for c in checks]
        verdicts = [v["verdict"] for v in ver]
        combined = False if False in verdicts else (None if None in verdicts else True)
        row.update(verification=ver, inversion_verdict=combined, first_verdict=combined,
                   step_verdict=ver[1]["verdict"], first_wrong_step=ver[1]["first_wrong_step"])
    return row


# Rows A-D carry the new columns, E is an older output (answer consistency only), F is
# answered only in a draft.
ROWS = [_row("A", True, ("steps", True, None), ("prm", True, None)),
        _row("B", True, ("steps", False, 1), ("prm", False, 2)),
        _row("C", False, ("steps", False, 0), ("prm", None, None)),
        _row("D", None, ("prm", False, 1), ("steps", True, None)),
        _row("E", True),
        _row("F", True, ("steps", True, None))]

# What each reviewer does: (consistent, first wrong step) submitted, or ("draft"/"discard", ...).
# ann mostly agrees with the verifiers, bob disagrees on A (consistent and steps) and C
# (consistent; he leaves the steps empty), cy's step answer is unreadable.
PLAN = {"A": {"ann": ("yes", "none"), "bob": ("no", "2"), "cy": ("yes", "lots")},
        "B": {"ann": ("yes", "1"), "bob": ("yes", "step 1")},
        "C": {"ann": ("no", "0"), "bob": ("yes", None)},
        "D": {"ann": ("yes", "none"), "bob": ("draft", "yes", "1")},
        "E": {"ann": ("no", None), "bob": ("discard",)},
        "F": {"ann": ("draft", "yes", "none")}}


def _reviews(plan=PLAN) -> dict[str, list[dict]]:
    """The plan as ``pull_reviews`` returns it."""
    out = {}
    for rid, by_user in plan.items():
        out[rid] = []
        for user, act in sorted(by_user.items()):
            status, (consistent, step) = ("submitted", act) if act[0] in ("yes", "no") else (
                ("discarded", (None, None)) if act[0] == "discard" else ("draft", act[1:]))
            out[rid].append({"user": user, "user_id": user, "status": status, "consistent": consistent,
                             "plausible": "yes" if consistent else None, review.STEP_QUESTION: step,
                             "rating": 4 if consistent else None, "comment": None})
    return out


def conf(both_pass, vp_rf, vf_rp, both_fail):
    return dict(zip(review.CONFUSION_KEYS, (both_pass, vp_rf, vf_rp, both_fail)))


# worked by hand from ROWS and PLAN: (verifier verdict, reviewer verdict) per submitted response
EXPECTED = {
    # A: ann T/T, bob T/F, cy T/T; B: ann T/T, bob T/T; C: ann F/F, bob F/T; D: unverifiable (ann); E: ann T/F
    "answer": dict(rows=4, judgments=8, confusion=conf(4, 2, 1, 1), agreement=0.625,
                   kappa=round(4 / 28, 4),
                   excluded={"verifier_unverifiable": 1, "no_answer": 0, "unreadable_answer": 0},
                   per_reviewer={"ann": (conf(2, 1, 0, 1), 0.5), "bob": (conf(1, 1, 1, 0), -0.5),
                                 "cy": (conf(1, 0, 0, 0), None)}),
    # A: ann T/T, bob T/F(2), cy unreadable; B: ann F1/F1, bob F1/F1; C: ann F0/F0, bob blank; D: ann T/T
    "steps": dict(rows=4, judgments=6, confusion=conf(2, 1, 0, 3), agreement=round(5 / 6, 4), kappa=round(12 / 18, 4),
                  excluded={"verifier_unverifiable": 0, "no_answer": 1, "unreadable_answer": 1},
                  per_reviewer={"ann": (conf(2, 0, 0, 2), 1.0), "bob": (conf(0, 1, 0, 1), 0.0)},
                  located=(3, 3)),
    # A: ann T/T, bob T/F, cy unreadable; B: ann F2/F1, bob F2/F1; C: unverifiable x2; D: ann F1/T
    "prm": dict(rows=3, judgments=5, confusion=conf(1, 1, 1, 2), agreement=0.6, kappa=round(2 / 12, 4),
                excluded={"verifier_unverifiable": 2, "no_answer": 0, "unreadable_answer": 1},
                per_reviewer={"ann": (conf(1, 0, 1, 1), 0.4),
                              "bob": (conf(0, 1, 0, 1), 0.0)},
                located=(2, 0)),
}


def check_agreement(got: dict):
    assert list(got) == ["answer", "steps", "prm"]
    for name, e in EXPECTED.items():
        g = got[name]
        assert g["reviewer_question"] == ("consistent" if name == "answer" else "wrong_step")
        assert (g["rows"], g["judgments"], g["confusion"], g["agreement"], g["kappa"], g["excluded"]) == (
            e["rows"], e["judgments"], e["confusion"], e["agreement"], e["kappa"], e["excluded"]), name
        assert {u: (r["confusion"], r["kappa"]) for u, r in g["per_reviewer"].items()} == {
            u: (c, None if k is None else float(k)) for u, (c, k) in e["per_reviewer"].items()}, name
        if "located" in e:
            assert (g["first_wrong_step"]["both_fail_located"], g["first_wrong_step"]["same_step"]) == e["located"]
        else:
            assert "first_wrong_step" not in g


# ------------------------------------------------------------------ kappa and confusion

def test_cohen_kappa_known_values():
    k = review.cohen_kappa
    assert k(conf(20, 5, 10, 15)) == pytest.approx(0.4)  # the textbook example: p_o 0.7, p_e 0.5
    assert k(conf(3, 0, 0, 2)) == 1.0
    assert k(conf(0, 3, 2, 0)) == pytest.approx(-12 / 13)  # always disagreeing: below chance
    assert k(conf(3, 1, 0, 0)) == 0.0  # a verifier that passes everything adds nothing over chance
    # undefined: no pairs, or both sides gave one and the same verdict (p_e = 1)
    assert k(conf(0, 0, 0, 0)) is None and k(conf(5, 0, 0, 0)) is None and k(conf(0, 0, 0, 4)) is None


def test_cohen_kappa_matches_the_definition():
    import itertools

    for cells in itertools.product(range(4), repeat=4):
        c = conf(*cells)
        a, b, c_, d = cells
        n = a + b + c_ + d
        if n == 0:
            continue
        po = Fraction(a + d, n)
        pe = Fraction((a + b) * (a + c_) + (c_ + d) * (b + d), n * n)
        want = None if pe == 1 else float((po - pe) / (1 - pe))
        assert review.cohen_kappa(c) == (None if want is None else pytest.approx(want)), cells


def test_confusion_counts():
    pairs = [(True, True), (True, False), (False, True), (False, False), (False, False), (True, True)]
    assert review.confusion_counts(pairs) == conf(2, 1, 1, 2)
    assert review.confusion_counts([]) == conf(0, 0, 0, 0)


def test_parse_step_answer():
    p = review.parse_step_answer
    for text in ("3", " [3] ", "step 3", "Step 3.", "#3", "(3)", "paragraph 3"):
        assert p(text, 5) == ("fail", 3), text
    for text in ("none", "None.", "-1", "no", "all steps right", "All correct", "n/a"):
        assert p(text, 5) == ("pass", None), text
    for text in (None, "", "  "):
        assert p(text, 5) == ("blank", None)
    for text in ("three", "-2", "3 and 4", "5"):  # 5: the trace has steps 0-4
        assert p(text, 5) == ("unreadable", None), text
    assert p("12") == ("fail", 12)  # no trace length: any step


# ------------------------------------------------------------------ what the review page shows

def test_trace_steps_and_their_tags():
    assert review.trace_steps(TRACE) == TRACE.split("\n\n")
    assert review.trace_steps("a\n\n\n  \nb\n  \nc\nd\n\n") == ["a", "b", "c\nd"]  # blank = whitespace only
    assert review.trace_steps("") == [] and review.trace_steps(None) == []
    shown = review.numbered_trace(TRACE)
    assert shown.split("\n\n") == [f"`[{i}]` {s}" for i, s in enumerate(TRACE.split("\n\n"))]
    # a step that is a block (heading, list, display math, code) gets its tag on a line of its own
    blocks = "Intro.\n\n# Plan\n\n- add\n- multiply\n\n$$7 \\cdot 7 = 49$$\n\n```\ncode\n```"
    assert review.numbered_trace(blocks).split("\n\n") == [
        "`[0]` Intro.", "`[1]`", "# Plan", "`[2]`", "- add\n- multiply", "`[3]`", "$$7 \\cdot 7 = 49$$",
        "`[4]`", "```\ncode\n```"]
    assert review.numbered_trace("") == "" and review.numbered_trace(None) == ""
    # no blank line but several lines (the toy world's traces): one step per line, each shown on its own
    assert review.trace_steps("3+4=7\n 7*7=9 \n\n") == ["3+4=7", "7*7=9"]
    assert review.numbered_trace("3+4=7\n7*7=9") == "`[0]` 3+4=7\n\n`[1]` 7*7=9"


SPLIT_CASES = [TRACE, "", "one", "a\n\n\n  \nb\n  \nc\nd\n\n", "3+4=7\n7*7=9\n9-2=7", "  x\n\t\ny  ",
               "a\r\n\r\nb", "para 1\nstill 1\n\npara 2", "```\ncode\n\nmore\n```", "\n\n\n", "x\n \n"]


def test_steps_are_the_step_verifiers_steps():
    """The tags a reviewer reads are the indices the step verifiers report (their
    ``split_steps``, when the invert stage's verifiers are installed)."""
    verifiers = pytest.importorskip("trace_inversion.scoring.verifiers")
    for text in SPLIT_CASES:
        assert review.trace_steps(text) == [x.strip() for x in verifiers.split_steps(text)], repr(text)


def test_row_verifiers_old_and_new_rows():
    rv = review.row_verifiers
    assert rv({"id": 1, "inverted_trace": "x"}) == {}  # no verdict at all
    assert rv(ROWS[4]) == {"answer": {"verdict": True, "first_wrong_step": None}}  # an older output
    assert rv(ROWS[1]) == {"answer": {"verdict": True, "first_wrong_step": None},
                           "steps": {"verdict": False, "first_wrong_step": 1},
                           "prm": {"verdict": False, "first_wrong_step": 2}}
    assert ROWS[1]["inversion_verdict"] is False  # combined: the step verifiers said no
    assert rv(ROWS[3])["answer"]["verdict"] is None and ROWS[3]["inversion_verdict"] is False
    as_json = dict(ROWS[1], verification=json.dumps(ROWS[1]["verification"]))
    assert rv(as_json) == rv(ROWS[1])
    # the parquet round trip: absent columns are None
    assert rv(dict(ROWS[4], verification=None, step_verdict=None, first_wrong_step=None)) == rv(ROWS[4])
    # only the flat columns: they stand for the step verifier
    flat = dict(ROWS[4], step_verdict=False, first_wrong_step=2)
    assert rv(flat)["steps"] == {"verdict": False, "first_wrong_step": 2}
    # -1 (ProcessBench's "no wrong step") is no index; verifiers in a fixed order, unknown ones last
    odd = dict(ROWS[4], verification=[_v("zeta", False, 0), _v("judge", True, -1), _v("answer", False)])
    assert list(rv(odd)) == ["answer", "judge", "zeta"] and rv(odd)["judge"]["first_wrong_step"] is None
    assert rv(odd)["answer"]["verdict"] is False  # the verification list wins over inversion_verdict


def test_record_of_suggestions_and_metadata():
    qids = {"consistent": "q-consistent", review.STEP_QUESTION: "q-step", "plausible": "q-plausible"}

    def sugg(item):
        return {s["question_id"]: (s["value"], s["agent"]) for s in item["suggestions"]}

    old = review._record_of(ROWS[4], qids)  # older output: the answer suggestion only
    assert sugg(old) == {"q-consistent": ("yes", "trace-inversion: answer consistency")}
    assert old["metadata"]["step_verdict"] == "not checked" and "first_wrong_step" not in old["metadata"]
    assert [old["metadata"][f"verdict_{v}"] for v in ("steps", "judge", "prm")] == ["not run"] * 3
    assert old["fields"]["inverted_trace"].startswith("`[0]` First")

    b = review._record_of(ROWS[1], qids)  # the answer check's own verdict, not the combined inversion_verdict
    assert sugg(b) == {"q-consistent": ("yes", "trace-inversion: answer consistency"),
                       "q-step": ("1", "trace-inversion: steps")}
    assert {k: b["metadata"][k] for k in ("auto_verdict", "step_verdict", "first_wrong_step", "verdict_steps",
                                          "verdict_judge", "verdict_prm")} == {
        "auto_verdict": "consistent", "step_verdict": "wrong", "first_wrong_step": 1, "verdict_steps": "fail",
        "verdict_judge": "not run", "verdict_prm": "fail"}
    a = review._record_of(ROWS[0], qids)
    assert sugg(a)["q-step"] == ("none", "trace-inversion: steps / prm") and a["metadata"]["step_verdict"] == "correct"
    c = review._record_of(ROWS[2], qids)
    assert sugg(c) == {"q-consistent": ("no", "trace-inversion: answer consistency"),
                       "q-step": ("0", "trace-inversion: steps")}
    assert c["metadata"]["verdict_prm"] == "unverifiable" and c["metadata"]["first_wrong_step"] == 0
    d = review._record_of(ROWS[3], qids)  # the answer could not be verified: no suggestion on it
    assert sugg(d) == {"q-step": ("1", "trace-inversion: prm")} and d["metadata"]["auto_verdict"] == "unverifiable"
    # a step verdict without an index, or none: metadata only
    no_index = review._record_of(dict(ROWS[1], first_wrong_step=None), qids)
    assert "q-step" not in sugg(no_index) and no_index["metadata"]["step_verdict"] == "wrong"
    unknown = review._record_of(dict(ROWS[1], step_verdict=None, first_wrong_step=None), qids)
    assert "q-step" not in sugg(unknown) and unknown["metadata"]["step_verdict"] == "unverifiable"
    # a blind push sends no suggestion; every metadata key is a property of the dataset
    assert review._record_of(ROWS[1], {})["suggestions"] == []
    assert "suggestions" not in review._record_of(ROWS[1])
    for row in ROWS:
        assert set(review._record_of(row, qids)["metadata"]) <= set(review.METADATA)


def test_step_check_without_flat_columns_combines_the_step_verifiers():
    base = {k: v for k, v in ROWS[1].items() if k not in ("step_verdict", "first_wrong_step")}
    assert review.step_check(base) == {"verdict": False, "first_wrong_step": 1, "verifiers": ["steps", "prm"]}
    right = dict(base, verification=[_v("answer", True), _v("steps", True), _v("judge", None)])
    assert review.step_check(right) == {"verdict": True, "first_wrong_step": None, "verifiers": ["steps", "judge"]}
    unknown = dict(base, verification=[_v("answer", True), _v("judge", None)])
    assert review.step_check(unknown)["verdict"] is None
    assert review.step_check(ROWS[4]) is None


# ------------------------------------------------------------------ agreement after a review

def test_verifier_agreement_two_reviewers_who_disagree():
    check_agreement(review.verifier_agreement(ROWS, _reviews()))


def test_verifier_agreement_edge_cases():
    assert review.verifier_agreement(ROWS, {}) == {}  # nothing reviewed
    drafts_only = {"A": [{"user": "ann", "status": "draft", "consistent": "no", "wrong_step": "0"}]}
    assert review.verifier_agreement(ROWS, drafts_only) == {}
    old = review.verifier_agreement([ROWS[4]], {"E": [{"user": "ann", "status": "submitted", "consistent": "yes"}]})
    assert list(old) == ["answer"] and old["answer"]["confusion"] == conf(1, 0, 0, 0)
    assert old["answer"]["kappa"] is None and old["answer"]["agreement"] == 1.0  # kappa undefined, None
    # enum-style statuses as older SDKs write them count like plain ones
    enum = {"E": [{"user": "ann", "status": "ResponseStatus.submitted", "consistent": "no"}]}
    assert review.verifier_agreement([ROWS[4]], enum)["answer"]["confusion"] == conf(0, 1, 0, 0)


def _stage(folder, rows):
    write_split(folder, "inverted", rows)
    write_card(folder, card_context("t: invert", "invert", {"name": "t"}, {"rows_in": len(rows), "kept": len(rows)},
                                    {"inverted": len(rows)}))


def test_build_reviewed_reports_agreement_in_stats_and_card(tmp_path):
    stage = tmp_path / "inversion"
    _stage(stage, ROWS)  # through parquet: rows E/F get null verification columns
    (stage / "review_push.json").write_text(json.dumps({"dataset": "d", "workspace": "w", "suggestions_shown": True,
                                                        "ids": [r["id"] for r in ROWS]}))
    stats = review.build_reviewed(stage, _reviews(), tmp_path / "reviewed")
    check_agreement(stats["verifier_agreement"])
    saved = json.loads((tmp_path / "reviewed" / "review_stats.json").read_text())
    assert saved["verifier_agreement"] == json.loads(json.dumps(stats["verifier_agreement"]))
    card = (tmp_path / "reviewed" / "README.md").read_text()
    validate_card(card, tmp_path / "reviewed")
    section = card.split("## Verifier agreement", 1)[1].split("\n## ", 1)[0]
    assert "| answer consistency (answer) | 8 (4) | 4 | 2 | 1 | 1 | 63% | 0.14 | 67% |  |" in section
    assert "| step checker (steps) | 6 (4) | 2 | 1 | 0 | 3 | 83% | 0.67 | 67% | 3 of 3 |" in section
    assert "| process reward model (prm) | 5 (3) | 1 | 1 | 1 | 2 | 60% | 0.17 | 50% | 0 of 2 |" in section
    assert "| answer consistency (answer) | cy | 1 | 100% | – |" in section  # kappa undefined
    assert "upper bounds" in section  # reviewers saw the verdicts as suggestions
    kept = read_split(tmp_path / "reviewed", "inverted") + read_split(tmp_path / "reviewed", "review_rejected")
    a = next(r for r in kept if r["id"] == "A")
    assert {x["user"]: x["wrong_step"] for x in json.loads(a["review_responses"])} == {
        "ann": "none", "bob": "2", "cy": "lots"}


def test_build_reviewed_older_output_and_blind_review(tmp_path):
    rows = [dict({k: v for k, v in r.items() if k not in ("verification", "step_verdict", "first_wrong_step")},
                 inversion_verdict=review.row_verifiers(r)["answer"]["verdict"])
            for r in ROWS]  # an output from before the step verifiers: inversion_verdict only
    stage = tmp_path / "inversion"
    _stage(stage, rows)
    (stage / "review_push.json").write_text(json.dumps({"dataset": "d", "workspace": "w", "suggestions_shown": False,
                                                        "ids": [r["id"] for r in rows]}))
    stats = review.build_reviewed(stage, _reviews(), tmp_path / "reviewed")
    assert list(stats["verifier_agreement"]) == ["answer"]
    assert stats["verifier_agreement"]["answer"]["confusion"] == EXPECTED["answer"]["confusion"]
    card = (tmp_path / "reviewed" / "README.md").read_text()
    assert "blind review" in card
    # no verdict column at all, no manifest: the section says nothing could be compared
    bare = [{k: v for k, v in r.items() if k not in ("inversion_verdict",)} for r in rows]
    _stage(tmp_path / "bare", bare)
    stats = review.build_reviewed(tmp_path / "bare", _reviews(), tmp_path / "bare-reviewed")
    assert stats["verifier_agreement"] == {}
    card = (tmp_path / "bare-reviewed" / "README.md").read_text()
    assert "No verifier verdict could be compared" in card and "upper bounds" not in card


# ------------------------------------------------------------------ against a real Argilla stack

def _cli(stack, *args):
    env = dict(os.environ, ARGILLA_API_URL=stack.url, ARGILLA_API_KEY=stack.api_key)
    return subprocess.run([sys.executable, "-m", "trace_inversion.cli", "review", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _api(stack, key=None):
    import httpx

    return httpx.Client(base_url=stack.url, headers={"X-Argilla-Api-Key": key or stack.api_key}, timeout=60)


def _ok(r, *codes):
    assert r.status_code in (codes or (200, 201)), (r.request.method, r.request.url, r.status_code, r.text[:500])
    return r.json() if r.content else None


def _records(api, dataset_id) -> dict[str, dict]:
    """external id -> record, with its suggestions as ``{question name: (value, agent)}``."""
    qname = {q["id"]: q["name"] for q in _ok(api.get(f"/api/v1/datasets/{dataset_id}/questions"))["items"]}
    items = _ok(api.get(f"/api/v1/datasets/{dataset_id}/records", params={"include": "suggestions", "limit": 100}))
    return {r["external_id"]: dict(r, suggested={qname[s["question_id"]]: (s["value"], s["agent"])
                                                 for s in r.get("suggestions") or []}) for r in items["items"]}


def _search(api, dataset_id, flt) -> set[str]:
    body = {"filters": {"and": [dict(flt, scope={"entity": "metadata", "metadata_property": flt["scope"]})]}}
    found = _ok(api.post(f"/api/v1/datasets/{dataset_id}/records/search", json=body, params={"limit": 100}))
    return {x["record"]["external_id"] for x in found["items"]}


@pytest.mark.slow
def test_verifiers_round_trip(argilla_stack, tmp_path):
    """Push rows with known verifier columns: suggestions and metadata on the page, and
    filterable; three reviewers (two disagreeing with the verifiers on known rows) answer
    through the API the web UI uses; pull reports each verifier's agreement as computed
    by hand (EXPECTED). A blind push removes the suggestions, the next push restores them."""
    import argilla as rg

    stage = tmp_path / "inversion"
    _stage(stage, ROWS)
    r = _cli(argilla_stack, "push", str(stage), "--dataset", "verifier-review", "--reviewers-per-record", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    pushed = json.loads(r.stdout)
    assert pushed["suggested"] == {"consistent": 5, "wrong_step": 5} and pushed["suggestions_shown"] is True

    owner = _api(argilla_stack)
    ds = next(d for d in _ok(owner.get("/api/v1/me/datasets"))["items"] if d["name"] == "verifier-review")
    questions = _ok(owner.get(f"/api/v1/datasets/{ds['id']}/questions"))["items"]
    assert [q["name"] for q in questions] == list(review.ALL_QUESTIONS)
    step_q = next(q for q in questions if q["name"] == "wrong_step")
    assert step_q["settings"]["type"] == "text" and step_q["required"] is False
    props = _ok(owner.get(f"/api/v1/me/datasets/{ds['id']}/metadata-properties"))["items"]
    assert {p["name"] for p in props} == set(review.METADATA)

    # on the page: each verdict a suggestion (what the UI pre-fills), metadata, the steps tagged
    recs = _records(owner, ds["id"])
    assert {rid: rec["suggested"] for rid, rec in recs.items()} == {
        "A": {"consistent": ("yes", "trace-inversion: answer consistency"),
              "wrong_step": ("none", "trace-inversion: steps / prm")},
        "B": {"consistent": ("yes", "trace-inversion: answer consistency"),
              "wrong_step": ("1", "trace-inversion: steps")},
        "C": {"consistent": ("no", "trace-inversion: answer consistency"),
              "wrong_step": ("0", "trace-inversion: steps")},
        "D": {"wrong_step": ("1", "trace-inversion: prm")},  # answer unverifiable: no suggestion
        "E": {"consistent": ("yes", "trace-inversion: answer consistency")},  # an older row: answer only
        "F": {"consistent": ("yes", "trace-inversion: answer consistency"),
              "wrong_step": ("none", "trace-inversion: steps")}}
    assert recs["B"]["metadata"] == {"auto_verdict": "consistent", "first_verdict": "inconsistent", "reason": "none",
                                     "n_attempts": 1, "step_verdict": "wrong", "first_wrong_step": 1,
                                     "verdict_steps": "fail", "verdict_judge": "not run", "verdict_prm": "fail"}
    assert recs["E"]["metadata"]["step_verdict"] == "not checked"
    assert recs["A"]["fields"]["inverted_trace"] == review.numbered_trace(TRACE)
    assert recs["A"]["fields"]["inverted_trace"].count("`[") == 3
    # filterable, as the UI's Filters > Metadata does it
    assert _search(owner, ds["id"], {"type": "terms", "scope": "step_verdict", "values": ["wrong"]}) == {"B", "C", "D"}
    assert _search(owner, ds["id"], {"type": "terms", "scope": "step_verdict", "values": ["not checked"]}) == {"E"}
    assert _search(owner, ds["id"], {"type": "terms", "scope": "verdict_prm", "values": ["fail"]}) == {"B", "D"}
    assert _search(owner, ds["id"], {"type": "range", "scope": "first_wrong_step", "ge": 1, "le": 5}) == {"B", "D"}
    assert _search(owner, ds["id"], {"type": "range", "scope": "first_wrong_step", "le": 0}) == {"C"}

    # three reviewers answer as PLAN says (bob disagrees with the verifiers on A and C)
    ws = next(w for w in _ok(owner.get("/api/v1/me/workspaces"))["items"] if w["name"] == pushed["workspace"])
    keys = {}
    for name in ("ann", "bob", "cy"):
        u = _ok(owner.post("/api/v1/users", json={"first_name": name, "username": name, "password": name + "-pass1",
                                                  "role": "annotator"}))
        _ok(owner.post(f"/api/v1/workspaces/{ws['id']}/users", json={"user_id": u["id"]}))
        keys[name] = u["api_key"]
    for rid, responses in _reviews().items():
        for x in responses:
            values = {q: {"value": x[q]} for q in review.ALL_QUESTIONS if x.get(q) is not None}
            body = {"status": x["status"], **({"values": values} if values else {})}
            _ok(_api(argilla_stack, keys[x["user"]]).post(f"/api/v1/records/{recs[rid]['id']}/responses", json=body))

    out = tmp_path / "reviewed"
    r = _cli(argilla_stack, "pull", str(stage), "--dataset", "verifier-review", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(r.stdout)
    check_agreement(stats["verifier_agreement"])
    assert json.loads((out / "review_stats.json").read_text())["verifier_agreement"] == stats["verifier_agreement"]
    card = (out / "README.md").read_text()
    validate_card(card, out)
    assert "| step checker (steps) | 6 (4) | 2 | 1 | 0 | 3 | 83% | 0.67 | 67% | 3 of 3 |" in card
    assert "upper bounds" in card
    landed = {x["id"]: x for x in read_split(out, "inverted") + read_split(out, "review_rejected")}
    assert {rid: x["review_status"] for rid, x in landed.items()} == {
        rid: review.decide(resp) for rid, resp in _reviews().items()}
    assert {x["user"]: x["wrong_step"] for x in json.loads(landed["A"]["review_responses"])} == {
        "ann": "none", "bob": "2", "cy": "lots"}

    # a blind push removes every suggestion the push owns; the next push restores them
    client = rg.Argilla(api_url=argilla_stack.url, api_key=argilla_stack.api_key)
    blind = review.push_for_review(stage, "verifier-review", client, suggestions=False)
    assert blind["suggested"] == {"consistent": 0, "wrong_step": 0} and blind["suggestions_shown"] is True
    assert all(rec["suggested"] == {} for rec in _records(owner, ds["id"]).values())
    changed = [dict(r, step_verdict=None, first_wrong_step=None) if r["id"] == "B" else r for r in ROWS]
    _stage(stage, changed)  # B's step verdict is gone since
    review.push_for_review(stage, "verifier-review", client)
    again = _records(owner, ds["id"])
    assert list(again["B"]["suggested"]) == ["consistent"] and again["B"]["metadata"]["step_verdict"] == "unverifiable"
    assert again["C"]["suggested"] == recs["C"]["suggested"]
    # the responses are untouched by the pushes
    r = _cli(argilla_stack, "pull", str(stage), "--dataset", "verifier-review", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["verifier_agreement"]["answer"] == stats["verifier_agreement"]["answer"]


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
def test_verifier_suggestions_in_the_browser(argilla_stack, tmp_path):
    """What a reviewer sees and does in the web UI (headless Debian chromium): the steps
    tagged, the verdicts pre-filled as suggestions (marked, with the verifier's name), the
    records filtered on the step verdict; keeping, changing or discarding the suggested
    answers lands in the pull and in the agreement."""
    import re
    import time
    from pathlib import Path

    if not Path(CHROMIUM).exists() or not _has_playwright():
        if os.environ.get("CI"):
            pytest.fail("the browser test needs chromium and playwright (scripts/setup_argilla_server.sh)")
        pytest.skip("needs chromium and playwright")
    from playwright.sync_api import sync_playwright

    stage = tmp_path / "inversion"
    _stage(stage, ROWS)
    r = _cli(argilla_stack, "push", str(stage), "--dataset", "verifier-ui")
    assert r.returncode == 0, r.stderr[-3000:]
    owner = _api(argilla_stack)
    ws_name = json.loads(r.stdout)["workspace"]
    ws = next(w for w in _ok(owner.get("/api/v1/me/workspaces"))["items"] if w["name"] == ws_name)
    u = _ok(owner.post("/api/v1/users", json={"first_name": "uirev", "username": "uirev", "password": "uirev-pass1",
                                              "role": "annotator"}))
    _ok(owner.post(f"/api/v1/workspaces/{ws['id']}/users", json={"user_id": u["id"]}))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            p = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
            p.goto(argilla_stack.url + "/sign-in")
            p.get_by_label("Username").fill("uirev")
            p.get_by_label("Password").fill("uirev-pass1")
            p.get_by_role("button", name="Sign in").click()
            p.wait_for_url(argilla_stack.url + "/")
            p.get_by_text("verifier-ui").first.click()
            p.wait_for_selector("button.button--submit")

            def row(timeout=15):
                deadline = time.time() + timeout
                while time.time() < deadline:
                    try:
                        m = re.search(r"Problem (\w+):", p.locator(".record__content .markdown-render").first
                                      .inner_text(timeout=500))
                    except Exception:  # noqa: BLE001 -- between records
                        m = None
                    if m:
                        return m.group(1)
                    p.wait_for_timeout(200)
                return None

            def total():
                return int(p.locator('[aria-label="Total Records"]').inner_text().split()[-1])

            def step_box():
                return p.locator('[aria-label="Question: wrong_step"] [contenteditable="true"]')

            # the steps tagged, both verdicts pre-filled and marked with the verifier's name
            assert p.locator(".record__content code").all_inner_texts()[:3] == ["[0]", "[1]", "[2]"]
            # filter on the step verdict (Filters > Metadata), as the guidelines say
            p.get_by_role("button", name="Filters").click()
            p.locator(".metadata-filter button", has_text="Metadata").click()
            p.get_by_text("Automatic step check", exact=True).click()
            p.locator(".labels-selector__item", has_text="wrong").locator(".checkbox__container").click()
            p.keyboard.press("Escape")
            p.mouse.click(700, 900)
            deadline = time.time() + 15
            while time.time() < deadline and total() != 3:
                p.wait_for_timeout(200)
            assert total() == 3  # B, C, D

            def act(rid):
                if rid == "B":  # agrees with both suggestions: keeps them
                    assert "label-active" in p.locator('label[for="consistent_yes"]').get_attribute("class")
                    assert step_box().inner_text().strip() == "1"
                    p.locator('label[for="plausible_yes"]').click()
                    p.locator('label[for="rating_4"]').click()
                    button = "submit"
                elif rid == "C":  # disagrees with both: consistent after all, the first wrong step is [2]
                    assert "label-active" in p.locator('label[for="consistent_no"]').get_attribute("class")
                    assert step_box().inner_text().strip() == "0"
                    p.locator('label[for="consistent_yes"]').click()
                    step_box().click()
                    p.keyboard.press("Control+A")
                    p.keyboard.type("2")
                    p.locator('label[for="plausible_no"]').click()
                    p.locator('label[for="rating_2"]').click()
                    button = "submit"
                else:  # D: the answer is unverifiable (no suggestion), discarded untouched
                    assert "label-active" not in (p.locator('label[for="consistent_yes"]').get_attribute("class")
                                                  + p.locator('label[for="consistent_no"]').get_attribute("class"))
                    assert step_box().inner_text().strip() == "1"
                    button = "discard"
                agent = "trace-inversion: prm" if rid == "D" else "trace-inversion: steps"
                assert p.locator(".tooltip__text", has_text=agent).count() >= 1  # a suggestion names its verifier
                with p.expect_response(lambda x: "/responses" in x.url and x.request.method in ("POST", "PUT")) as resp:
                    p.locator(f"button.button--{button}").click()
                assert resp.value.status in (200, 201), resp.value.text()[:500]
                deadline = time.time() + 15
                while time.time() < deadline and row(timeout=1) == rid:
                    p.wait_for_timeout(200)

            todo = {"B", "C", "D"}
            for _ in range(12):
                rid = row()
                if rid in todo:
                    todo.discard(rid)
                    act(rid)
                    if not todo:
                        break
                else:
                    p.locator('button[aria-label^="Next"]').click()
                    p.wait_for_timeout(300)
            assert not todo, f"records never shown: {todo}"
        finally:
            browser.close()

    out = tmp_path / "reviewed"
    r = _cli(argilla_stack, "pull", str(stage), "--dataset", "verifier-ui", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    landed = {x["id"]: x for x in read_split(out, "inverted") + read_split(out, "review_rejected")}

    def answers(rid):
        return {(x["user"], x["status"]): {q: x[q] for q in ("consistent", "plausible", "wrong_step", "rating")}
                for x in json.loads(landed[rid]["review_responses"])}

    assert answers("B") == {("uirev", "submitted"): {"consistent": "yes", "plausible": "yes", "wrong_step": "1",
                                                     "rating": 4}}
    assert answers("C") == {("uirev", "submitted"): {"consistent": "yes", "plausible": "no", "wrong_step": "2",
                                                     "rating": 2}}
    (d,) = answers("D").items()
    # a discard sends the answers on screen: the pre-filled suggestion too (discards never count)
    assert d == (("uirev", "discarded"), {"consistent": None, "plausible": None, "wrong_step": "1", "rating": None})
    agreement = json.loads(r.stdout)["verifier_agreement"]
    assert agreement["answer"]["confusion"] == conf(1, 0, 1, 0)  # B kept "yes", C changed "no" to "yes"
    assert agreement["steps"]["confusion"] == conf(0, 0, 0, 2) and agreement["steps"]["first_wrong_step"] == {
        "both_fail_located": 2, "same_step": 1}


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True
