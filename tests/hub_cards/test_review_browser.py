"""Human review driven from a real browser: Debian's chromium, headless, driven by
Playwright, against the stack ``trace-inversion review serve`` starts (in the
background, SIGINT ignored as a shell does for ``&``). Two reviewers log in, answer,
submit, save a draft, discard with and without answers and filter by metadata; then
``review pull`` must put every row exactly where the rules say, with every answer.

Screenshots land in ``.cache/test-artifacts/review-browser/`` (git-ignored);
``TI_UPDATE_README_SCREENSHOT=1`` also rewrites ``docs/review_page.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trace_inversion.hub_cards.card import card_context, write_card
from trace_inversion.data.io import read_split, write_split

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / ".cache" / "test-artifacts" / "review-browser"
N_ROWS = 8
UNVERIFIABLE = {0, 2}  # auto_verdict the second reviewer filters on


def _need_browser():
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append("chromium (apt-get install chromium; scripts/setup_argilla_server.sh does it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (the dev extra)")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test needs {', '.join(missing)}")
        pytest.skip(f"needs {', '.join(missing)}")


def _rows():
    rows = []
    for i in range(N_ROWS):
        a = 2 * (i + 1)
        rows.append({
            "id": f"r{i:03d}",
            "problem": f"Problem {i}. Compute $\\frac{{{a}}}{{2}} + 1$ and give the result.",
            "target_answer": f"\\boxed{{{i + 2}}}",
            "target_summary": None if i == 1 else f"Halved {a}, then added one.",
            "inverted_trace": (f"**Step 1.** Halve the numerator: $\\frac{{{a}}}{{2}} = {i + 1}$.\n\n"
                               f"**Step 2.** Add one: ${i + 1} + 1 = {i + 2}$.\n\n"
                               f"So the answer is $\\boxed{{{i + 2}}}$."),
            "inversion_verdict": None if i in UNVERIFIABLE else (i != 5),
            "first_verdict": i % 3 != 0, "inversion_reason": "resampled: inconsistent" if i % 3 == 0 else None,
            "n_attempts": 1 + (i % 3 == 0)})
    return rows


def _wait_line(proc, prefix: str, timeout: float = 180) -> dict:
    """Read ``review serve``'s stdout until its banner is complete."""
    out, deadline = {}, time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"review serve exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
            continue
        if "=" in line and not line.startswith("serving"):
            for part in line.split():
                k, _, v = part.partition("=")
                out[k] = v
        if line.startswith(prefix):
            return out
    raise TimeoutError("review serve printed no banner")


