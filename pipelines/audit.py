"""``trace-inversion audit``: how much a summary policy leaks, before it ships.

The defender's question (issue #17): run the attack pipeline once per summary policy
and report a leakage curve. Per policy (``audit_policies``: a name + config overrides),
in its own folder ``<audit>/policies/<name>/``:

1. ``query-target`` with the policy (the target's answers + the policy's summaries, and
   its true traces: the defender owns the model);
2. ``build-inverter-data`` on the attacker's own problems, with a compressor that
   simulates the policy (toy world: ``compressor_*`` null = follow the target's policy,
   the worst case for the defender: an attacker who knows the policy);
3. an inverter per policy: trained with ``trl sft`` (toy world: the tiny Llama of the
   demo, ``tiny/inverter.yaml``, ``--inverter-steps``; real use: ``--inverter-recipe``
   and ``--base-model``), or the config's ``models.inverter`` for every policy
   (``--no-train``);
4. ``invert`` with verified synthesis (the config's ``invert.verifiers``);
5. the metrics (``audit_report``): overlap of the inverted traces with the true traces
   (the paper's BLEU, token F1, ROUGE, exact match), step-correctness and the hidden
   values recovered (toy world), answer consistency, lengths;
6. optionally (``--students``, costly) an answer-only student and an inverted-trace
   student per policy, evaluated on held-out problems: the gain over answer-only.

The policy ``none`` (no summary, no answer) is the zero point: the surrogate's own
traces on the same problems, no inverter.

Outputs in ``<audit>/``: ``leakage.md`` (table, what each policy reveals, how to
repeat), ``leakage.png`` (the curve), ``stats.json`` (card-ready), the table on stdout.
Every model call goes through one request cache (``<audit>/requests.sqlite`` unless the
config names one), so policies that send the target identical requests (a real model
whose policies differ only in the summariser) pay for the target once. A rerun reuses
every finished stage (fingerprints), trained model (its data's fingerprint is stamped
beside it) and evaluation: nothing runs again. Like the demo, this process stays
torch-free: trainings, evaluations and the tiny base model run in subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional

from trace_inversion.config import ConfigError, RunConfig, deep_merge, load_config
from trace_inversion.pipelines import STAGES
from trace_inversion.pipelines.demo.report import batch_phrase
from trace_inversion.pipelines.demo.run import DEMO, DEMO_WORLD
from trace_inversion.pipelines.audit_policies import (ATTACK, PRIOR, Policy, load_policy_config, policy_problems,
                                                      resolve_policies, revealed_steps, toy_answer_only_fix)

DEFAULT_OUTPUT = "runs/audit"
# The demo's world at its calibrated size (benchmarks/demo_calibration.md), applied when
# no --config is given (a config file's own values are kept); --set wins over both. The
# attacker's compressor follows each policy (compressor_* null: it knows the policy, the
# defender's worst case); the surrogate is the demo's (misconceptions on any step).
TOY_DEFAULTS = {"data": {"toy": {"n_train": 3000, "n_test": 300, "n_ops": 5,
                                 **{k: v for k, v in DEMO_WORLD.items() if not k.startswith(("compressor_", "summary_"))}}},
                "invert": {"max_attempts": 4, "max_model_len": 512}}
TOY_SIZE = {"inverter_steps": 1000, "layers": 3, "max_new_tokens": 64, "target_rows": 1000,
            "student_steps": DEMO["student_steps"], "student_batch": DEMO["student_batch"],
            "eval_max_new_tokens": 64}
PRIOR_FOLDER = "surrogate_on_targets"


def _log(msg: str) -> None:
    print(f"[audit] {msg}", file=sys.stderr, flush=True)


@dataclass
class Options:
    """What the ``audit`` command was asked (see ``add_parser``)."""

    config: Optional[str] = None
    overrides: dict = field(default_factory=dict)
    output: str = DEFAULT_OUTPUT
    policies: Optional[str] = None
    policies_file: Optional[str] = None
    train: bool = True
    inverter_recipe: Optional[str] = None
    base_model: Optional[str] = None
    inverter_steps: Optional[int] = None
    inverter_backend: str = "vllm"
    layers: int = TOY_SIZE["layers"]
    max_new_tokens: int = TOY_SIZE["max_new_tokens"]
    target_rows: Optional[int] = None
    attacker_split: Optional[str] = None
    parallel: Optional[int] = None
    models_cache: Optional[str] = None
    students: bool = False
    student_recipe: Optional[str] = None
    student_base_model: Optional[str] = None
    student_steps: Optional[int] = None
    eval_benchmark: Optional[str] = None
    eval_answer_column: Optional[str] = None
    eval_split: str = "test"
    eval_backend: str = "transformers"
    eval_max_new_tokens: Optional[int] = None
    force: bool = False
    command: str = "trace-inversion audit"


@dataclass
class PolicyRun:
    """One policy's run: its folder, its config (the inverter a placeholder until it is
    trained), what it reveals, and what each step reported."""

    policy: Policy
    dir: Path
    over: dict
    cfg: RunConfig
    revealed: Optional[list[int]]
    stages: dict = field(default_factory=dict)  # stage -> stats
    train: Optional[dict] = None
    student: Optional[dict] = None


# ----------------------------------------------------------------------------- planning
def is_toy(opts: Options) -> bool:
    over_src = (opts.overrides.get("data") or {}).get("source")
    if over_src is not None:
        return over_src == "toy"
    return load_config(opts.config).data.source == "toy"


def base_overrides(opts: Options, toy: bool) -> dict:
    """The toy defaults (only without --config), then the user's --set."""
    return deep_merge(TOY_DEFAULTS if toy and not opts.config else {}, opts.overrides)


