"""The demo's run: every stage per world seed, trainings and evaluations in the
background, then the report (see the package doc)."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Optional

from trace_inversion.pipelines import STAGES
from trace_inversion.config import deep_merge, load_config
from trace_inversion.data.loading import load_rows
from trace_inversion.hub_cards.publish import publish_local
from trace_inversion.data.io import write_json
from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
from trace_inversion.pipelines.demo.report import (DEMO_CONDITIONS, LABELS, claim_verdicts, plot, render_report,
                                                    same_data)
from trace_inversion.pipelines.demo.scheduler import TrainQueue
from trace_inversion.pipelines.invert import run_invert
from trace_inversion.pipelines.query_target import run_query_target
from trace_inversion.pipelines.student_data import SURROGATE_STAGE, run_student_data
from trace_inversion.config.safe_paths import claim_dir
from trace_inversion.toy.world import REFERENCE_COLUMN
from trace_inversion.training.forkserver import ForkServer
from trace_inversion.training.sft import TRAIN_THREADS_ENV, BackgroundRun, job_env, start_sft

# Tiny-world training sizes, calibrated on 2 cores (see benchmarks/demo_calibration.md).
# Students: 650 steps, the fewest the oracle calibration passed on every seed (stop 24, on
# the recorded seeds' matched problems: 96.3 / 97.7 / 100% at 650; at 600 seed 1 stopped at
# 94.7%; at 500 seed 0 at 76.3%). Row-matched, they train on the 500-1,200 problems the step
# checker kept.
# Students in batches of 16 (the recipe's 32 halved): training is compute-bound (a step's
# time is its matrix products), and at 32 a seed's work needs over 10 minutes of both
# cores; the oracle needs the steps, not the rows per step (batch 16: 97.7 / 97.3% on
# seeds 0 / 1). The inverter keeps 32: at 16 it kept 280 / 420 problems instead of 503 /
# 1,191 and seed 1's oracle, trained on 420, stopped at 78% (benchmarks/demo_calibration.md).
DEMO = {"n_train": 3000, "n_test": 300, "n_ops": 5, "inverter_steps": 1000, "student_steps": 650,
        "inverter_batch": 32, "student_batch": 16, "layers": 3, "max_new_tokens": 64, "parallel": 2}
DEFAULT_OUTPUT = "runs/demo"
# The demo's world (data.toy), chosen before any student was trained and not tuned towards
# a result (README "The demo"; benchmarks/demo_calibration.md): the target reveals steps 2
# and 4 (its answer, step 5); the surrogate's misconceptions (a fixed 20% of facts `a op b`,
# always wrong the same way) fall on any step, hidden steps 1 and 3 included; the
# attacker's compressor differs from the target's summariser in what it reveals: any step,
# each value left out with probability 0.5. It keeps the target's phrasing: a tiny model
# trained from scratch cannot read a paraphrase it never saw (with `compressor_style: is`
# only 16% of first inverted samples reached the target's answer), so a phrasing gap would
# measure the tokenizer, not the attack; `compressor_style` sets one.
DEMO_WORLD = {"summary_every": 2, "summary_offset": 0, "summary_style": "gives",
              "surrogate_errors": "systematic", "surrogate_reliable_steps": 0, "surrogate_error_rate": 0.2,
              "compressor_every": 1, "compressor_offset": 0, "compressor_style": None, "compressor_drop": 0.5}
STEP_FOLDER = "inversion_steps"
# Student trainings, longest first: trace conditions (longest rows), then summary + answer, then the answer alone.
TRAIN_ORDER = ["target_traces", "inverted_step_verified", "inverted_verified", "inverted_unfiltered",
               "surrogate_traces", "summary_answer", "answer_only"]


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def tiny_base_model(root: Path, seed: int, layers: int) -> Path:
    from trace_inversion.toy.tiny_models import cached_tiny_lm, default_corpus

    return cached_tiny_lm(root, corpus=default_corpus(seed=0), num_layers=layers, seed=seed)


def seed_overrides(seed: int, out: Path, size: dict, inverter_backend: str, overrides: dict) -> dict:
    """The run config of one seed (the user's ``overrides`` last): the toy world of this
    seed at the demo's size, the trained tiny inverter, verified synthesis."""
    gen = {"max_new_tokens": size["max_new_tokens"], "seed": seed}
    inverter = {"backend": inverter_backend, "model": str(out / "models" / "inverter"), "sampling": gen}
    if inverter_backend == "vllm":
        # 1,024 sequences a step instead of vLLM's 256: the same samples (seeded per request);
        # half the time when the engine shares the cores, no change on an idle machine
        # (benchmarks/demo_calibration.md, "Stop 23")
        inverter["engine_kwargs"] = {"max_num_seqs": 1024}
    return deep_merge({
        "name": f"demo-seed{seed}", "seed": seed,
        # the paper's premise: a surrogate that is systematically weaker (errors students inherit)
        "data": {"toy": {"seed": seed, "n_train": size["n_train"], "n_test": size["n_test"], "n_ops": size["n_ops"],
                         **DEMO_WORLD}},
        "output": {"dir": str(out)},
        "models": {"inverter": inverter},
        "invert": {"max_attempts": 4, "max_model_len": 512},
    }, overrides)


class SeedJobs:
    """One seed's background jobs on a ``TrainQueue``: the inverter's training, one
    training per student condition, and each student's evaluation as soon as it is trained.
    Students are evaluated in their own processes: this process stays torch-free
    (distilabel forks it for the next stages and seeds). Every job is started by
    ``spawn`` (the demo's ``ForkServer``: forked from a process that imported torch,
    transformers and TRL once)."""

    def __init__(self, seed: int, out: Path, size: dict, base_model: str, test: list[dict], spawn=None,
                 user_template: Optional[str] = None):
        self.seed, self.out, self.size, self.base_model, self.spawn = seed, out, size, base_model, spawn
        self.user_template = user_template  # students.user_template_file: the students are asked as they were trained
        # Two trainings at once with one thread each beat one with two threads (~1.3x on 2 cores).
        self.env = {TRAIN_THREADS_ENV: "1"} if size["parallel"] > 1 else None
        self.counts: dict[str, int] = {}  # condition -> rows
        self.results: dict[str, float] = {}  # condition -> accuracy
        self.test_file = out / "eval" / "test.jsonl"
        self.test_file.parent.mkdir(parents=True, exist_ok=True)
        self.test_file.write_text("".join(json.dumps({"id": r["id"], "problem": r["problem"],
                                                      REFERENCE_COLUMN: r[REFERENCE_COLUMN]}) + "\n" for r in test))
        self.eval_env = job_env({"OMP_NUM_THREADS": "1"}) if size["parallel"] > 1 else None
        # Evaluations (a few seconds, one thread) run in a side slot beside the two trainings:
        # no training waits for one, and the odd training at the end has company.
        self.queue = TrainQueue(max(1, size["parallel"]), side_slots=1 if size["parallel"] > 1 else 0)

    def start_inverter(self) -> BackgroundRun:
        """The inverter trains alone (every student waits for the inversion its rows are
        matched on), so it gets every thread the demo uses."""
        _log(f"seed {self.seed}: train the tiny inverter ({self.size['inverter_steps']} steps, trl sft)")
        return start_sft("tiny/inverter.yaml", {
            "model_name_or_path": self.base_model, "dataset_name": str(self.out / STAGES["build-inverter-data"]["folder"]),
            "dataset_config": "with_summary", "output_dir": str(self.out / "models" / "inverter"),
            "max_steps": self.size["inverter_steps"], "per_device_train_batch_size": self.size["inverter_batch"],
            "seed": self.seed},
            self.out / "models" / "inverter.run", env={TRAIN_THREADS_ENV: str(max(1, self.size["parallel"]))},
            spawn=self.spawn)

    def start_student(self, c: str, folder: str, threads: Optional[int] = None) -> BackgroundRun:
        """Condition ``c``'s student, on its row-matched config (the problems every
        condition shares)."""
        _log(f"seed {self.seed}: train student '{LABELS[c]}' ({self.counts[c]} rows, "
             f"{self.size['student_steps']} steps)")
        return start_sft("tiny/student.yaml", {
            "model_name_or_path": self.base_model, "dataset_name": str(self.out / folder),
            "dataset_config": f"{c}_matched",
            "output_dir": str(self.out / "models" / f"student-{c}"), "max_steps": self.size["student_steps"],
            "per_device_train_batch_size": self.size["student_batch"], "seed": self.seed},
            self.out / "models" / f"student-{c}.run",
            env={TRAIN_THREADS_ENV: str(threads)} if threads else self.env, spawn=self.spawn)

    def train_student(self, c: str, folder: str, threads: Optional[int] = None, first: bool = False) -> None:
        """Queue condition ``c``'s training on ``folder``, then its evaluation."""
        self.queue.add(f"train_{c}", partial(self.start_student, c, folder, threads),
                       then=partial(self.evaluate, c), first=first)

    def evaluate(self, c: str, _trained: Optional[dict] = None) -> None:
        """Queue the evaluation of condition ``c``'s student, ahead of queued trainings."""
        d = claim_dir(self.out / "eval" / c)  # the evaluate command writes only folders the project made
        self.queue.add(f"eval_{c}", partial(self.start_eval, c, d), then=partial(self.record, c), first=True,
                       side=True)

    def start_eval(self, c: str, d: Path) -> BackgroundRun:
        cmd = [sys.executable, "-m", "trace_inversion.cli", "evaluate",
               "--model", str(self.out / "models" / f"student-{c}"),
               "--benchmark", str(self.test_file), "--split", "test", "--id-column", "id",
               "--answer-column", REFERENCE_COLUMN, "--backend", "transformers", "--temperature", "0",
               "--max-new-tokens", str(self.size["max_new_tokens"]), "--output", str(d)]
        if self.user_template:
            cmd += ["--user-template", self.user_template]
        return BackgroundRun(cmd, d / "eval.log", self.eval_env, name=f"evaluate {c}",
                             finish=partial(_read_accuracy, d), spawn=self.spawn)

    def record(self, c: str, res: dict) -> None:
        self.results[c] = res["accuracy_mean"]
        _log(f"seed {self.seed}: {LABELS[c]}: {res['accuracy_mean']:.1%}")


def _read_accuracy(folder: Path, log: str) -> dict:
    return json.loads((folder / "accuracy.json").read_text())


def _timed(timings: dict[str, float], name: str, fn, *a, **kw):
    """``fn(*a, **kw)``, its wall time recorded as ``timings[name]``."""
    t = time.time()
    r = fn(*a, **kw)
    timings[name] = round(time.time() - t, 1)
    return r


def run_seed(seed: int, base: Path, config_path: Optional[str], overrides: dict, size: dict,
             inverter_backend: str, spawn=None) -> dict:
    """One seed: data stages, the inverter, two inversions (answer-verified, then
    step-verified), the row-matched student conditions, one student per distinct
    condition, their evaluations."""
    t_seed = time.time()
    out = base / f"seed{seed}"
    over = seed_overrides(seed, out, size, inverter_backend, overrides)
    # The inverter folder exists only after training: validate the rest now, the inverter later.
    pre = deep_merge(over, {"models": {"inverter": {"backend": "toy", "model": "toy-inverter", "engine_kwargs": None}}})
    cfg = load_config(config_path, pre)
    timings: dict[str, float] = {}
    train, test = load_rows(cfg.data, "train"), load_rows(cfg.data, "test")
    attacker = load_rows(cfg.data, "attacker")
    base_model = str(tiny_base_model(base / ".models", seed, size["layers"]))
    jobs = SeedJobs(seed, out, size, base_model, test, spawn, cfg.students.user_template_file)
    queue, counts = jobs.queue, jobs.counts
    trained: dict[str, str] = {}  # condition -> the condition whose student it uses (identical data)
    try:
        # The inverter (the longest job) starts as soon as its data exists; the target
        # query and the surrogate's traces on the target's problems run beside it.
        _log(f"seed {seed}: surrogate traces + simulated summaries -> inverter data ({len(attacker)} attacker problems)")
        _timed(timings, "inverter_data", run_build_inverter_data, cfg, attacker,
               STAGES["build-inverter-data"]["folder"])
        queue.add("train_inverter", jobs.start_inverter)
        _log(f"seed {seed}: query the target ({len(train)} problems)")
        q = _timed(timings, "query_target", run_query_target, cfg, train)
        _timed(timings, SURROGATE_STAGE, run_build_inverter_data, cfg, train, SURROGATE_STAGE)
        queue.wait("train_inverter")
        cfg = load_config(config_path, over)
        # vLLM's CPU engine binds an OpenMP thread to every core and spins at barriers: next
        # to a training it ran ~4x slower (148 s instead of 34 s), so nothing trains meanwhile.
        # The step-verified run first: every sample the answer-verified run draws (same
        # prompts, same per-round seeds; a sample failing its answer fails both) is then
        # in the request cache, so the second run replays instead of generating.
        _log(f"seed {seed}: invert with verified synthesis, answer consistency + the step checker "
             f"({inverter_backend})")
        cfg_steps = load_config(config_path, deep_merge(over, {"invert": {"verifiers": ["answer", "steps"]}}))
        inv_steps = _timed(timings, "invert_steps", run_invert, cfg_steps, None, STEP_FOLDER)
        _log(f"seed {seed}: invert with verified synthesis, answer consistency")
        inv = _timed(timings, "invert", run_invert, cfg)
        releases = {}
        for stage in (STAGES["query-target"]["folder"], STAGES["invert"]["folder"]):
            repo = base / "releases" / f"{stage}-seed{seed}"
            # identical content (a resumed run) returns the existing release instead of a new tag
            releases[stage] = publish_local(out / stage, repo, message=f"demo seed {seed}: {stage}")
        folder = STAGES["student-data"]["folder"]
        sd = _timed(timings, "student_data", run_student_data, cfg, out / STAGES["query-target"]["folder"],
                    out / SURROGATE_STAGE, out / STAGES["invert"]["folder"],
                    [c for c in DEMO_CONDITIONS if c != "inverted_step_verified"], folder, out / STEP_FOLDER)
        counts.update({c: sd["matched"].get(f"{c}_matched", 0) for c in DEMO_CONDITIONS})
        _log(f"seed {seed}: every condition trains on the same {sd['matched_rows']} problems (row-matched)")
        groups = same_data(out / folder, [f"{c}_matched" for c in DEMO_CONDITIONS if counts.get(c)])
        # longest trainings first, so the queue's two slots finish together (no student alone at the end)
        for cm, same in sorted(groups.items(), key=lambda g: TRAIN_ORDER.index(g[0][: -len("_matched")])):
            c, s_ = cm[: -len("_matched")], same[: -len("_matched")]
            trained[c] = s_
            if s_ == c:
                jobs.train_student(c, folder)
            else:
                _log(f"seed {seed}: '{LABELS[c]}' has the same rows as '{LABELS[s_]}': one student serves both")
        queue.wait()
    finally:
        queue.close()
    timings.update(queue.seconds)
    results = jobs.results
    for c, same in trained.items():
        if same != c:  # the same data, so the same student: a copy keeps every condition's folder
            shutil.copytree(out / "models" / f"student-{same}", out / "models" / f"student-{c}", dirs_exist_ok=True)
            results[c] = results[same]
    # finished work this run took from disk (stages, trainings): its time is then not a seed's from scratch
    reused = sorted([n for n, st in (("query_target", q), ("invert", inv), ("invert_steps", inv_steps))
                     if st.get("reused")] + [n for n, r in queue.results.items() if r.get("reused")])
    return {"seed": seed, "accuracy": {c: results[c] for c in DEMO_CONDITIONS if c in results}, "rows": counts,
            "matched_rows": sd["matched_rows"], "rows_per_condition": sd["conditions"],
            "same_data": {c: s for c, s in trained.items() if s != c}, "target": q, "inversion": inv,
            "inversion_steps": inv_steps, "step_correct": trace_step_correctness(out, inv, inv_steps),
            "world": {k: v for k, v in cfg.data.toy.model_dump().items() if k not in ("n_train", "n_test")},
            "releases": releases, "timings": timings, "reused": reused, "seconds": round(time.time() - t_seed, 1)}


def trace_step_correctness(out: Path, inv: dict, inv_steps: dict) -> dict:
    """Share of traces with every step right, per trace source (the toy world's exact
    checker): the surrogate's on the target's problems, the inverter's first samples,
    the answer-verified and the step-verified traces, the target's own."""
    from trace_inversion.data.io import read_split
    from trace_inversion.pipelines.invert import toy_step_share

    st, st_steps = inv.get("toy_all_steps_correct") or {}, inv_steps.get("toy_all_steps_correct") or {}
    return {"surrogate_traces": toy_step_share(read_split(out / SURROGATE_STAGE, "traces"), "surrogate_trace"),
            "inverted_unfiltered": st.get("unfiltered"), "inverted_verified": st.get("kept"),
            "inverted_step_verified": st_steps.get("kept"),
            "target_traces": toy_step_share(read_split(out / STAGES["query-target"]["folder"], "target"),
                                            "target_trace")}


def run_demo(output: Optional[str] = None, seeds: int = 1, config_path: Optional[str] = None,
             overrides: Optional[dict] = None, size: Optional[dict] = None, inverter_backend: str = "vllm") -> str:
    t0 = time.time()
    base = Path(output or DEFAULT_OUTPUT)
    base.mkdir(parents=True, exist_ok=True)
    size = dict(DEMO, **(size or {}))
    # No SIGTERM handler here: distilabel's pool workers inherit it, and Pool.terminate
    # stops them with SIGTERM (a handler there hung a run). Ctrl-C stops the background
    # trainings (TrainQueue.close in a finally); they run in their own process groups.
    # Trainings and evaluations are forked from one process that imported their libraries
    # once (~5 s of a core saved per job, 13-15 jobs a seed); its log: fork-server.log.
    with ForkServer.for_run(base) as server:
        runs = [run_seed(s, base, config_path, overrides or {}, size, inverter_backend, server.spawn)
                for s in range(seeds)]
    if note := server.fallback_note():
        _log(note)
    seconds = time.time() - t0
    report = render_report(runs, size, seconds)
    (base / "report.md").write_text(report)
    plot(runs, base / "results.png")
    summary = {c: {"mean": round(statistics.fmean(v), 4), "sd": round(statistics.stdev(v), 4) if len(v) > 1 else None}
               for c in DEMO_CONDITIONS if (v := [r["accuracy"][c] for r in runs if c in r["accuracy"]])}
    write_json({"size": size, "runs": runs, "accuracy": summary, "claims": claim_verdicts(runs, size["n_test"]),
                "seconds": round(seconds, 1), "fork_server": server.summary()}, base / "stats.json")
    return report + f"\nWrote {base / 'report.md'}, {base / 'results.png'} and {base / 'stats.json'}."


def add_parser(subparsers) -> None:
    """The ``demo`` command."""
    from trace_inversion.cli_options import add_config_args

    p = subparsers.add_parser("demo", help="pipeline: the end-to-end toy-world run (offline, CPU, no key)",
                              description="Run every implemented stage on the embedded toy world and print a report.")
    add_config_args(p)
    p.add_argument("--seeds", type=int, default=1, help="world seeds to run (default 1)")
    p.add_argument("--size", action="append", default=[], metavar="KEY=N",
                   help="override a demo size (n_train, n_test, n_ops, inverter_steps, student_steps, inverter_batch, "
                        "student_batch, layers, max_new_tokens), e.g. --size n_train=400 for a quick run")
    p.add_argument("--inverter-backend", choices=["vllm", "transformers"], default="vllm",
                   help="engine that runs the trained inverter (default vllm)")
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.cli_options import claim, parse_overrides
    from trace_inversion.errors import UserError

    overrides = parse_overrides(args.overrides)
    if args.retry_failed:
        overrides = deep_merge(overrides, {"runtime": {"retry_failed": True}})
    size = {}
    for item in args.size:
        k, _, v = item.partition("=")
        if k not in DEMO:
            raise UserError(f"--size {k}: unknown; fix: one of {sorted(DEMO)}")
        size[k] = int(v)
    output = args.output or DEFAULT_OUTPUT
    claim(output, args)
    print(run_demo(output=output, seeds=args.seeds, config_path=args.config, overrides=overrides, size=size,
                   inverter_backend=args.inverter_backend))
    return 0