def _pids_alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            alive.append(pid)
    return alive


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``review serve`` in the background, a pushed dataset and a second reviewer."""
    _need_browser()
    import argilla as rg

    base = tmp_path_factory.mktemp("browser")
    stage = base / "inversion"
    rows = _rows()
    write_split(stage, "inverted", rows)
    write_card(stage, card_context("t: invert", "invert", {"name": "t"}, {"rows_in": N_ROWS, "kept": N_ROWS},
                                   {"inverted": N_ROWS}))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "trace_inversion.cli", "review", "serve", str(base / "stack")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as `cmd &` does
    try:
        banner = _wait_line(proc, "serving")
        url, key, password = banner["ARGILLA_API_URL"], banner["ARGILLA_API_KEY"], banner["password"]
        cenv = dict(os.environ, ARGILLA_API_URL=url, ARGILLA_API_KEY=key)
        r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", "review", "push", str(stage), "--dataset",
                            "browser-review", "--reviewers-per-record", "2"], capture_output=True, text=True, env=cenv, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        owner = rg.Argilla(api_url=url, api_key=key)
        reviewer = rg.User(username="reviewer2", password="reviewer2-pass", role="annotator", client=owner).create()
        reviewer.add_to_workspace(owner.workspaces(json.loads(r.stdout)["workspace"]))
        yield {"proc": proc, "url": url, "key": key, "env": cenv, "stage": stage, "base": base, "rows": rows,
               "users": {"argilla": password, "reviewer2": "reviewer2-pass"}}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


# ---------------------------------------------------------------- the browser side

class Reviewer:
    def __init__(self, browser, url: str, username: str, password: str):
        self.page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        self.url = url
        self.posts: list[tuple[str, str, int]] = []  # (method, path, status) of every response write
        self.page.on("response", self._seen)
        p = self.page
        p.goto(url + "/sign-in")
        p.get_by_label("Username").fill(username)
        p.get_by_label("Password").fill(password)
        p.get_by_role("button", name="Sign in").click()
        p.wait_for_url(url + "/")

    def _seen(self, resp):
        path = resp.url.split("?", 1)[0][len(self.url):]
        if resp.request.method in ("POST", "PUT", "DELETE") and "/responses" in path:
            self.posts.append((resp.request.method, path, resp.status))

    def open(self, dataset: str):
        self.page.get_by_text(dataset).first.click()
        self.page.wait_for_selector("button.button--submit")

    def row(self, timeout: float = 15) -> int | None:
        """The row index of the record on screen (None: no record left)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            problem = self.page.locator(".record__content .markdown-render").first
            try:
                m = re.search(r"Problem (\d+)\.", problem.inner_text(timeout=500))
            except Exception:
                m = None
            if m:
                return int(m.group(1))
            if self.page.get_by_text(re.compile("no (pending )?records|all .* records", re.I)).count():
                return None
            self.page.wait_for_timeout(200)
        return None

    def total(self) -> int:
        return int(self.page.locator('[aria-label="Total Records"]').inner_text().split()[-1])

    def answer(self, consistent=None, plausible=None, rating=None, comment=None, clear=False):
        p = self.page
        if clear:  # a reviewer un-selects the pre-filled suggestions (clicking a selected label clears it)
            for active in p.locator(".label-active").all():
                active.click()
        for q, v in (("consistent", consistent), ("plausible", plausible), ("rating", rating)):
            label = p.locator(f'label[for="{q}_{v}"]')
            # a pre-filled suggestion is already selected: clicking it again would clear it
            if v is not None and "label-active" not in (label.get_attribute("class") or ""):
                label.click()
        if comment:
            p.locator('[aria-label="Question: comment"] [contenteditable="true"]').click()
            p.keyboard.type(comment)

    def act(self, action: str, **answers):
        before = self.row()
        self.answer(**answers)
        button = {"submit": "button.button--submit", "draft": "button.button--draft",
                  "discard": "button.button--discard"}[action]
        with self.page.expect_response(lambda r: "/responses" in r.url and r.request.method in ("POST", "PUT")) as resp:
            self.page.locator(button).click()
        assert resp.value.status in (200, 201), (action, before, resp.value.status, resp.value.text()[:500])
        deadline = time.time() + 15  # the UI moves on to the next pending record
        while time.time() < deadline and self.row(timeout=1) == before:
            self.page.wait_for_timeout(200)

    def work(self, plan: dict[int, tuple]):
        """Do ``plan[row] = (action, answers)`` on whichever record the UI shows first."""
        todo = dict(plan)
        for _ in range(4 * N_ROWS):
            if not todo:
                return
            n = self.row()
            if n in todo:
                action, answers = todo.pop(n)
                self.act(action, **answers)
            else:
                self.page.locator('button[aria-label^="Next"]').click()
                self.page.wait_for_timeout(300)
        raise AssertionError(f"rows never shown: {sorted(todo)}")

    def filter_metadata(self, title: str, value: str):
        p = self.page
        p.get_by_role("button", name="Filters").click()
        p.locator(".metadata-filter button", has_text="Metadata").click()
        p.get_by_text(title, exact=True).click()
        p.locator(".labels-selector__item", has_text=value).locator(".checkbox__container").click()
        p.keyboard.press("Escape")
        p.mouse.click(700, 700)  # close the dropdown

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path))
        return path


OWNER_PLAN = {
    0: ("submit", dict(consistent="yes", plausible="yes", rating=5, comment="sound steps")),
    1: ("submit", dict(consistent="no", plausible="yes", rating=2, comment="wrong answer")),
    2: ("submit", dict(consistent="yes", plausible="yes", rating=4)),
    3: ("draft", dict(consistent="yes")),                      # partial answers, saved as draft
    4: ("discard", dict(consistent="no", comment="garbled")),  # discarded with answers
    5: ("discard", dict(clear=True)),                          # suggestion cleared, discarded without any answer
}
REVIEWER2_PLAN = {  # reached through the metadata filter auto_verdict = unverifiable
    0: ("submit", dict(consistent="no", plausible="no", rating=1)),
    2: ("submit", dict(consistent="yes", plausible="yes", rating=5)),
}


