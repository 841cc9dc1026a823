"""Running ``trl sft`` recipes for real.

``run_sft(recipe, overrides, run_dir)`` resolves a recipe (a TRL-native YAML from
``recipes/``) with run-specific fields (model, dataset folder, output folder), writes
the resolved YAML next to the model for provenance, and runs ``trl sft --config`` in
a subprocess. The logged training losses are parsed from its output. A CPU recipe (one
process) starts the script ``trl sft`` launches directly, with the environment
``accelerate launch`` gives it (``cpu_launch_env``): the same training, bit for bit,
without the launcher's two Python start-ups.

Multi-GPU: a recipe (or ``trace-inversion train --accelerate-config``) names an
accelerate config with the key ``accelerate_config`` and may set ``num_processes``.
Neither is a TRL training argument: ``trl sft --config`` hands such keys to
``accelerate launch`` (``--accelerate_config`` becomes ``--config_file``), so the
resolved YAML alone reproduces the run (``trl sft --config recipe.resolved.yaml``).
The 7-8B recipes default to DeepSpeed ZeRO-3 (``recipes/accelerate/deepspeed_zero3.yaml``).

The environment is passed through as is: nothing forces offline mode, so a Hub model
id downloads (the demo and the tests set ``HF_HUB_OFFLINE=1`` themselves).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Optional

import yaml

from trace_inversion.errors import UserError
from trace_inversion.training.forkserver import popen_job

_LOG_LINE = re.compile(r"\{'loss': .*?\}")
# CPU threads of one `trl sft` process (default: every core); the demo runs two trainings
# at once with one thread each.
TRAIN_THREADS_ENV = "TRACE_INVERSION_TRAIN_THREADS"


def recipe_path(name: str) -> Path:
    """A recipe by path, or by name inside the package (e.g. ``tiny/inverter.yaml``)."""
    p = Path(name)
    if p.exists():
        return p
    packaged = Path(str(resources.files("trace_inversion.recipes"))) / name
    if packaged.exists():
        return packaged
    raise FileNotFoundError(f"recipe {name!r} not found; fix: give a path or one of {list_recipes()}")


def list_recipes() -> list[str]:
    root = Path(str(resources.files("trace_inversion.recipes")))
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml") if "accelerate" not in p.parts)


# `accelerate_config` and `num_processes` are not TRL training arguments: `trl sft` passes
# them to `accelerate launch`. These values of accelerate_config mean "no launcher config".
NO_ACCELERATE = ("", "none", "no", "off", "false")  # YAML reads no/off as false


def resolve_accelerate_config(value: str, recipe_file: Optional[Path] = None) -> str:
    """An accelerate config named by a recipe or ``--accelerate-config``, as an absolute
    path (or a config name shipped with TRL, e.g. ``zero3``, which ``trl sft`` resolves).

    Looked up in order: the path as given (relative to the working directory), relative
    to the recipe's folder, inside the packaged recipes (``recipes/accelerate/x.yaml`` or
    ``accelerate/x.yaml``), then TRL's own ``trl/accelerate_configs/<name>.yaml``."""
    p = Path(value).expanduser()
    candidates = [p]
    if not p.is_absolute():
        if recipe_file is not None:
            candidates.append(Path(recipe_file).parent / p)
        root = Path(str(resources.files("trace_inversion.recipes")))
        parts = p.parts[1:] if p.parts and p.parts[0] == "recipes" else p.parts
        candidates += [root.joinpath(*parts), root / "accelerate" / p.name, root / "accelerate" / f"{p.name}.yaml"]
    for c in candidates:
        if c.is_file():
            return str(c.resolve())
    try:
        shipped = resources.files("trl.accelerate_configs").joinpath(f"{value}.yaml")
        if shipped.is_file():
            return value
    except ModuleNotFoundError:
        pass
    raise FileNotFoundError(f"accelerate config {value!r} not found; fix: give a file path, a packaged config "
                            "(recipes/accelerate/deepspeed_zero3.yaml), a TRL name (zero3, fsdp2, multi_gpu) or none")


