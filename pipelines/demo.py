"""The demo: the whole system end to end in the toy world, offline, on a CPU.

Per world seed: query the programmatic target; build the inverter's data from the
programmatic surrogate on the attacker's own problems; train a tiny inverter with the
tiny recipe (``trl sft``); invert the target's answers + summaries with verified
synthesis; publish local releases (git repository, one tag per version); build the
student conditions; train one tiny student per condition; evaluate every student on
held-out problems with the same matcher as the consistency filter. Prints a table of
accuracy per condition plus trace overlap and filter rates, and writes ``report.md``,
``results.png`` and ``stats.json``.

Resumable: model calls replay from the request cache, finished trainings are reused,
stage files are written atomically; run the same command again after Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from trace_inversion.config import deep_merge, load_config

CONDITIONS = ["answer_only", "summary_answer", "surrogate_traces", "inverted_unfiltered", "inverted_verified",
              "target_traces"]
LABELS = {"answer_only": "answer only", "summary_answer": "summary + answer", "surrogate_traces": "surrogate traces",
          "inverted_unfiltered": "inverted (unfiltered)", "inverted_verified": "inverted (verified)",
          "target_traces": "target traces (oracle)"}
# Tiny-world training sizes, calibrated on 2 cores (see benchmarks/demo_calibration.md).
DEMO = {"n_train": 3000, "n_test": 300, "n_ops": 5, "inverter_steps": 1000, "student_steps": 500,
        "layers": 3, "max_new_tokens": 64, "parallel": 2}


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def tiny_base_model(root: Path, seed: int, layers: int) -> Path:
    from trace_inversion.tiny_models import cached_tiny_lm, default_corpus

    return cached_tiny_lm(root, corpus=default_corpus(seed=0), num_layers=layers, seed=seed)


def run_seed(seed: int, base: Path, config_path: Optional[str], overrides: dict, size: dict,
             inverter_backend: str) -> dict:
    from trace_inversion.data import load_rows
    from trace_inversion.hub_cards.publish import publish_local
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
    from trace_inversion.pipelines.invert import run_invert
    from trace_inversion.pipelines.query_target import run_query_target
    from trace_inversion.pipelines.students import run_student_data
    from trace_inversion.safe_paths import claim_dir
    from trace_inversion.training import BackgroundRun, start_sft

    t_seed = time.time()
    out = base / f"seed{seed}"
    inv_model = out / "models" / "inverter"
    gen = {"max_new_tokens": size["max_new_tokens"], "seed": seed}
    over = deep_merge({
        "name": f"demo-seed{seed}", "seed": seed,
        # the paper's premise: a surrogate that is systematically weaker (errors students inherit)
        "data": {"toy": {"seed": seed, "n_train": size["n_train"], "n_test": size["n_test"], "n_ops": size["n_ops"],
                         "surrogate_errors": "systematic"}},
        "output": {"dir": str(out)},
        "models": {"inverter": {"backend": inverter_backend, "model": str(inv_model), "sampling": gen}},
        "invert": {"max_attempts": 4, "max_model_len": 512},
    }, overrides)
    # The inverter folder exists only after training: validate the rest now, the inverter later.
    pre = deep_merge(over, {"models": {"inverter": {"backend": "toy", "model": "toy-inverter"}}})
    cfg = load_config(config_path, pre)
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        t = time.time()
        r = fn(*a, **kw)
        timings[name] = round(time.time() - t, 1)
        return r

    train, test = load_rows(cfg.data, "train"), load_rows(cfg.data, "test")
    attacker = load_rows(cfg.data, "attacker")
    models_root = base / ".models"
    base_model = str(tiny_base_model(models_root, seed, size["layers"]))
    # Two trainings at once with one thread each beat one with two threads (~1.3x on 2 cores).
    env = {"TRACE_INVERSION_TRAIN_THREADS": "1"} if size["parallel"] > 1 else None
    trained: dict[str, str] = {}  # condition -> the condition whose student it uses (identical data)
    counts: dict[str, int] = {}
    base_conds = [c for c in CONDITIONS if not c.startswith("inverted")]
    inv_conds = [c for c in CONDITIONS if c.startswith("inverted")]

    def inverter_job():
        _log(f"seed {seed}: train the tiny inverter ({size['inverter_steps']} steps, trl sft)")
        return start_sft("tiny/inverter.yaml", {
            "model_name_or_path": base_model, "dataset_name": str(out / "inverter_data"),
            "dataset_config": "with_summary", "output_dir": str(inv_model), "max_steps": size["inverter_steps"],
            "seed": seed}, out / "models" / "inverter.run", env=env)

    def student_job(c: str, folder: str, threads: Optional[int] = None):
        def start():
            _log(f"seed {seed}: train student '{LABELS[c]}' ({counts[c]} rows, {size['student_steps']} steps)")
            return start_sft("tiny/student.yaml", {
                "model_name_or_path": base_model, "dataset_name": str(out / folder), "dataset_config": c,
                "output_dir": str(out / "models" / f"student-{c}"), "max_steps": size["student_steps"],
                "seed": seed}, out / "models" / f"student-{c}.run",
                env={"TRACE_INVERSION_TRAIN_THREADS": str(threads)} if threads else env)
        return start

    # Students are evaluated in their own processes as soon as each is trained: this
    # process stays torch-free (distilabel forks it for the next stages and seeds).
    test_file = out / "eval" / "test.jsonl"
    test_file.parent.mkdir(parents=True, exist_ok=True)
    test_file.write_text("".join(json.dumps({"id": r["id"], "problem": r["problem"],
                                             "reference_answer": r["reference_answer"]}) + "\n" for r in test))
    results: dict[str, float] = {}
    eval_env = dict(os.environ, OMP_NUM_THREADS="1") if size["parallel"] > 1 else None

    def evaluate(c: str):
        d = claim_dir(out / "eval" / c)  # the evaluate command writes only folders the project made
        cmd = [sys.executable, "-m", "trace_inversion.cli", "evaluate", "--model", str(out / "models" / f"student-{c}"),
               "--benchmark", str(test_file), "--split", "test", "--id-column", "id",
               "--answer-column", "reference_answer", "--backend", "transformers", "--temperature", "0",
               "--max-new-tokens", str(size["max_new_tokens"]), "--output", str(d)]

        def start():
            return BackgroundRun(cmd, d / "eval.log", eval_env, name=f"evaluate {c}",
                                 finish=lambda log: json.loads((d / "accuracy.json").read_text()))

        def record(res: dict):
            results[c] = res["accuracy_mean"]
            _log(f"seed {seed}: {LABELS[c]}: {res['accuracy_mean']:.1%}")

        queue.add(f"eval_{c}", start, then=record, first=True)

    queue = TrainQueue(max(1, size["parallel"]))
    try:
        # The inverter (the longest job) starts as soon as its data exists; the target
        # query and the students that need no inversion run beside it.
        _log(f"seed {seed}: surrogate traces + simulated summaries -> inverter data ({len(attacker)} attacker problems)")
        timed("inverter_data", run_build_inverter_data, cfg, attacker, "inverter_data")
        queue.add("train_inverter", inverter_job)
        _log(f"seed {seed}: query the target ({len(train)} problems)")
        q = timed("query_target", run_query_target, cfg, train)
        timed("surrogate_on_targets", run_build_inverter_data, cfg, train, "surrogate_on_targets")
        sd = timed("student_data", run_student_data, cfg, out / "target_query", out / "surrogate_on_targets", None,
                   base_conds, "student_data")
        counts.update(sd["conditions"])
        for c in base_conds:
            if counts.get(c):
                trained[c] = c
                queue.add(f"train_{c}", student_job(c, "student_data"), then=lambda _, c=c: evaluate(c))
        queue.wait("train_inverter")
        cfg = load_config(config_path, over)
        _log(f"seed {seed}: invert with verified synthesis ({inverter_backend})")
        # vLLM's CPU engine binds an OpenMP thread to every core and spins at barriers: next
        # to a training it ran ~4x slower (148 s instead of 34 s), so trainings pause meanwhile.
        with queue.paused():
            inv = timed("invert", run_invert, cfg)
        queue.pump()
        releases = {}
        for stage in ("target_query", "inversion"):
            repo = base / "releases" / f"{stage}-seed{seed}"
            # identical content (a resumed run) returns the existing release instead of a new tag
            releases[stage] = publish_local(out / stage, repo, message=f"demo seed {seed}: {stage}")
        sdi = timed("student_data_inverted", run_student_data, cfg, out / "target_query",
                    out / "surrogate_on_targets", out / "inversion", inv_conds, "student_data_inverted")
        counts.update(sdi["conditions"])
        groups = same_data(out / "student_data_inverted", [c for c in inv_conds if counts.get(c)])
        # A student that would train alone at the end gets both threads.
        lone = size["parallel"] > 1 and not queue.pending and sum(c == g for c, g in groups.items()) == 1
        for c, same in groups.items():
            trained[c] = same
            if same == c:
                queue.add(f"train_{c}", student_job(c, "student_data_inverted", size["parallel"] if lone else None),
                          then=lambda _, c=c: evaluate(c), first=True)
            else:
                _log(f"seed {seed}: '{LABELS[c]}' has the same rows as '{LABELS[same]}': one student serves both")
        queue.wait()
    finally:
        queue.close()
    timings.update(queue.seconds)
    for c, same in trained.items():
        if same != c:  # the same data, so the same student: a copy keeps every condition's folder
            shutil.copytree(out / "models" / f"student-{same}", out / "models" / f"student-{c}", dirs_exist_ok=True)
            results[c] = results[same]
    return {"seed": seed, "accuracy": {c: results[c] for c in CONDITIONS if c in results}, "rows": counts,
            "same_data": {c: s for c, s in trained.items() if s != c}, "target": q, "inversion": inv,
            "releases": releases, "timings": timings, "seconds": round(time.time() - t_seed, 1)}


class TrainQueue:
    """Trainings run as background processes, at most ``slots`` at once, started in
    order. No threads: distilabel forks this process while trainings run, and a fork
    copies other threads' locks as held."""

    def __init__(self, slots: int):
        self.slots = slots
        self.pending: list[tuple] = []
        self.running: dict = {}
        self.results: dict[str, dict] = {}

    @property
    def seconds(self) -> dict[str, float]:
        return {n: r["seconds"] for n, r in self.results.items()}

    def add(self, name: str, start, then=None, first: bool = False) -> None:
        """Queue ``start()`` (returns a ``BackgroundRun``); ``then(result)`` runs when it
        has finished (it may queue more). ``first`` puts it ahead of queued jobs."""
        self.pending.insert(0 if first else len(self.pending), (name, start, then))
        self.pump()

    def pump(self) -> None:
        """Collect finished runs (raising if one failed), then start queued ones."""
        finished = [(name, run, then) for name, (run, then) in self.running.items() if run.done()]
        for name, run, then in finished:
            del self.running[name]
            self.results[name] = run.result()
        for name, run, then in finished:
            if then is not None:  # may queue more and pump again
                then(self.results[name])
        while self.pending and len(self.running) < self.slots:
            name, start, then = self.pending.pop(0)
            self.running[name] = (start(), then)

    def wait(self, *names: str) -> None:
        """Until ``names`` (default: everything queued) have finished."""
        def busy():
            if names:
                return any(n not in self.results for n in names)
            return bool(self.pending or self.running)

        while busy():
            self.pump()
            if busy():
                time.sleep(0.5)

    @contextmanager
    def paused(self):
        """Stop running jobs for the duration (SIGSTOP their process groups), then resume."""
        import signal

        runs = [run for run, _ in self.running.values()]
        for run in runs:
            run.signal_group(signal.SIGSTOP)
        try:
            yield
        finally:
            for run in runs:
                run.signal_group(signal.SIGCONT)

    def close(self) -> None:
        for run, _ in self.running.values():
            run.kill()
        self.running.clear()
        self.pending.clear()