def size(opts: Options, toy: bool) -> dict:
    """The sizes of this audit: toy defaults where not given."""
    steps = opts.inverter_steps if opts.inverter_steps is not None else (TOY_SIZE["inverter_steps"] if toy else None)
    return {"inverter_steps": steps, "layers": opts.layers, "max_new_tokens": opts.max_new_tokens,
            "target_rows": opts.target_rows if opts.target_rows is not None else
            (None if opts.students or not toy else TOY_SIZE["target_rows"]),
            "student_steps": opts.student_steps if opts.student_steps is not None else
            (TOY_SIZE["student_steps"] if toy else None),
            "student_batch": TOY_SIZE["student_batch"] if toy else None,  # else the student recipe's
            "parallel": opts.parallel if opts.parallel is not None else (2 if toy else 1),
            "eval_max_new_tokens": opts.eval_max_new_tokens or (TOY_SIZE["eval_max_new_tokens"] if toy else 8192)}


def _slug(text: str) -> str:
    import re

    s = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:100].strip(".-_") or "audit"
    return s.replace("..", ".")


def policy_config_over(opts: Options, toy: bool, policy: Policy, audit_dir: Path, base_cfg: RunConfig) -> dict:
    """The overrides of one policy's run config: the base, the policy's own fields, then
    what the audit manages (folder, name, shared request cache, the inverter)."""
    over = deep_merge(base_overrides(opts, toy), policy.overrides)
    managed: dict = {"name": _slug(f"{base_cfg.name}-{policy.name}"),
                     "output": {"dir": str(audit_dir / "policies" / policy.name)}}
    if base_cfg.cache_path is None:  # one cache for the whole audit: identical requests are paid once
        managed["cache_path"] = str(audit_dir / "requests.sqlite")
    over = deep_merge(over, managed)
    if policy.kind == ATTACK and opts.train:
        inv = dict((over.get("models") or {}).get("inverter") or {})
        inv.update(backend=opts.inverter_backend,
                   model=str(audit_dir / "policies" / policy.name / "models" / "inverter"))
        if toy:
            inv["sampling"] = {"max_new_tokens": opts.max_new_tokens, "seed": base_cfg.seed}
        if opts.inverter_backend != "vllm":
            inv.pop("max_model_len", None)
            inv.pop("gpu_memory_utilization", None)
        over = deep_merge(over, {"models": {"inverter": None}})
        over["models"]["inverter"] = inv
    return over


def pre_config(opts: Options, over: dict, policy: Policy) -> RunConfig:
    """A policy's config before its inverter exists: the trained inverter's folder is a
    placeholder id (every other field is validated now, before any model call)."""
    if policy.kind == ATTACK and opts.train:
        over = json.loads(json.dumps(over))
        over["models"]["inverter"]["model"] = "audit-placeholder/inverter"
    return load_policy_config(opts.config, over, policy)


