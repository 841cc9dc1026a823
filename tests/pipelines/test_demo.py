"""The demo's whole pipeline at a smaller size, run as a newcomer runs it (``make demo``
in a fresh clone, default relative output folder): exact data flow through every
stage, resumability, the orderings whose margins are wide at this size on both seeds,
and a checkout left byte-for-byte unchanged.

The full-size demo (3 seeds, verdicts as they fell) is recorded in
benchmarks/demo_results.md. CI runs seeds 0 and 1 of a world of 3-operation chains (sizes
in MID) in the demo's world (``DEMO_WORLD``: the target reveals step 2 and the answer,
the surrogate errs on any step, the attacker's compressor differs from the target's
summariser). Margins seen at this size are next to each threshold; training is seeded,
so a rerun reproduces every figure. The asserted margins are under half of those seen.
"""

import json
from pathlib import Path

import pytest

from trace_inversion.data.io import read_split

MID = {"n_train": 1000, "n_test": 100, "n_ops": 3, "inverter_steps": 600, "student_steps": 400, "max_new_tokens": 40}
SEEDS = [0, 1]
# Seen at this size, seed 0 / seed 1, with the demo's student batch of 16 ("Stop 23"; at
# 32, "Stop 21": 0.42 / 0.32 and 0.25 / 0.30).
ORACLE_OVER_ANSWER_ONLY = 0.15  # seen: 0.32 / 0.23
STEP_VERIFIED_OVER_UNFILTERED = 0.10  # seen: 0.21 / 0.19


ROOT = Path(__file__).resolve().parents[2]


def _git(repo, *args) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def _checkout_state(repo: Path) -> dict:
    """HEAD, branches, tags, the index (bytes), every tracked file (bytes) and status."""
    import hashlib

    _git(repo, "status", "--porcelain")  # refresh racily-clean index entries once, before comparing
    files = _git(repo, "ls-files", "-z").split("\0")
    return {"head": _git(repo, "rev-parse", "HEAD"), "refs": _git(repo, "show-ref"),
            "index": hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest(),
            "tracked": {f: hashlib.sha256((repo / f).read_bytes()).hexdigest() for f in files if f},
            "log": _git(repo, "log", "--all", "--format=%H %s"), "status": _git(repo, "status", "--porcelain")}


def _newcomer_clone(tmp_path: Path) -> Path:
    """A clone of the project, as a new user has it: an ``origin`` remote (the project,
    with ``main`` checked out) and a tag of the user's own."""
    import hashlib
    import sys
    import time

    clone = tmp_path / "trace-inversion"
    import subprocess

    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    _git(clone, "-c", "user.name=newcomer", "-c", "user.email=n@example.com", "tag", "-a", "my-own-tag", "-m", "mine")
    # The README's command reuses this session's environment (VENV) instead of installing
    # a second one; it would reinstall if the clone's install inputs differed from it.
    venv = Path(sys.executable).parent.parent
    stamp = hashlib.sha256((clone / "pyproject.toml").read_bytes() + (clone / "scripts" / "setup_env.sh").read_bytes())
    assert (venv / ".trace-inversion-setup").read_text().strip() == stamp.hexdigest()[:16], (
        "commit pyproject.toml and scripts/setup_env.sh first: the clone would install a new environment")
    time.sleep(1.1)  # past git's racy-timestamp window, so the index is stable from here on
    return clone


