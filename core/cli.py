"""The ``trace-inversion`` command: one subcommand per pipeline, plus tools.

Heavy imports happen inside the subcommands so ``--help`` and ``config validate``
answer instantly. Errors in configs or data are printed as a list of problems (each
naming the field or row and the fix) with exit status 2, before any model call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .config import RunConfig, load_config, parse_override
from .errors import UserError

EPILOG = """\
Pipelines run on a YAML config (default: the embedded toy world, offline, no key).
Override any field with --set, e.g. --set data.toy.n_train=200 --set output.dir=runs/x.
Start a config from `trace-inversion config show > my.yaml`."""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="run config YAML (default: embedded toy-world config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (dotted path), repeatable")
    p.add_argument("--output", "-o", help="output folder (same as --set output.dir=...)")
    p.add_argument("--ray", action="store_true", help="run on distilabel's Ray pipeline (same as --set runtime.ray=true)")
    p.add_argument("--retry-failed", action="store_true",
                   help="send fresh requests for the rows that failed on content (refusal, empty answer, "
                        "incomplete/length, empty summary); successes replay from the cache, never paid twice")
    _add_force(p)


def _add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="write into (or replace) an existing non-empty output folder this project did not create")


def _claim(path, args, inputs=(), empty: bool = False) -> Path:
    """The output folder ``path``, absolute, checked and claimed (see safe_paths)."""
    from .safe_paths import claim_dir

    return claim_dir(path, force=getattr(args, "force", False), inputs=inputs, empty=empty)


def _config_from(args) -> RunConfig:
    from .config import deep_merge

    overrides: dict = {}
    for item in args.overrides:
        overrides = deep_merge(overrides, parse_override(item))
    if getattr(args, "output", None):
        overrides = deep_merge(overrides, {"output": {"dir": args.output}})
    if getattr(args, "ray", False):
        overrides = deep_merge(overrides, {"runtime": {"ray": True}})
    if getattr(args, "retry_failed", False):
        overrides = deep_merge(overrides, {"runtime": {"retry_failed": True}})
    cfg = load_config(args.config, overrides or None)
    from .data import check_local_models

    # the local model folders this command runs exist, before any call (data.looks_like_local_path)
    check_local_models(cfg, STAGE_ROLES.get(getattr(args, "command", None), ()))
    return cfg


# The model roles each pipeline command runs (student-data adds the surrogate with --run-surrogate).
STAGE_ROLES = {"query-target": ("target",), "build-inverter-data": ("surrogate", "compressor"),
               "invert": ("inverter", "judge")}


def _console(args) -> None:
    """One line per stage on the console, library logs in the output folder's logs/."""
    import warnings

    from .console import VERBOSE_ENV, quiet_libraries

    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # inherited by distilabel's workers and background runs
    quiet_libraries()
    if not args.verbose:  # a library's own noise, not a warning about the user's run
        warnings.filterwarnings("ignore", message=".*attribute with value None was provided to the `Field")


def cmd_query_target(args) -> int:
    cfg = _config_from(args)
    _claim(cfg.output.dir, args)
    from .data import load_rows
    from trace_inversion.pipelines.query_target import run_query_target

    rows = load_rows(cfg.data, args.split)  # --split overrides data.split only when given
    if args.dry_run:
        from trace_inversion.pipelines.query_target import dry_run

        print(json.dumps(dry_run(cfg, rows, sample=args.sample), indent=2))
        return 0
    stats = run_query_target(cfg, rows, args.split or cfg.data.split)
    print(json.dumps(stats, indent=2))
    return 0


def cmd_build_inverter_data(args) -> int:
    cfg = _config_from(args)
    _claim(cfg.output.dir, args)
    from .data import load_rows
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data

    stats = run_build_inverter_data(cfg, load_rows(cfg.data, args.split))
    table = stats.pop("style_table")
    print(json.dumps(stats, indent=2))
    print("\nSummary style report:\n" + table)
    return 0


def cmd_invert(args) -> int:
    cfg = _config_from(args)
    _claim(cfg.output.dir, args)
    from trace_inversion.pipelines.invert import load_inversion_rows, run_invert

    stats = run_invert(cfg, load_inversion_rows(cfg))
    print(json.dumps(stats, indent=2))
    return 0