def plan(opts: Options) -> tuple[RunConfig, list[PolicyRun], dict]:
    """Every policy's config, validated, and the audit's sizes; every problem at once
    (a ``ConfigError`` naming the policy, the field and the fix) before any model call."""
    from trace_inversion.data.loading import check_local_models
    from trace_inversion.training.sft import recipe_path

    toy = is_toy(opts)
    base_cfg = load_config(opts.config, base_overrides(opts, toy) or None)
    policies = resolve_policies(opts.policies, opts.policies_file, toy)
    sz = size(opts, toy)
    audit_dir = Path(opts.output).expanduser().resolve()
    problems: list[str] = []
    runs: list[PolicyRun] = []
    for p in policies:
        try:
            over = policy_config_over(opts, toy, p, audit_dir, base_cfg)
            cfg = pre_config(opts, over, p)
            fixed = toy_answer_only_fix(over, cfg)
            if fixed is not over:
                over, cfg = fixed, pre_config(opts, fixed, p)
        except ConfigError as e:
            problems += e.problems
            continue
        problems += policy_problems(p, cfg, builds_data=opts.train)
        if p.kind == ATTACK and not opts.train:
            if cfg.models.inverter is None:
                problems.append(f"policy {p.name}: --no-train needs models.inverter in the config (the inverter used "
                                "for every policy); fix: add it, or drop --no-train to train one per policy")
            else:
                try:
                    check_local_models(cfg, ("inverter",))
                except ConfigError as e:
                    problems += [f"policy {p.name}: {x}" for x in e.problems]
        runs.append(PolicyRun(p, audit_dir / "policies" / p.name, over, cfg, revealed_steps(cfg, p)))
    if opts.train:
        recipe = opts.inverter_recipe or ("tiny/inverter.yaml" if toy else None)
        if recipe is None:
            problems.append("--inverter-recipe: needed to train an inverter per policy outside the toy world; fix: "
                            "e.g. --inverter-recipe inverter/qwen2.5-7b-instruct.yaml --base-model "
                            "Qwen/Qwen2.5-7B-Instruct, or --no-train to use models.inverter for every policy")
        else:
            try:
                recipe_path(recipe)
            except FileNotFoundError as e:
                problems.append(f"--inverter-recipe: {e}")
        if not toy and not opts.base_model:
            problems.append("--base-model: needed to train an inverter per policy outside the toy world; fix: e.g. "
                            "--base-model Qwen/Qwen2.5-7B-Instruct")
        if sz["inverter_steps"] is not None and sz["inverter_steps"] < 1:
            problems.append("--inverter-steps: must be >= 1")
    if opts.base_model and _is_path(opts.base_model) and not Path(opts.base_model).expanduser().exists():
        problems.append(f"--base-model: {opts.base_model} does not exist; fix: check the path or give a Hub id")
    if opts.students:
        if not toy:
            for flag, v in (("--student-recipe", opts.student_recipe),
                            ("--student-base-model", opts.student_base_model),
                            ("--eval-benchmark", opts.eval_benchmark),
                            ("--eval-answer-column", opts.eval_answer_column)):
                if not v:
                    problems.append(f"{flag}: needed with --students outside the toy world; fix: give it (see "
                                    "`trace-inversion audit --help`)")
        if opts.student_recipe:
            try:
                recipe_path(opts.student_recipe)
            except FileNotFoundError as e:
                problems.append(f"--student-recipe: {e}")
    if sz["target_rows"] is not None and sz["target_rows"] < 1:
        problems.append("--target-rows: must be >= 1")
    if sz["parallel"] < 1:
        problems.append("--parallel: must be >= 1")
    if problems:
        raise ConfigError(problems)
    return base_cfg, runs, dict(sz, toy=toy)


def _is_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") >= 2


# ----------------------------------------------------------------------------- training
def start_training(recipe: str, overrides: dict, run_dir: Path, env: Optional[dict], name: str, spawn=None):
    """``start_sft`` (which retrains when the recipe or its data changed), logged."""
    from trace_inversion.training.sft import start_sft

    run_dir.mkdir(parents=True, exist_ok=True)
    run = start_sft(recipe, overrides, run_dir, env=env, spawn=spawn)
    if not run.done():
        _log(f"train {name} (log: {run_dir / 'train.log'})")
    return run