@pytest.mark.slow
def test_demo_mid_size_two_seeds_ordering_data_flow_and_resume(tmp_path):
    """The newcomer's first run: ``make demo`` from a fresh clone, default relative
    output folder, inside a git checkout, on two seeds. It must succeed, write its
    artefacts and releases under runs/, report every condition (mean, sd, verdicts), and
    leave the clone byte-for-byte unchanged."""
    from trace_inversion.hub_cards.publish import list_tags
    from trace_inversion.pipelines.demo import DEMO_CONDITIONS, LABELS
    from trace_inversion.toy.world import check_steps, parse_problem

    import os
    import subprocess
    import sys

    clone = _newcomer_clone(tmp_path)
    checkout_before = _checkout_state(clone)
    out = clone / "runs" / "demo"  # the demo's default, relative to where the user stands
    venv = Path(sys.executable).parent.parent

    def run_demo_cli() -> str:
        # In a subprocess: the demo evaluates with torch in its own process, and this test
        # process must stay torch-free (distilabel forks workers; see conftest.tiny_lm_dir).
        args = ["--inverter-backend transformers", f"--seeds {len(SEEDS)}"] + [f"--size {k}={v}" for k, v in MID.items()]
        env = dict(os.environ, VENV=str(venv))
        r = subprocess.run(["make", "demo", f"ARGS={' '.join(args)}"], cwd=clone, env=env, capture_output=True,
                           text=True, timeout=2400)
        assert r.returncode == 0, r.stderr[-3000:]
        # a readable console: one line per stage, no library INFO logs or progress bars
        assert "INFO" not in r.stdout + r.stderr and "it/s]" not in r.stderr, r.stderr[-3000:]
        assert "✓ invert " in r.stderr and "✓ inversion-steps " in r.stderr and "runs/demo/report.md" in r.stdout
        return r.stdout

    report = run_demo_cli()
    stats = json.loads((out / "stats.json").read_text())
    assert [r["seed"] for r in stats["runs"]] == SEEDS
    # every training and evaluation forked from the pre-imported server, none started plain
    jobs = sum(k.startswith(("train_", "eval_")) for r in stats["runs"] for k in r["timings"])
    assert stats["fork_server"] == {"forked": jobs, "plain": []} and jobs >= 2 * 5
    n = MID["n_train"]
    for run in stats["runs"]:
        seed = out / f"seed{run['seed']}"
        # every stage wrote its dataset folder, card and stats
        for stage in ("target_query", "inverter_data", "surrogate_on_targets", "inversion", "inversion_steps",
                      "student_data"):
            assert (seed / stage / "README.md").exists() and (seed / stage / "stats.json").exists()
        assert len(read_split(seed / "target_query", "target")) == n
        inv, inv_steps = run["inversion"], run["inversion_steps"]
        for i in (inv, inv_steps):
            assert i["kept"] + i.get("unverifiable", 0) + i["rejected"] == n
        assert inv["verifiers"] == ["answer"] and inv_steps["verifiers"] == ["answer", "steps"]
        assert inv_steps["kept"] <= inv["kept"]
        # row-matched: every condition trained on the same problems
        counts = run["rows"]
        assert set(counts) == set(DEMO_CONDITIONS)
        assert {counts[c] for c in DEMO_CONDITIONS if counts[c]} == {run["matched_rows"]}
        ids = {c: {r["id"] for r in read_split(seed / "student_data", f"{c}_matched")} for c in DEMO_CONDITIONS
               if counts[c]}
        assert len({frozenset(v) for v in ids.values()}) == 1
        # the step-verified traces: every step right, by the toy world's checker
        assert run["step_correct"]["inverted_step_verified"] in (1.0, None)
        assert run["step_correct"]["target_traces"] == 1.0
        for r in read_split(seed / "inversion_steps", "inverted"):
            assert check_steps(parse_problem(r["problem"]), r["inverted_trace"])["all_correct"]
        assert all(0.0 <= a <= 1.0 for a in run["accuracy"].values())
        assert len(read_split(seed / "eval" / "target_traces", "results")) == MID["n_test"]
        for c in run["accuracy"]:
            assert (seed / "models" / f"student-{c}" / "config.json").exists()
        for stage in ("target_query", "inversion"):
            assert list_tags(out / "releases" / f"{stage}-seed{run['seed']}") == ["v1"]
        # the orderings whose margins are wide at this size, on each seed
        acc = run["accuracy"]
        assert acc["target_traces"] - acc["answer_only"] >= ORACLE_OVER_ANSWER_ONLY, acc
        assert acc["inverted_step_verified"] - acc["inverted_unfiltered"] >= STEP_VERIFIED_OVER_UNFILTERED, acc
    # mean, sd and a verdict per claim, whichever way it fell
    assert set(stats["accuracy"]) == set(stats["runs"][0]["accuracy"])
    assert all(v["sd"] is not None for v in stats["accuracy"].values())
    verdicts = {c["claim"]: c["verdict"] for c in stats["claims"]}
    assert set(verdicts.values()) <= {"supported", "not supported", "within noise", "not measured"}
    assert len(verdicts) == 4 and verdicts["inverted > summary + answer"] != "not measured"
    assert "## The paper's claims, as they fell" in report and f"| {LABELS['inverted_unfiltered']} |" in report
    assert "| hidden from the attacker | 1 |" in report  # 3 operations: the summary shows 2, the answer 3
    assert (out / "results.png").stat().st_size > 10_000 and (out / "report.md").exists()

    # Resume: the same command again replays every model call and reuses every training.
    import sqlite3

    def requests() -> list[int]:
        counts = []
        for s in SEEDS:
            with sqlite3.connect(str(out / f"seed{s}" / "requests.sqlite")) as c:
                counts.append(c.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
        return counts

    before = requests()
    run_demo_cli()
    assert requests() == before
    stats2 = json.loads((out / "stats.json").read_text())
    assert [r["accuracy"] for r in stats2["runs"]] == [r["accuracy"] for r in stats["runs"]]
    # a time from scratch only where nothing was reused, and the report says which seeds reused work
    assert all(r["reused"] == [] for r in stats["runs"])
    assert all({"query_target", "invert", "invert_steps", "train_inverter", "train_target_traces"} <= set(r["reused"])
               for r in stats2["runs"])
    assert "Seed 0 reused finished work (" in (out / "report.md").read_text()
    assert list_tags(out / "releases" / "inversion-seed0") == ["v1"]  # an unchanged release is not re-tagged
    # the user's checkout: HEAD, branches, tags, index and tracked files untouched, nothing to commit
    after = _checkout_state(clone)
    was = checkout_before
    changed = {k: (was[k], after[k]) for k in was if k != "tracked" and was[k] != after[k]}
    changed_files = [f for f in set(was["tracked"]) | set(after["tracked"])
                     if was["tracked"].get(f) != after["tracked"].get(f)]
    assert not changed and not changed_files and after["status"] == "", (changed, changed_files)
    assert "demo seed" not in after["log"] and "my-own-tag" in after["refs"]


def test_train_queue_runs_background_jobs_in_order_within_its_slots(tmp_path):
    """The demo's scheduler: at most `slots` processes at once, `then` chains a job,
    `first` jumps the queue, a failure raises with its log, close() kills what runs."""
    import time

    from trace_inversion.pipelines.demo import TrainQueue
    from trace_inversion.training.sft import BackgroundRun

    order = []

    def job(name, seconds=0.3, rc=0):
        def start():
            order.append(name)
            return BackgroundRun(["sh", "-c", f"sleep {seconds}; echo {name}; exit {rc}"], tmp_path / f"{name}.log",
                                 name=name, finish=lambda log: {"said": log.strip()})
        return start

    q = TrainQueue(2)
    q.add("a", job("a"), then=lambda res: q.add("a2", job("a2"), first=True))
    q.add("b", job("b"))
    q.add("c", job("c"))
    assert len(q.running) == 2 and order == ["a", "b"]
    q.wait("a")
    assert q.results["a"]["said"] == "a" and q.results["a"]["seconds"] >= 0.2
    q.wait()
    assert order.index("a2") < order.index("c") and set(q.results) == {"a", "a2", "b", "c"}

    # paused(): running jobs (their whole process group) stop, then continue
    ticks = tmp_path / "ticks"
    q.add("ticker", lambda: BackgroundRun(["sh", "-c", f"for i in $(seq 40); do echo $i >> {ticks}; sleep 0.05; done"],
                                          tmp_path / "ticker.log", name="ticker"))
    time.sleep(0.5)
    with q.paused():
        time.sleep(0.2)
        n = len(ticks.read_text().split())
        time.sleep(0.5)
        assert len(ticks.read_text().split()) == n < 40
    q.wait("ticker")
    assert len(ticks.read_text().split()) == 40

    # a side job (an evaluation) starts in a side slot beside full slots, ahead of a queued
    # long job; without a free side slot it waits for a slot like any job
    side = TrainQueue(1, side_slots=1)
    order.clear()
    side.add("long1", job("long1", 0.6))
    side.add("long2", job("long2"))
    side.add("short1", job("short1"), side=True)
    side.add("short2", job("short2"), side=True)
    assert order == ["long1", "short1"] and side.side == {"short1"} and len(side.pending) == 2
    side.wait("short1")
    assert order == ["long1", "short1", "short2"] and side.side == {"short2"}
    side.wait()
    assert order == ["long1", "short1", "short2", "long2"] and not side.side
    solo = TrainQueue(1)  # no side slot: a side job takes a free slot like any job
    solo.add("short3", job("short3"), side=True)
    assert "short3" in solo.running and not solo.side
    solo.wait()

    q.add("bad", job("bad", 0.1, rc=3))
    with pytest.raises(RuntimeError, match="bad failed"):
        q.wait()
    q.add("slow", job("slow", 30))
    # a launcher whose child does the work (as `accelerate launch` runs trl): close() kills both
    pidfile = tmp_path / "child.pid"
    q.add("launcher", lambda: BackgroundRun(["sh", "-c", f"sleep 31 & echo $! > {pidfile}; wait"],
                                             tmp_path / "launcher.log", name="launcher"))
    run = q.running["slow"][0]
    for _ in range(50):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.1)
    child = int(pidfile.read_text())
    t = time.time()
    q.close()
    assert run.proc.poll() is not None and time.time() - t < 5
    time.sleep(0.2)
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"  # gone (or a zombie awaiting its reaper)