def test_two_reviewers_in_the_browser_then_pull(served, tmp_path):
    from playwright.sync_api import sync_playwright

    url = served["url"]
    t0 = time.time()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            owner = Reviewer(browser, url, "argilla", served["users"]["argilla"])
            owner.open("browser-review")
            assert owner.total() == N_ROWS
            # the page a reviewer reads: fields in order, markdown and LaTeX rendered
            titles = owner.page.locator(".text_field_component__title-content").all_inner_texts()
            assert titles[:2] == ["Problem", "Target's final answer"] and titles[-1] == "Inverted trace"
            assert owner.page.locator(".record__content .katex").count() >= 3
            assert owner.page.locator(".record__content strong", has_text="Step 1.").count() == 1
            owner.shot("review_page.png")
            guidelines = owner.page.locator(".panel__header", has_text="Guidelines").first
            guidelines.click()
            assert owner.page.get_by_role("heading", name="Reviewing inverted traces").is_visible()
            owner.shot("guidelines.png")
            guidelines.click()
            owner.work(OWNER_PLAN)
            owner.shot("owner_done.png")

            second = Reviewer(browser, url, "reviewer2", "reviewer2-pass")
            second.open("browser-review")
            assert second.total() == N_ROWS  # pending is per reviewer
            second.filter_metadata("Automatic answer check", "unverifiable")
            deadline = time.time() + 15
            while time.time() < deadline and second.total() != len(UNVERIFIABLE):
                second.page.wait_for_timeout(200)
            assert second.total() == len(UNVERIFIABLE)
            assert second.row() in UNVERIFIABLE
            filtered = second.shot("reviewer2_filtered.png")
            if os.environ.get("TI_UPDATE_README_SCREENSHOT"):
                shutil.copy(filtered, ROOT / "docs" / "review_page.png")
            second.work(REVIEWER2_PLAN)
            second.shot("reviewer2_done.png")
            for who in (owner, second):
                assert who.posts and all(status in (200, 201) for _, _, status in who.posts), who.posts
        finally:
            browser.close()
    print(f"browser part: {time.time() - t0:.1f}s; screenshots in {ARTIFACTS}")

    out = tmp_path / "reviewed"
    r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", "review", "pull", str(served["stage"]),
                        "--dataset", "browser-review", "--out", str(out)], capture_output=True, text=True,
                       env=served["env"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(r.stdout)
    kept, moved = read_split(out, "inverted"), read_split(out, "review_rejected")
    landed = {x["id"]: x for x in kept + moved}
    assert sorted(landed) == [x["id"] for x in served["rows"]]  # none lost, none twice
    expect = {"r000": "rejected", "r001": "rejected", "r002": "accepted", "r003": "unreviewed",
              "r004": "discarded", "r005": "discarded", "r006": "unreviewed", "r007": "unreviewed"}
    assert {k: v["review_status"] for k, v in landed.items()} == expect
    assert {x["id"] for x in moved} == {"r000", "r001", "r004", "r005"}
    assert (stats["accepted"], stats["rejected"], stats["discarded"], stats["unreviewed"]) == (1, 2, 2, 3)
    assert stats["unreviewed_detail"] == {"drafts only": 1, "no responses": 2}
    assert stats["responses"] == {"submitted": 5, "draft": 1, "discarded": 2}

    def answers(rid):
        return {(x["user"], x["status"]): {q: x[q] for q in ("consistent", "plausible", "rating", "comment")}
                for x in json.loads(landed[rid]["review_responses"])}

    assert answers("r000") == {
        ("argilla", "submitted"): {"consistent": "yes", "plausible": "yes", "rating": 5, "comment": "sound steps"},
        ("reviewer2", "submitted"): {"consistent": "no", "plausible": "no", "rating": 1, "comment": None}}
    assert answers("r001") == {
        ("argilla", "submitted"): {"consistent": "no", "plausible": "yes", "rating": 2, "comment": "wrong answer"}}
    assert answers("r002") == {
        ("argilla", "submitted"): {"consistent": "yes", "plausible": "yes", "rating": 4, "comment": None},
        ("reviewer2", "submitted"): {"consistent": "yes", "plausible": "yes", "rating": 5, "comment": None}}
    assert landed["r002"]["review_n"] == 2 and landed["r002"]["review_rating_mean"] == 4.5
    assert answers("r003") == {
        ("argilla", "draft"): {"consistent": "yes", "plausible": None, "rating": None, "comment": None}}
    assert landed["r003"]["review_n"] == 0 and landed["r003"]["review_note"] == "drafts only"
    assert answers("r004") == {
        ("argilla", "discarded"): {"consistent": "no", "plausible": None, "rating": None, "comment": "garbled"}}
    assert answers("r005") == {  # the pre-filled suggestion cleared, then discarded: no answers at all
        ("argilla", "discarded"): {"consistent": None, "plausible": None, "rating": None, "comment": None}}
    assert answers("r006") == {} and landed["r006"]["review_note"] == "no responses"
    card = (out / "README.md").read_text()
    assert "1 accepted, 2 rejected and 2 discarded" in card and "3 unreviewed" in card


def test_sigterm_to_background_serve_leaves_no_process(served):
    """Last in this module: stops the module's stack."""
    proc, home = served["proc"], served["base"] / "stack"
    state = json.loads((home / "stack.json").read_text())
    pids = [pid for pid, _ in state["parts"].values()]
    tree = [d for pid in pids for d in _descendants(pid)]
    assert len(pids) == 4 and tree  # redis, osmem, server, worker (+ its RQ work horses)
    # a second serve on the same folder refuses, naming the running one
    r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", "review", "serve", str(home)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "already served" in r.stderr and served["url"] in r.stderr
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert "stopped on SIGTERM" in proc.stderr.read()
    deadline = time.time() + 10
    while time.time() < deadline and _pids_alive(pids + tree):
        time.sleep(0.2)
    assert _pids_alive(pids + tree) == []
    assert not (home / "stack.json").exists()