def cmd_train(args) -> int:
    from .training import list_recipes, run_sft

    if args.list:
        print("\n".join(list_recipes()))
        return 0
    if not (args.recipe and args.model and args.data and args.output):
        print("error: --recipe, --model, --data and --output are required (or --list)", file=sys.stderr)
        return 2
    from .safe_paths import check_disjoint

    local_inputs = [x for x in (args.model, args.data) if Path(x).exists()]
    check_disjoint(args.output, local_inputs, "train into")
    args.output = str(_claim(args.output, args))
    overrides = {"model_name_or_path": args.model, "dataset_name": args.data, "output_dir": args.output}
    if args.data_config:
        overrides["dataset_config"] = args.data_config
    if args.accelerate_config:  # "none" removes the recipe's default (see training.resolve_recipe)
        overrides["accelerate_config"] = args.accelerate_config
    if args.num_processes is not None:
        if args.num_processes < 1:
            print("error: --num-processes must be >= 1", file=sys.stderr)
            return 2
        overrides["num_processes"] = args.num_processes
    for item in args.overrides:
        k, _, v = item.partition("=")
        import yaml

        overrides[k.strip()] = yaml.safe_load(v)
    # the resolved recipe and the training log live inside the folder the user named
    run_dir = Path(args.output) / "trace-inversion-run"
    print(f"training: trl sft --config {run_dir / 'recipe.resolved.yaml'} (log: {run_dir / 'train.log'})",
          file=sys.stderr)
    try:
        res = run_sft(args.recipe, overrides, run_dir)
    except (FileNotFoundError, ValueError) as e:  # a recipe or accelerate config that cannot run
        print(f"error: {e}", file=sys.stderr)
        return 2
    losses = [l["loss"] for l in res["losses"] if "loss" in l]
    print(json.dumps({"output_dir": res["output_dir"], "seconds": res["seconds"], "logged_steps": len(losses),
                      "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None},
                     indent=2))
    return 0


def cmd_demo(args) -> int:
    from trace_inversion.pipelines.demo import DEMO, run_demo

    from .config import deep_merge

    overrides: dict = {}
    for item in args.overrides:
        overrides = deep_merge(overrides, parse_override(item))
    if args.retry_failed:
        overrides = deep_merge(overrides, {"runtime": {"retry_failed": True}})
    size = {}
    for item in args.size:
        k, _, v = item.partition("=")
        if k not in DEMO:
            print(f"error: --size {k}: unknown; fix: one of {sorted(DEMO)}", file=sys.stderr)
            return 2
        size[k] = int(v)
    output = args.output or "runs/demo"
    _claim(output, args)
    report = run_demo(output=output, seeds=args.seeds, config_path=args.config, overrides=overrides, size=size,
                      inverter_backend=args.inverter_backend)
    print(report)
    return 0


def cmd_student_data(args) -> int:
    cfg = _config_from(args)
    run_surrogate = args.run_surrogate or cfg.students.run_surrogate
    if run_surrogate:
        from trace_inversion.pipelines.common import require_models

        from .data import check_local_models

        if args.surrogate:
            raise UserError("--surrogate and --run-surrogate both name the surrogate traces; fix: give one")
        require_models(cfg, "surrogate")
        check_local_models(cfg, ("surrogate",))
    base = Path(cfg.output.dir)
    target = Path(args.target or base / "target_query")
    if not (target / "data" / "target").is_dir():
        raise UserError(f"{target} holds no query-target output (data/target); fix: run query-target first, "
                        "or pass --target FOLDER")
    inversion = Path(args.inversion) if args.inversion else base / "inversion"
    if not inversion.exists():
        if args.inversion:
            raise UserError(f"--inversion {inversion} does not exist; fix: run invert first, or check the path")
        inversion = None  # the conditions without inversion still build
    _claim(cfg.output.dir, args)
    from trace_inversion.pipelines.students import (DEFAULT_CONDITIONS, SURROGATE_STAGE, run_student_data,
                                                    run_surrogate_on_targets)

    if run_surrogate:  # the surrogate on the target's own problems: the surrogate_traces condition
        run_surrogate_on_targets(cfg, target)
        surrogate = base / SURROGATE_STAGE
    elif args.surrogate:
        surrogate = Path(args.surrogate)
    else:
        surrogate = base / SURROGATE_STAGE if (base / SURROGATE_STAGE / "data" / "traces").is_dir() else None
    stats = run_student_data(cfg, target, surrogate, inversion,
                             args.conditions.split(",") if args.conditions else DEFAULT_CONDITIONS)
    for c, why in (stats.get("empty") or {}).items():
        print(f"note: condition {c} is empty: {why}", file=sys.stderr)
    print(json.dumps(stats, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from .cache import RequestCache
    from .config import DataConfig, ModelConfig
    from .data import load_rows
    from .evaluation import evaluate_model
    from .io import write_json, write_split

    if args.benchmark == "toy":
        data = DataConfig(toy={"seed": args.toy_seed, "n_train": args.toy_n_train, "n_test": args.limit or 500,
                               "n_ops": args.toy_n_ops})
        rows = load_rows(data, "test")
        ref = "reference_answer"
    else:
        data = DataConfig(source=args.benchmark, split=args.split, subset=args.subset,
                          problem_column=args.problem_column, id_column=args.id_column, limit=args.limit)
        rows = load_rows(data, args.split)
        ref = args.answer_column
        missing = [r["id"] for r in rows if r.get(ref) in (None, "")]
        if missing:
            print(f"error: {len(missing)} rows lack {ref!r} (first: {missing[0]}); fix: set --answer-column",
                  file=sys.stderr)
            return 2
    sampling = {"temperature": args.temperature, "top_p": 1.0 if args.temperature == 0 else 0.95, "top_k": -1,
                "repetition_penalty": 1.0, "max_new_tokens": args.max_new_tokens}
    mcfg = ModelConfig(backend=args.backend, model=args.model, sampling=sampling)
    out = _claim(args.output, args)
    seeds = list(range(args.seeds)) if args.seeds > 1 else [None]
    summary, per_row = evaluate_model(mcfg, rows, RequestCache(out / "requests.sqlite"), seeds, reference_column=ref)
    write_split(out, "results", per_row)
    write_json(summary, out / "accuracy.json")
    print(json.dumps(summary, indent=2))
    return 0


def cmd_publish(args) -> int:
    from trace_inversion.hub_cards.publish import publish_hub, publish_local

    if bool(args.repo) == bool(args.hub):
        print("error: give exactly one of --repo (a local release repository) or --hub (owner/name)",
              file=sys.stderr)
        return 2
    if args.hub:
        rel = publish_hub(args.stage_folder, args.hub, args.version, args.message, private=not args.public,
                          token_env=args.token_env)
    else:
        rel = publish_local(args.stage_folder, args.repo, args.version, args.message)
    print(json.dumps(rel, indent=2))
    return 0


def cmd_review(args) -> int:
    from trace_inversion.hub_cards import review

    try:
        if args.action == "serve":
            from trace_inversion.argilla_stack import main as serve

            return serve([args.folder])
        client = review.client_from_env(args.api_url, args.key_env)
        if args.action == "push":
            out = review.push_for_review(args.folder, args.dataset, client, args.workspace, args.sample, args.seed,
                                         min_submitted=args.reviewers_per_record, suggestions=not args.blind)
        else:
            if not args.out:
                print("error: review pull needs --out (the reviewed release folder to write)", file=sys.stderr)
                return 2
            out = review.build_reviewed(args.folder, review.pull_reviews(args.dataset, client, args.workspace),
                                        args.out, force=args.force)
    except review.ReviewError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


def cmd_config(args) -> int:
    if args.action == "show":
        print(load_config(args.file).to_yaml() if args.file else Path(__file__).with_name("configs").joinpath(
            "default.yaml").read_text(), end="")
    elif args.action == "schema":
        print(json.dumps(RunConfig.model_json_schema(), indent=2))
    else:
        cfg = load_config(args.file)
        print(f"OK: {args.file or 'embedded default'} is a valid config (run {cfg.name!r})")
    return 0


def cmd_toy(args) -> int:
    from .io import write_parquet
    from .toy_world import ToyWorld, iter_rows

    w = ToyWorld(seed=args.seed, n_ops=args.n_ops)
    train, test = w.splits(args.n_train, args.n_test)
    out = _claim(args.output, args)
    write_parquet(list(iter_rows(train)), out / "train.parquet")
    write_parquet(list(iter_rows(test)), out / "test.parquet")
    print(f"wrote {len(train)} train and {len(test)} test problems to {out}")
    return 0


def cmd_tiny_model(args) -> int:
    from .tiny_models import build_tiny_lm

    path = build_tiny_lm(args.output, hidden_size=args.hidden_size, num_layers=args.layers,
                         num_heads=args.heads, vocab_size=args.vocab_size, seed=args.seed, force=args.force)
    print(f"tiny model saved to {path}")
    return 0


def cmd_cache(args) -> int:
    from .cache import RequestCache

    if not Path(args.path).exists():
        print(f"error: no cache at {args.path}", file=sys.stderr)
        return 2
    print(json.dumps(RequestCache(args.path).stats(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="trace-inversion",
        description="Recover reasoning traces hidden by a target model and train students on them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"trace-inversion {__version__}")
    ap.add_argument("--verbose", "-v", action="store_true",
                    help="show every library's logs and progress bars (default: one line per stage; library logs "
                         "go to <output>/logs/)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", title="pipelines and tools")
    sub.required = True

    p = sub.add_parser("demo", help="pipeline: the end-to-end toy-world run (offline, CPU, no key)",
                       description="Run every implemented stage on the embedded toy world and print a report.")
    _add_config_args(p)
    p.add_argument("--seeds", type=int, default=1, help="world seeds to run (default 1)")
    p.add_argument("--size", action="append", default=[], metavar="KEY=N",
                   help="override a demo size (n_train, n_test, n_ops, inverter_steps, student_steps, layers, "
                        "max_new_tokens), e.g. --size n_train=400 for a quick run")
    p.add_argument("--inverter-backend", choices=["vllm", "transformers"], default="vllm",
                   help="engine that runs the trained inverter (default vllm)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("query-target", help="pipeline: ask the target for answers and reasoning summaries",
                       description="Query the target model (toy, OpenAI Responses API or an OpenAI-compatible "
                                   "server) for each problem, through the request cache; a rerun pays nothing twice.")
    _add_config_args(p)
    p.add_argument("--split", help="input split (default: the config's data.split; toy: train or test)")
    p.add_argument("--dry-run", action="store_true",
                   help="estimate the cost before any call: the worst case the budget would reserve (input bound x "
                        "input price + output cap x output price per row) and, from responses already cached, the "
                        "expected cost; sends nothing")
    p.add_argument("--sample", action="store_true",
                   help="with --dry-run: first query query.dry_run_sample rows (paid once, replayed by the real run) "
                        "to measure the expected cost")
    p.set_defaults(func=cmd_query_target)

    p = sub.add_parser("build-inverter-data",
                       help="pipeline: surrogate traces + simulated summaries -> inverter SFT data",
                       description="Run the surrogate on the problems, compress its traces into summaries in the "
                                   "target's style (bubbles/recap/prompt file), and write the inverter's SFT data "
                                   "with and without summaries, plus a summary style report.")
    _add_config_args(p)
    p.add_argument("--split", help="input split (default: the config's data.split; toy: train, test or attacker)")
    p.set_defaults(func=cmd_build_inverter_data)

    p = sub.add_parser("invert", help="pipeline: write full traces from target answers + summaries, verified",
                       description="Run the inverter on a query-target output (or any dataset with problem / "
                                   "answer / summary columns); resample traces that do not reach the target's "
                                   "answer (verified synthesis); write inverted, unfiltered and rejected rows with "
                                   "reasons and overlap metrics.")
    _add_config_args(p)
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("train", help="pipeline: run a `trl sft` recipe (inverter or student) for real",
                       description="Resolve a recipe from recipes/ with a model, a dataset folder and an output "
                                   "folder, then run `trl sft --config` on it.")
    p.add_argument("--recipe", help="recipe path or packaged name (see --list), e.g. tiny/inverter.yaml")
    p.add_argument("--model", help="model folder or Hub id")
    p.add_argument("--data", help="dataset folder (a stage output) or Hub id")
    p.add_argument("--data-config", help="dataset config, e.g. with_summary / without_summary")
    p.add_argument("--output", "-o", help="output folder for the trained model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set max_steps=50")
    p.add_argument("--accelerate-config", metavar="PATH|NAME|none",
                   help="accelerate config for `accelerate launch` (a file, a packaged one such as "
                        "recipes/accelerate/deepspeed_zero3.yaml, or a TRL name such as zero3/fsdp2); default: the "
                        "recipe's accelerate_config (DeepSpeed ZeRO-3 for the 7-8B recipes); none: one process")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="processes (GPUs) to launch (default: the accelerate config's, 8 for ZeRO-3 recipes)")
    p.add_argument("--list", action="store_true", help="list packaged recipes")
    _add_force(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("student-data", help="pipeline: build the paper's student conditions from stage outputs",
                       description="Join target answers/summaries/traces, surrogate traces and inverted traces by "
                                   "row id and write one TRL conversational config per condition, plus "
                                   "<condition>_matched (the rows every non-empty condition shares).")
    _add_config_args(p)
    p.add_argument("--target", help="query-target folder (default <output.dir>/target_query)")
    p.add_argument("--surrogate", help="folder with a `traces` config of surrogate traces on the same problems "
                                       "(default <output.dir>/surrogate_on_targets when it exists)")
    p.add_argument("--run-surrogate", action="store_true",
                   help="first run models.surrogate on the target's problems (-> <output.dir>/surrogate_on_targets; "
                        "same as students.run_surrogate: true): the data of the surrogate_traces condition")
    p.add_argument("--inversion", help="invert folder (default <output.dir>/inversion)")
    p.add_argument("--conditions", help="comma-separated subset of conditions")
    p.set_defaults(func=cmd_student_data)

    p = sub.add_parser("evaluate", help="pipeline: evaluate a trained student on a benchmark",
                       description="Generate with a model (transformers or vLLM) on a benchmark (toy, a local file, "
                                   "or a Hub dataset id such as HuggingFaceH4/MATH-500), extract the final answer and "
                                   "score it with the consistency filter's matcher; several seeds give mean and spread.")
    p.add_argument("--model", required=True)
    p.add_argument("--benchmark", default="toy", help="toy | FILE | Hub id")
    p.add_argument("--split", default="test")
    p.add_argument("--subset", help="Hub dataset subset (config name), e.g. main for openai/gsm8k")
    p.add_argument("--problem-column", default="problem")
    p.add_argument("--answer-column", default="answer")
    p.add_argument("--id-column", default="unique_id")
    p.add_argument("--limit", type=int)
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seeds", type=int, default=1, help="sampling seeds (use with --temperature > 0)")
    p.add_argument("--toy-seed", type=int, default=0)
    p.add_argument("--toy-n-train", type=int, default=2000)
    p.add_argument("--toy-n-ops", type=int, default=6)
    p.add_argument("--output", "-o", required=True)
    _add_force(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("publish", help="tool: publish a stage folder as a versioned release (local git or the Hub)",
                       description="Publish a stage folder (data/ + README card) as one commit + one tag, in a local "
                                   "git release repository (--repo) or a Hub dataset repo (--hub; token from "
                                   "$HF_TOKEN, endpoint from $HF_ENDPOINT). Existing versions are refused; unchanged "
                                   "data returns the existing release.")
    p.add_argument("stage_folder")
    p.add_argument("--repo", help="local release repository folder (created if missing)")
    p.add_argument("--hub", metavar="OWNER/NAME", help="Hub dataset repo id")
    p.add_argument("--public", action="store_true", help="create the Hub repo public (default private)")
    p.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the Hub token")
    p.add_argument("--version", help="tag, e.g. v1 (default: next free)")
    p.add_argument("--message")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("review", help="tool: Argilla review round trip (push, pull -> reviewed release, serve)",
                       description="push: log an inversion output (or --sample N rows) to an Argilla dataset. "
                                   "pull: fetch submitted responses and write a reviewed release folder (rejected "
                                   "rows moved to review_rejected). serve: run a local Argilla stack in FOLDER. "
                                   "Server from $ARGILLA_API_URL (or --api-url), key from $ARGILLA_API_KEY.")
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
    _add_force(p)
    p.add_argument("--api-url", help="Argilla URL (default $ARGILLA_API_URL)")
    p.add_argument("--key-env", default="ARGILLA_API_KEY", help="environment variable holding the API key")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("config", help="tool: show, validate or print the schema of run configs",
                       description="Config tools. `show` prints the embedded default (or a file, normalised).")
    p.add_argument("action", choices=["show", "validate", "schema"])
    p.add_argument("file", nargs="?", help="config YAML (default: embedded)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("toy", help="tool: write toy-world problems to parquet",
                       description="Write deterministic toy-world train/test problems to OUTPUT/{train,test}.parquet.")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--n-ops", type=int, default=6)
    _add_force(p)
    p.set_defaults(func=cmd_toy)

    p = sub.add_parser("tiny-model", help="tool: build a tiny causal LM + tokenizer in code (offline)",
                       description="Build a randomly initialised tiny Llama with a locally trained BPE tokenizer "
                                   "and a ChatML template with generation markers.")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    _add_force(p)
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("cache", help="tool: statistics of a request cache file")
    p.add_argument("path")
    p.set_defaults(func=cmd_cache)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _console(args)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished requests are in the request cache; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