def resolve_recipe(recipe: str, overrides: dict, out_path: Path) -> dict:
    """The recipe with ``overrides`` applied (None values ignored), written to ``out_path``.

    ``accelerate_config`` is made absolute (see ``resolve_accelerate_config``); the
    value ``none`` removes a recipe's default, e.g. to train a 7B recipe in one process."""
    path = recipe_path(recipe)
    data = yaml.safe_load(path.read_text()) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    acc = data.get("accelerate_config")
    if acc is None or str(acc).strip().lower() in NO_ACCELERATE:
        data.pop("accelerate_config", None)
    else:
        data["accelerate_config"] = resolve_accelerate_config(str(acc), path)
    if data.get("num_processes") is not None:
        n = data["num_processes"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_processes must be a positive integer, got {n!r}; fix: e.g. --num-processes 8")
    missing = [k for k in ("model_name_or_path", "output_dir") if not data.get(k)]
    if not data.get("dataset_name") and not data.get("datasets"):
        missing.append("dataset_name")
    if missing:
        raise ValueError(f"recipe {recipe} lacks {missing}; fix: pass them as overrides")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def parse_losses(log: str) -> list[dict]:
    out = []
    for m in _LOG_LINE.finditer(log):
        try:
            d = ast.literal_eval(m.group(0))
        except (ValueError, SyntaxError):
            continue
        out.append({k: float(v) if isinstance(v, (int, float, str)) and _is_num(v) else v for k, v in d.items()})
    return out


def _is_num(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def trl_command() -> list[str]:
    exe = Path(sys.executable).parent / "trl"
    return [str(exe)] if exe.exists() else [shutil.which("trl") or "trl"]


def sft_script() -> Path:
    """TRL's ``scripts/sft.py``: the script ``trl sft`` hands to ``accelerate launch``.
    Found without importing TRL (the demo's process stays torch-free)."""
    import importlib.util

    spec = importlib.util.find_spec("trl")
    if spec is None or spec.origin is None:
        raise UserError("TRL is not installed; fix: pip install trl")
    return Path(spec.origin).parent / "scripts" / "sft.py"


def cpu_launch_env(env: dict, threads: int) -> dict:
    """``env`` as ``accelerate launch --num_processes 1 --num_cpu_threads_per_process N
    --mixed_precision no`` (what ``trl sft`` runs on one CPU process) passes it to the
    script: accelerate's simple launcher sets exactly these variables (a unit test
    compares them with what accelerate's own ``launch_command`` starts). A default
    accelerate config of the user's (``accelerate config``), which ``accelerate launch``
    would also read, does not apply to these one-process CPU runs."""
    return dict(env, ACCELERATE_USE_CPU="False",  # `trl sft` passes no --cpu: the recipe's use_cpu decides
                ACCELERATE_MIXED_PRECISION="no", ACCELERATE_DYNAMO_BACKEND="NO", ACCELERATE_DYNAMO_MODE="default",
                ACCELERATE_DYNAMO_USE_FULLGRAPH="False", ACCELERATE_DYNAMO_USE_DYNAMIC="False",
                ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION="False", OMP_NUM_THREADS=str(threads))


def job_env(extra: Optional[dict] = None) -> dict:
    """The environment a background job (a training, an evaluation) starts with: this
    process's, plus ``extra``, with tokenizers' parallelism and Hub telemetry off unless set."""
    env = dict(os.environ, **(extra or {}))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return env


class BackgroundRun:
    """A command run in the background, its output in a log file; ``result()`` waits for
    it and returns ``finish(log)`` plus ``seconds`` (raising if it failed). Built with
    ``finished=`` it is a run that was already done (reused from disk). ``spawn(cmd,
    log_file, env)`` starts the process (default ``popen_job``; a ``ForkServer``'s forks
    a pre-imported one)."""

    def __init__(self, cmd: Optional[list[str]] = None, log_path: Optional[Path] = None, env: Optional[dict] = None,
                 finish=None, finished: Optional[dict] = None, name: str = "command", spawn=None):
        self.log_path, self.name, self._finish, self._result = log_path, name, finish, finished
        self.proc, self._log_file = None, None
        self._t0 = time.time()
        if finished is None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(log_path, "w")
            self.proc = (spawn or popen_job)(cmd, self._log_file, env)

    def done(self) -> bool:
        return self._result is not None or self.proc.poll() is not None

    def result(self, timeout: Optional[float] = None) -> dict:
        if self._result is not None:
            return self._result
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._log_file.close()
        log = self.log_path.read_text()
        if rc != 0:
            raise RuntimeError(f"{self.name} failed ({rc}); last lines of {self.log_path}:\n{log[-3000:]}")
        # the log's last write is when the run ended (result() may be called later)
        seconds = round(max(0.0, self.log_path.stat().st_mtime - self._t0), 1)
        self._result = dict(self._finish(log) if self._finish else {}, seconds=seconds)
        return self._result

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the run's process group (SIGSTOP / SIGCONT pause and resume it)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.proc is not None:
            try:
                if self.proc.pid is not None:  # None: a forked job that never started
                    os.killpg(self.proc.pid, 9)  # the group outlives a launcher that has exited
            except ProcessLookupError:
                pass
            self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()


def accelerate_settings(data: dict) -> dict:
    """The accelerate config a resolved recipe launches with, as a dict ({} if none)."""
    acc = data.get("accelerate_config")
    if not acc:
        return {}
    p = Path(acc)
    if not p.is_file():
        p = Path(str(resources.files("trl.accelerate_configs").joinpath(f"{acc}.yaml")))
    return yaml.safe_load(p.read_text()) or {}


def check_launcher(data: dict) -> None:
    """Fail before launching when the accelerate config needs what is not installed."""
    import importlib.util

    settings = accelerate_settings(data)
    if settings.get("distributed_type") == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise UserError(f"accelerate config {data['accelerate_config']} uses DeepSpeed, which is not installed; "
                        "fix: pip install deepspeed (on the GPU node), or pass --accelerate-config none "
                        "(one process) or another config (e.g. fsdp2)")
    if settings and data.get("use_cpu"):
        raise UserError("the recipe sets use_cpu and an accelerate config; fix: --accelerate-config none for CPU runs")
    if data.get("use_cpu") and (data.get("num_processes") or 1) > 1:
        raise UserError(f"the recipe sets use_cpu and num_processes {data['num_processes']}: a CPU run is one process "
                        f"(its threads: {TRAIN_THREADS_ENV}); fix: leave out --num-processes for CPU runs")


DATA_STAMP = "data.fingerprint"


def data_fingerprint(recipe: dict) -> str:
    """What identifies a recipe's training data: for a local folder, the fingerprint of
    the finished stage that wrote it (its ``.complete.json`` marker; else every file's path,
    size and modification time), plus the config; a Hub id is its name (and revision)."""
    import hashlib
    import json

    from trace_inversion.pipelines.stage import MARKER

    name = str(recipe.get("dataset_name") or "")
    parts = [name, str(recipe.get("dataset_config") or ""), str(recipe.get("dataset_revision") or "")]
    folder = Path(name)
    if name and folder.exists():
        try:
            parts.append(json.loads((folder / MARKER).read_text())["fingerprint"])
        except (OSError, ValueError, KeyError):
            files = sorted(f for f in ([folder] if folder.is_file() else folder.rglob("*")) if f.is_file())
            parts += [f"{f.relative_to(folder) if f != folder else f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                      for f in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def start_sft(recipe: str, overrides: dict, run_dir: str | os.PathLike, env: Optional[dict] = None,
              spawn=None) -> BackgroundRun:
    """Start ``trl sft --config`` in the background (its output goes to ``train.log``;
    ``spawn``: see ``BackgroundRun``).

    A finished run (its output folder holds ``config.json``, the resolved recipe is
    unchanged and so is its data: ``data_fingerprint``) is not trained again, so a rerun
    of a pipeline resumes after it, and a pipeline whose data changed retrains.
    """
    run_dir = Path(run_dir)
    resolved = run_dir / "recipe.resolved.yaml"
    previous = resolved.read_text() if resolved.exists() else None
    data = resolve_recipe(recipe, overrides, resolved)
    out_dir = Path(data["output_dir"])
    log_path = run_dir / "train.log"
    stamp, fingerprint = run_dir / DATA_STAMP, data_fingerprint(data)
    same_data = stamp.exists() and stamp.read_text() == fingerprint
    if (out_dir / "config.json").exists() and previous == resolved.read_text() and log_path.exists() and same_data:
        return BackgroundRun(finished={
            "output_dir": str(out_dir), "losses": parse_losses(log_path.read_text()), "seconds": 0.0,
            "log": str(log_path), "reused": True})
    check_launcher(data)
    full_env = job_env(env)  # no forced offline mode: a Hub model id must download
    if data.get("use_cpu"):  # one process (check_launcher refuses an accelerate config or several on CPU)
        # What `trl sft` would start through `accelerate launch --num_processes 1
        # --num_cpu_threads_per_process N` (N threads, not accelerate's CPU default of 1):
        # TRL's sft script with `cpu_launch_env`, started directly, without the two launcher
        # processes' start-ups (~5 s of a tiny training's ~10 s start).
        threads = int(full_env.get(TRAIN_THREADS_ENV) or os.cpu_count() or 1)
        cmd, full_env = [sys.executable, str(sft_script()), "--config", str(resolved)], cpu_launch_env(full_env, threads)
    else:
        cmd = trl_command() + ["sft", "--config", str(resolved)]
    (out_dir / "config.json").unlink(missing_ok=True)  # a half-written model never looks finished
    stamp.write_text(fingerprint)
    return BackgroundRun(cmd, log_path, full_env,
                         finish=lambda log: {"output_dir": str(out_dir), "losses": parse_losses(log),
                                             "log": str(log_path), "reused": False}, name="trl sft", spawn=spawn)


def run_sft(recipe: str, overrides: dict, run_dir: str | os.PathLike, env: Optional[dict] = None,
            timeout: Optional[float] = None) -> dict:
    """Train with ``trl sft --config`` and wait; returns output_dir, losses, seconds, log
    path (see ``start_sft``, which also reuses a finished run)."""
    return start_sft(recipe, overrides, run_dir, env).result(timeout)


def add_parser(subparsers) -> None:
    """The ``train`` command."""
    from trace_inversion.cli_options import add_force

    p = subparsers.add_parser("train", help="pipeline: run a `trl sft` recipe (inverter or student) for real",
                              description="Resolve a recipe from recipes/ with a model, a dataset folder and an "
                                          "output folder, then run `trl sft --config` on it.")
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
    add_force(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.cli_options import claim, print_json
    from trace_inversion.config.safe_paths import check_disjoint

    if args.list:
        print("\n".join(list_recipes()))
        return 0
    if not (args.recipe and args.model and args.data and args.output):
        raise UserError("--recipe, --model, --data and --output are required (or --list)")
    local_inputs = [x for x in (args.model, args.data) if Path(x).exists()]
    check_disjoint(args.output, local_inputs, "train into")
    args.output = str(claim(args.output, args))
    overrides = {"model_name_or_path": args.model, "dataset_name": args.data, "output_dir": args.output}
    if args.data_config:
        overrides["dataset_config"] = args.data_config
    if args.accelerate_config:  # "none" removes the recipe's default (see resolve_recipe)
        overrides["accelerate_config"] = args.accelerate_config
    if args.num_processes is not None:
        if args.num_processes < 1:
            raise UserError("--num-processes must be >= 1")
        overrides["num_processes"] = args.num_processes
    for item in args.overrides:
        k, _, v = item.partition("=")
        overrides[k.strip()] = yaml.safe_load(v)
    # the resolved recipe and the training log live inside the folder the user named
    run_dir = Path(args.output) / "trace-inversion-run"
    print(f"training: trl sft --config {run_dir / 'recipe.resolved.yaml'} (log: {run_dir / 'train.log'})",
          file=sys.stderr)
    try:
        res = run_sft(args.recipe, overrides, run_dir)
    except (FileNotFoundError, ValueError) as e:  # a recipe or accelerate config that cannot run
        raise UserError(str(e)) from e
    losses = [entry["loss"] for entry in res["losses"] if "loss" in entry]
    print_json({"output_dir": res["output_dir"], "seconds": res["seconds"], "logged_steps": len(losses),
                "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None})
    return 0