def toy_base_model(cache: Path, seed: int, layers: int) -> str:
    """The demo's tiny Llama (content-addressed in ``cache``), built in a subprocess so
    this process stays torch-free (distilabel forks it)."""
    import subprocess

    code = ("import sys; from pathlib import Path; from trace_inversion.pipelines.demo.run import tiny_base_model; "
            f"print(tiny_base_model(Path({str(cache)!r}), {seed}, {layers}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"building the tiny base model failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- the run
def run_audit(opts: Options) -> dict:
    """Plan, run every policy, measure, write the outputs; returns the stats."""
    from trace_inversion.config.safe_paths import claim_dir
    from trace_inversion.data.loading import load_rows
    from trace_inversion.pipelines.audit_report import write_outputs
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
    from trace_inversion.pipelines.demo.scheduler import TrainQueue
    from trace_inversion.pipelines.invert import run_invert
    from trace_inversion.pipelines.query_target import run_query_target
    from trace_inversion.pipelines.student_data import run_surrogate_on_targets
    from trace_inversion.training.forkserver import ForkServer
    from trace_inversion.training.sft import TRAIN_THREADS_ENV

    t0 = time.time()
    base_cfg, runs, sz = plan(opts)
    toy = sz["toy"]
    if toy:  # everything the toy world runs is local (the demo's script sets the same)
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
            os.environ.setdefault(k, "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    audit_dir = claim_dir(opts.output, force=opts.force)
    if base_cfg.budget_usd is not None:
        _log(f"note: budget_usd {base_cfg.budget_usd} caps each policy's query-target stage (a stage opens its budget "
             f"afresh): at most {len([r for r in runs if r.policy.kind == ATTACK])} x that in all")
    split = "train" if toy else base_cfg.data.split
    target_rows = load_rows(base_cfg.data, split)
    if sz["target_rows"]:
        target_rows = target_rows[: sz["target_rows"]]
    attacks = [r for r in runs if r.policy.kind == ATTACK]
    priors = [r for r in runs if r.policy.kind == PRIOR]
    attacker_split = opts.attacker_split or ("attacker" if toy else base_cfg.data.split)
    attacker_rows = load_rows(base_cfg.data, attacker_split) if opts.train else None
    base_model = opts.base_model
    if opts.train and base_model is None:  # toy (plan checked)
        base_model = toy_base_model(Path(opts.models_cache or audit_dir / ".models"), base_cfg.data.toy.seed,
                                    sz["layers"])
    recipe = opts.inverter_recipe or "tiny/inverter.yaml"
    env = {TRAIN_THREADS_ENV: "1"} if toy and sz["parallel"] > 1 else None
    queue = TrainQueue(sz["parallel"])
    ready: list[PolicyRun] = []
    # In the toy world, trainings and evaluations are forked from one process that imported
    # torch, transformers and TRL once (as the demo's; ~5 s of a core saved per job).
    server = ForkServer.for_run(audit_dir) if toy else None
    spawn = server.spawn if server else None
    try:
        for r in attacks:
            _log(f"policy {r.policy.name}: {r.policy.description}")
            r.stages["query-target"] = run_query_target(r.cfg, target_rows)
            if not opts.train:
                ready.append(r)
                continue
            r.stages["build-inverter-data"] = run_build_inverter_data(r.cfg, attacker_rows)
            queue.add(f"inverter_{r.policy.name}", partial(_start_inverter, r, recipe, base_model, sz, env, spawn),
                      then=partial(_trained, r, ready))
        for r in priors:  # the zero point: the surrogate on the problems of the first attack's query
            _log(f"policy {r.policy.name}: {r.policy.description}")
            r.stages[PRIOR_FOLDER] = run_surrogate_on_targets(r.cfg, attacks[0].dir / STAGES["query-target"]["folder"],
                                                             PRIOR_FOLDER)
        while queue.busy() or ready:
            queue.pump()
            if not ready:
                time.sleep(0.5)
                continue
            r = ready.pop(0)
            cfg = load_policy_config(opts.config, r.over, r.policy)  # the trained inverter exists now
            _log(f"policy {r.policy.name}: invert ({cfg.models.inverter.backend})")
            # vLLM's CPU engine next to a training ran ~4x slower (demo): trainings pause meanwhile
            with queue.paused():
                r.stages["invert"] = run_invert(cfg)
            r.cfg = cfg
        if opts.students:
            run_students(opts, base_cfg, attacks, audit_dir, queue, sz, env, spawn)
    finally:
        queue.close()
        if server:
            server.close()
    stats = collect(opts, base_cfg, runs, sz, audit_dir, attacker_rows, target_rows, base_model, recipe,
                    time.time() - t0)
    if server:
        stats["audit"]["fork_server"] = server.summary()
        if note := server.fallback_note():
            _log(note)
    paths = write_outputs(stats, audit_dir)
    stats["outputs"] = {k: str(v) for k, v in paths.items()}
    return stats


def _start_inverter(r: PolicyRun, recipe: str, base_model: str, sz: dict, env: Optional[dict], spawn=None):
    data = r.dir / STAGES["build-inverter-data"]["folder"]
    over = {"model_name_or_path": base_model, "dataset_name": str(data),
            "dataset_config": "with_summary" if r.cfg.invert.with_summary else "without_summary",
            "output_dir": str(r.dir / "models" / "inverter"), "max_steps": sz["inverter_steps"], "seed": r.cfg.seed}
    return start_training(recipe, over, r.dir / "models" / "inverter.run", env,
                          f"the inverter of {r.policy.name} ({sz['inverter_steps'] or 'recipe'} steps, trl sft)", spawn)


def _trained(r: PolicyRun, ready: list, result: dict) -> None:
    losses = [x["loss"] for x in result.get("losses") or [] if "loss" in x]
    r.train = {"seconds": result.get("seconds"), "reused": bool(result.get("reused")),
               "final_loss": losses[-1] if losses else None, "log": result.get("log")}
    done = ("reused (trained earlier)" if r.train["reused"] else
            f"trained in {result.get('seconds', 0):.0f}s, loss {r.train['final_loss']}")
    _log(f"policy {r.policy.name}: inverter {done}")
    ready.append(r)


# ----------------------------------------------------------------------------- students (optional)
def run_students(opts: Options, base_cfg: RunConfig, attacks: list[PolicyRun], audit_dir: Path, queue, sz: dict,
                 env: Optional[dict], spawn=None) -> None:
    """Per policy an inverted-trace student and an answer-only student (one per distinct
    answer-only data: policies whose target answers are the same share it), each
    evaluated on held-out problems; ``r.student`` gets the accuracies and the gain."""
    from trace_inversion.data.io import read_split
    from trace_inversion.data.loading import load_rows
    from trace_inversion.pipelines.student_data import run_student_data
    from trace_inversion.toy.world import REFERENCE_COLUMN

    toy = sz["toy"]
    recipe = opts.student_recipe or "tiny/student.yaml"
    base = opts.student_base_model or (toy_base_model(Path(opts.models_cache or audit_dir / ".models"),
                                                      base_cfg.data.toy.seed, sz["layers"]) if toy else None)
    if toy:
        test = audit_dir / "eval" / "test.jsonl"
        test.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps({"id": r["id"], "problem": r["problem"], REFERENCE_COLUMN: r[REFERENCE_COLUMN]})
                       + "\n" for r in load_rows(base_cfg.data, "test"))
        if not test.exists() or test.read_text() != text:
            test.write_text(text)
        bench = {"benchmark": str(test), "answer_column": REFERENCE_COLUMN, "split": "test", "id_column": "id"}
    else:
        bench = {"benchmark": opts.eval_benchmark, "answer_column": opts.eval_answer_column, "split": opts.eval_split,
                 "id_column": None}
    # the students are asked in the user template they were trained with
    bench["user_template"] = base_cfg.students.user_template_file
    accuracy: dict[str, float] = {}
    reused: dict[str, bool] = {}  # training or evaluation -> reused (finished earlier)
    jobs: dict[str, tuple] = {}  # student name -> (folder, data dir, config)
    for r in attacks:
        folder = "student_data"
        sd = r.stages["student-data"] = run_student_data(r.cfg, r.dir / "target_query", None, r.dir / "inversion",
                                                         ["answer_only", "inverted_verified"], folder)
        matched = r.cfg.students.matched and "inverted_verified_matched" in (sd.get("matched") or {})
        ans, inv = ("answer_only_matched", "inverted_verified_matched") if matched else ("answer_only",
                                                                                          "inverted_verified")
        rows = read_split(r.dir / folder, ans)
        h = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]
        a_name = f"answer-only-{h}"
        jobs.setdefault(a_name, (audit_dir / "students" / a_name, r.dir / folder, ans))
        i_name = f"inverted-{r.policy.name}"
        if (sd.get("conditions") or {}).get("inverted_verified"):
            jobs[i_name] = (r.dir / "models" / "student-inverted", r.dir / folder, inv)
        r.student = {"answer_only_model": a_name, "inverted_model": i_name if i_name in jobs else None,
                     "rows": (sd.get("matched") or {}).get(inv) if matched else (sd.get("conditions") or {}).get(inv),
                     "matched": matched}
    for name, (model_dir, data_dir, conf) in jobs.items():
        over = {"model_name_or_path": base, "dataset_name": str(data_dir), "dataset_config": conf,
                "output_dir": str(model_dir), "max_steps": sz["student_steps"], "seed": base_cfg.seed}
        if sz.get("student_batch"):
            over["per_device_train_batch_size"] = sz["student_batch"]
        queue.add(f"student_{name}", partial(start_training, recipe, over, model_dir.parent / f"{model_dir.name}.run",
                                             env, f"student {name}", spawn),
                  then=partial(_queue_eval, queue, name, model_dir, bench, sz, accuracy, reused, spawn))
    queue.wait()
    for r in attacks:
        a, i = accuracy.get(r.student["answer_only_model"]), accuracy.get(r.student["inverted_model"] or "")
        names = [n for n in (r.student["answer_only_model"], r.student["inverted_model"]) if n]
        r.student.update(answer_only=a, inverted=i, gain=round(i - a, 2) if a is not None and i is not None else None,
                         reused=all(reused.get(f"{k}:{n}", False) for n in names for k in ("train", "eval")))