def same_data(folder: Path, conditions: list[str]) -> dict[str, str]:
    """Each condition mapped to the first one with identical rows (itself if none):
    e.g. verified synthesis that rejected nothing leaves verified == unfiltered."""
    import hashlib

    from trace_inversion.io import read_split

    seen: dict[str, str] = {}
    out = {}
    for c in conditions:
        digest = hashlib.sha256(json.dumps(read_split(folder, c), sort_keys=True).encode()).hexdigest()
        out[c] = seen.setdefault(digest, c)
    return out


def render_report(runs: list[dict], size: dict, seconds: float) -> str:
    lines = ["# trace-inversion demo: the toy world", "",
             f"Chained arithmetic mod 10 ({size['n_ops']} operations, left to right); {size['n_train']} target "
             f"problems, {size['n_test']} held-out test problems per seed; tiny Llama students "
             f"({size['layers']} layers, hidden 128) trained from scratch for {size['student_steps']} steps with "
             f"`trl sft`; tiny inverter {size['inverter_steps']} steps; greedy decoding.", "",
             "## Student accuracy on held-out problems", "",
             "| condition | " + " | ".join(f"seed {r['seed']}" for r in runs) + " | mean |",
             "|---|" + "---|" * (len(runs) + 1)]
    for c in CONDITIONS:
        vals = [r["accuracy"].get(c) for r in runs]
        if all(v is None for v in vals):
            continue
        nums = [v for v in vals if v is not None]
        lines.append(f"| {LABELS[c]} | " + " | ".join("—" if v is None else f"{v:.1%}" for v in vals)
                     + f" | {statistics.fmean(nums):.1%} |")
    for r in runs:
        for c, same in r.get("same_data", {}).items():
            lines.append(f"\nSeed {r['seed']}: {LABELS[c]} has exactly the rows of {LABELS[same]} (verified "
                         "synthesis rejected nothing and resampled nothing), so one student serves both.")
    lines += ["", "## Inversion: filter rates and trace quality", "",
              "| seed | first sample consistent | kept after verified synthesis | rejected | every step right (kept) "
              "| every step right (unfiltered) | ROUGE-L vs target traces | BLEU |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        inv = r["inversion"]
        n = inv["rows_in"]
        st = inv.get("toy_all_steps_correct", {})
        ov = inv.get("overlap_kept", {})
        lines.append(f"| {r['seed']} | {inv['first_sample']['consistent'] / n:.1%} | {inv['kept'] / n:.1%} | "
                     f"{inv['rejected']} | {st.get('kept', 0):.1%} | {st.get('unfiltered', 0):.1%} | "
                     f"{ov.get('rougeL', 0):.1f} | {ov.get('bleu', 0):.1f} |")
    lines += ["", "Inverted traces are in the surrogate's notation (the inverter learned from the surrogate), "
              "so overlap with the target's hidden notation is low even when every step is right.", "",
              "## Releases", ""]
    for r in runs:
        for stage, rel in r["releases"].items():
            lines.append(f"- seed {r['seed']} {stage}: `{rel['repo']}` @ {rel['version']}")
    lines += ["", f"Total time: {seconds / 60:.1f} min on this machine.", ""]
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = [c for c in CONDITIONS if any(c in r["accuracy"] for r in runs)]
    means = [100 * statistics.fmean([r["accuracy"][c] for r in runs if c in r["accuracy"]]) for c in conds]
    errs = [100 * (statistics.pstdev([r["accuracy"][c] for r in runs if c in r["accuracy"]]) if len(runs) > 1 else 0)
            for c in conds]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    colors = ["#9e9e9e", "#bdbdbd", "#f4a261", "#8ecae6", "#219ebc", "#2a9d8f"][: len(conds)]
    ax.bar([LABELS[c] for c in conds], means, yerr=errs, color=colors, capsize=4)
    for i, m in enumerate(means):
        ax.text(i, m + 1.5, f"{m:.0f}%", ha="center", fontsize=9)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 110)
    ax.set_title(f"Students trained on each condition (toy world, {len(runs)} seed(s))")
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(output: Optional[str] = None, seeds: int = 1, config_path: Optional[str] = None,
             overrides: Optional[dict] = None, size: Optional[dict] = None, inverter_backend: str = "vllm") -> str:
    from trace_inversion.io import write_json

    t0 = time.time()
    base = Path(output or "runs/demo")
    base.mkdir(parents=True, exist_ok=True)
    size = dict(DEMO, **(size or {}))
    # No SIGTERM handler here: distilabel's pool workers inherit it, and Pool.terminate
    # stops them with SIGTERM (a handler there hung a run). Ctrl-C stops the background
    # trainings (TrainQueue.close in a finally); they run in their own process groups.
    runs = [run_seed(s, base, config_path, overrides or {}, size, inverter_backend) for s in range(seeds)]
    seconds = time.time() - t0
    report = render_report(runs, size, seconds)
    (base / "report.md").write_text(report)
    plot(runs, base / "results.png")
    write_json({"size": size, "runs": runs, "seconds": round(seconds, 1)}, base / "stats.json")
    return report + f"\nWrote {base / 'report.md'}, {base / 'results.png'} and {base / 'stats.json'}."
