"""Running ``trl sft`` recipes for real.

``run_sft(recipe, overrides, run_dir)`` resolves a recipe (a TRL-native YAML from
``recipes/``) with run-specific fields (model, dataset folder, output folder), writes
the resolved YAML next to the model for provenance, and runs ``trl sft --config`` in
a subprocess. The logged training losses are parsed from its output.
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

_LOG_LINE = re.compile(r"\{'loss': .*?\}")


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


def resolve_recipe(recipe: str, overrides: dict, out_path: Path) -> dict:
    data = yaml.safe_load(recipe_path(recipe).read_text()) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
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


def run_sft(recipe: str, overrides: dict, run_dir: str | os.PathLike, env: Optional[dict] = None,
            timeout: Optional[float] = None) -> dict:
    """Train with ``trl sft --config``; returns output_dir, losses, seconds, log path.

    A finished run (its output folder holds ``config.json`` and the resolved recipe is
    unchanged) is not trained again, so a rerun of a pipeline resumes after it.
    """
    run_dir = Path(run_dir)
    resolved = run_dir / "recipe.resolved.yaml"
    previous = resolved.read_text() if resolved.exists() else None
    data = resolve_recipe(recipe, overrides, resolved)
    out_dir = Path(data["output_dir"])
    log_path = run_dir / "train.log"
    done = out_dir / "config.json"
    if done.exists() and previous == resolved.read_text() and log_path.exists():
        log = log_path.read_text()
        return {"output_dir": str(out_dir), "losses": parse_losses(log), "seconds": 0.0, "log": str(log_path),
                "reused": True}
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("HF_HUB_OFFLINE", "1")
    full_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    full_env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    t0 = time.time()
    launch: list[str] = []
    if data.get("use_cpu"):
        # `trl sft` runs through `accelerate launch`, which on CPU would otherwise pick
        # 1 thread, or with OMP_NUM_THREADS set, several DDP processes of 1 thread each.
        threads = int(full_env.get("TRACE_INVERSION_TRAIN_THREADS") or os.cpu_count() or 1)
        launch = ["--num_processes", "1", "--num_cpu_threads_per_process", str(threads),
                  "--mixed_precision", "no"]
    proc = subprocess.run(trl_command() + ["sft", "--config", str(resolved)] + launch, capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    log = proc.stdout + proc.stderr
    log_path.write_text(log)
    if proc.returncode != 0:
        raise RuntimeError(f"trl sft failed ({proc.returncode}); last lines of {log_path}:\n{log[-3000:]}")
    return {"output_dir": str(out_dir), "losses": parse_losses(log), "seconds": round(time.time() - t0, 1),
            "log": str(log_path), "reused": False}