def _queue_eval(queue, name: str, model_dir: Path, bench: dict, sz: dict, accuracy: dict, reused: dict, spawn,
                trained: dict) -> None:
    reused[f"train:{name}"] = bool(trained.get("reused"))

    def record(res: dict) -> None:
        accuracy[name] = round(100 * res["accuracy_mean"], 2)
        reused[f"eval:{name}"] = bool(res.get("reused"))

    queue.add(f"eval_{name}", partial(_start_eval, name, model_dir, bench, sz, spawn), then=record, first=True)


def _start_eval(name: str, model_dir: Path, bench: dict, sz: dict, spawn=None):
    """``trace-inversion evaluate`` in a subprocess; reused when its model is unchanged."""
    from trace_inversion.config.safe_paths import claim_dir
    from trace_inversion.models.cache import model_signature
    from trace_inversion.training.sft import BackgroundRun, job_env

    out = claim_dir(model_dir.parent / f"{model_dir.name}.eval")
    signature = model_signature(str(model_dir))
    if bench.get("user_template"):  # a changed template is a new evaluation
        signature = {"model": signature, "user_template": Path(bench["user_template"]).read_text()}
    sig = json.dumps(signature)
    stamp, acc = out / "model.signature", out / "accuracy.json"
    if stamp.exists() and stamp.read_text() == sig and acc.exists():
        return BackgroundRun(finished=dict(json.loads(acc.read_text()), reused=True))
    acc.unlink(missing_ok=True)
    stamp.write_text(sig)
    cmd = [sys.executable, "-m", "trace_inversion.cli", "evaluate", "--model", str(model_dir),
           "--benchmark", bench["benchmark"], "--split", bench["split"], "--answer-column", bench["answer_column"],
           "--backend", "transformers" if sz["toy"] else "vllm", "--temperature", "0",
           "--max-new-tokens", str(sz["eval_max_new_tokens"]), "--output", str(out)]
    if bench.get("id_column"):
        cmd += ["--id-column", bench["id_column"]]
    if bench.get("user_template"):
        cmd += ["--user-template", bench["user_template"]]
    env = job_env({"OMP_NUM_THREADS": "1"}) if sz["toy"] and sz["parallel"] > 1 else None
    _log(f"evaluate {name}")
    return BackgroundRun(cmd, out / "eval.log", env, name=f"evaluate {name}",
                         finish=lambda log: json.loads(acc.read_text()), spawn=spawn)


# ----------------------------------------------------------------------------- results
def collect(opts: Options, base_cfg: RunConfig, runs: list[PolicyRun], sz: dict, audit_dir: Path,
            attacker_rows, target_rows, base_model, recipe: str, seconds: float) -> dict:
    """The stats dict: the audit's setting and one entry per policy (``audit_report``)."""
    from trace_inversion.pipelines.audit_report import attack_metrics, prior_metrics

    attacks = [r for r in runs if r.policy.kind == ATTACK]
    policies = []
    for r in runs:
        if r.policy.kind == PRIOR:
            m = prior_metrics(r.dir / PRIOR_FOLDER, attacks[0].dir / STAGES["query-target"]["folder"])
        else:
            m = attack_metrics(r.dir, r.revealed, r.cfg.invert.ground_truth_column or "target_trace")
        entry = {"name": r.policy.name, "kind": r.policy.kind, "description": r.policy.description,
                 "revealed_steps": r.revealed, "folder": str(r.dir), "overrides": r.policy.overrides, **m,
                 "stages_reused": {k: bool(v.get("reused")) for k, v in r.stages.items()}}
        if r.train is not None:
            entry["inverter_training"] = r.train
        if r.policy.kind == ATTACK:
            entry["inverter"] = {"backend": r.cfg.models.inverter.backend, "model": r.cfg.models.inverter.model}
        if r.student is not None:
            entry["student"] = r.student
        policies.append(entry)
    all_reused = all(all(p["stages_reused"].values()) for p in policies) and all(
        (p.get(k) or {"reused": True})["reused"] for p in policies for k in ("inverter_training", "student"))
    t = base_cfg.data.toy
    if sz["toy"]:
        world = f"toy world, {t.n_ops} operations mod {t.modulus}"
        setting = (f"Toy world: chained arithmetic mod {t.modulus}, {t.n_ops} operations, world seed {t.seed}; "
                   f"{len(target_rows)} audited target problems; the attacker's surrogate is {t.surrogate_errors}ally "
                   "weaker")
        if attacker_rows:
            setting += f" ({len(attacker_rows)} attacker problems train each inverter)"
        if opts.train:
            setting += (f"; per policy a tiny Llama inverter ({sz['layers']} layers) trained {sz['inverter_steps']} "
                        f"steps with `trl sft` ({recipe}) and run with {opts.inverter_backend}")
    else:
        tm = base_cfg.models.target
        world = f"{tm.model}" if tm else "audit"
        setting = (f"Target {tm.model if tm else '?'} ({tm.backend if tm else '?'}); {len(target_rows)} problems from "
                   f"{base_cfg.data.source}")
        setting += (f"; per policy an inverter trained from {base_model} with {recipe}" if opts.train else
                    "; the config's inverter for every policy")
    students = None
    if opts.students:
        students = (f"Costly: per policy a student trained on the inverted (verified) traces and one on the answers "
                    f"alone ({sz['student_steps'] or 'recipe'} steps"
                    f"{batch_phrase(sz, 'student_batch')} each, one "
                    "answer-only student shared by policies with the same answers; row-matched when "
                    "students.matched), evaluated on held-out problems; gain = inverted - answer-only, in points.")
    # the time the results took to compute: this run's, or when it reused everything, the earlier run's
    work = round(seconds, 1)
    if all_reused:
        try:
            work = json.loads((audit_dir / "stats.json").read_text())["audit"]["work_seconds"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return {"audit": {"setting": setting, "world": world, "command": opts.command, "seconds": round(seconds, 1),
                      "work_seconds": work,
                      "all_reused": all_reused, "trained_inverter": opts.train, "students": students,
                      "target_rows": len(target_rows), "attacker_rows": len(attacker_rows) if attacker_rows else None,
                      "size": sz, "base_model": base_model, "recipe": recipe if opts.train else None,
                      "policies": [r.policy.name for r in runs], "output_dir": str(audit_dir)},
            "policies": policies}


# ----------------------------------------------------------------------------- the command
def add_parser(subparsers) -> None:
    """The ``audit`` command."""
    import argparse

    from trace_inversion.cli_options import add_config_args

    p = subparsers.add_parser(
        "audit", help="pipeline: how much each summary policy leaks (the defender's leakage curve)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the attack pipeline once per summary policy (query the target with the policy, build the "
                    "attacker's data with a compressor simulating it, train an inverter, invert) and report how much "
                    "of the hidden traces the inverted ones recover: leakage.md, leakage.png, stats.json and a table.",
        epilog="Policies (toy world): none (zero point: no summary, no answer), answer-only, every-K (every K-th "
               "step's value), every-K+O (offset), every-K-is (phrasing). Default: none,answer-only,every-3,"
               "every-2,every-1.\nA real model's policies come from --policies-file:\n  policies:\n"
               "    - name: answer-only\n"
               "    - name: brief\n      description: two-sentence summaries\n      set: {inverter_data: {prompt_file: "
               "brief.txt}}\n`set` is merged into the run config for that policy.")
    add_config_args(p)
    p.add_argument("--policies", help="comma-separated policy names, in order of detail (default: toy world "
                                      "none,answer-only,every-3,every-2,every-1; else every policy of --policies-file)")
    p.add_argument("--policies-file", help="YAML file of policies: {policies: [{name, description, set}]}")
    p.add_argument("--plan", action="store_true", help="validate and print the plan; run nothing")
    p.add_argument("--no-train", dest="train", action="store_false",
                   help="use the config's models.inverter for every policy instead of training one per policy")
    p.add_argument("--inverter-recipe", help="recipe to train each policy's inverter (default toy: tiny/inverter.yaml)")
    p.add_argument("--base-model", help="model the inverters start from (default toy: the demo's tiny Llama)")
    p.add_argument("--inverter-steps", type=int,
                   help="training steps per inverter (toy default 1000; real: the recipe's)")
    p.add_argument("--inverter-backend", choices=["vllm", "transformers"], default="vllm",
                   help="engine that runs the trained inverters (default vllm)")
    p.add_argument("--layers", type=int, default=TOY_SIZE["layers"], help="toy: layers of the tiny base model")
    p.add_argument("--max-new-tokens", type=int, default=TOY_SIZE["max_new_tokens"],
                   help="toy: the trained inverter's generation cap")
    p.add_argument("--target-rows", type=int, help="audited target problems (toy default 1000 without --students, "
                                                   "else all)")
    p.add_argument("--attacker-split", help="split of the attacker's own problems for the inverter data (toy default "
                                            "attacker, disjoint from the audited ones; else data.split)")
    p.add_argument("--parallel", type=int, help="trainings at once (toy default 2, one thread each; else 1)")
    p.add_argument("--models-cache", help="folder of the tiny base model (default <output>/.models)")
    p.add_argument("--students", action="store_true",
                   help="costly: also train an answer-only and an inverted-trace student per policy and report the "
                        "gain")
    p.add_argument("--student-recipe", help="student recipe (default toy: tiny/student.yaml)")
    p.add_argument("--student-base-model", help="model the students start from (default toy: the tiny Llama)")
    p.add_argument("--student-steps", type=int,
                   help=f"training steps per student (toy default: the demo's, {TOY_SIZE['student_steps']})")
    p.add_argument("--eval-benchmark", help="students' held-out benchmark outside the toy world (file or Hub id)")
    p.add_argument("--eval-answer-column", help="its answer column")
    p.add_argument("--eval-split", default="test", help="its split (default test)")
    p.add_argument("--eval-max-new-tokens", type=int, help="students' generation cap (toy 64, else 8192)")
    p.set_defaults(func=main)


def options_from(args) -> Options:
    from trace_inversion.cli_options import parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.ray:
        overrides = deep_merge(overrides, {"runtime": {"ray": True}})
    if args.retry_failed:
        overrides = deep_merge(overrides, {"runtime": {"retry_failed": True}})
    fields = {k: getattr(args, k) for k in ("config", "policies", "policies_file", "train", "inverter_recipe",
                                            "base_model", "inverter_steps", "inverter_backend", "layers",
                                            "max_new_tokens", "target_rows", "attacker_split", "parallel",
                                            "models_cache", "students",
                                            "student_recipe", "student_base_model", "student_steps", "eval_benchmark",
                                            "eval_answer_column", "eval_split", "eval_max_new_tokens", "force")}
    return Options(overrides=overrides, output=args.output or DEFAULT_OUTPUT, command=repeat_command(args), **fields)


def repeat_command(args) -> str:
    """The command line that repeats this audit (what was given, not the defaults)."""
    parts = ["trace-inversion", "audit"]
    flags = [("config", "--config"), ("output", "--output"), ("policies", "--policies"),
             ("policies_file", "--policies-file"), ("inverter_recipe", "--inverter-recipe"),
             ("base_model", "--base-model"), ("inverter_steps", "--inverter-steps"), ("target_rows", "--target-rows"),
             ("attacker_split", "--attacker-split"), ("parallel", "--parallel"), ("models_cache", "--models-cache"),
             ("student_recipe", "--student-recipe"),
             ("student_base_model", "--student-base-model"), ("student_steps", "--student-steps"),
             ("eval_benchmark", "--eval-benchmark"), ("eval_answer_column", "--eval-answer-column"),
             ("eval_max_new_tokens", "--eval-max-new-tokens")]
    for attr, flag in flags:
        v = getattr(args, attr, None)
        if v is not None:
            parts += [flag, str(v)]
    for item in getattr(args, "overrides", []) or []:
        parts += ["--set", item]
    if getattr(args, "inverter_backend", "vllm") != "vllm":
        parts += ["--inverter-backend", args.inverter_backend]
    if getattr(args, "layers", TOY_SIZE["layers"]) != TOY_SIZE["layers"]:
        parts += ["--layers", str(args.layers)]
    if getattr(args, "max_new_tokens", TOY_SIZE["max_new_tokens"]) != TOY_SIZE["max_new_tokens"]:
        parts += ["--max-new-tokens", str(args.max_new_tokens)]
    if getattr(args, "eval_split", "test") != "test":
        parts += ["--eval-split", args.eval_split]
    for attr, flag in (("students", "--students"), ("ray", "--ray")):
        if getattr(args, attr, False):
            parts.append(flag)
    if not getattr(args, "train", True):
        parts.append("--no-train")
    return shlex.join(parts)


def describe_plan(runs: list[PolicyRun], sz: dict, opts: Options) -> str:
    lines = [f"audit -> {Path(opts.output).expanduser().resolve()}",
             f"sizes: {json.dumps({k: v for k, v in sz.items() if v is not None})}"]
    for r in runs:
        rev = "" if r.revealed is None else f" · reveals steps {r.revealed}"
        lines.append(f"- {r.policy.name} ({r.policy.kind}): {r.policy.description}{rev}")
    return "\n".join(lines)


def main(args) -> int:
    from trace_inversion.pipelines.audit_report import render_table

    opts = options_from(args)
    if args.plan:
        _, runs, sz = plan(opts)
        print(describe_plan(runs, sz, opts))
        return 0
    stats = run_audit(opts)
    print(render_table(stats))
    out = stats["outputs"]
    print(f"\nWrote {out['report']}, {out['plot']} and {out['stats']} "
          f"({stats['audit']['seconds'] / 60:.1f} min" + (", everything reused" if stats["audit"]["all_reused"] else "")
          + ").")
    return 0
