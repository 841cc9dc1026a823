"""The options the ``trace-inversion`` commands share, and what they resolve to.

Each command's module owns its parser (``add_parser(subparsers)``) and its ``main(args)``;
this module holds the pieces several of them use: the config options of the pipeline
commands (``--config``, ``--set``, ``--output``, ``--ray``, ``--retry-failed``, ``--force``),
the config they resolve to, the claimed output folder and the printed result. Light on
purpose: ``cli`` imports every command module to build ``--help``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trace_inversion.config import RunConfig, deep_merge, load_config, parse_override


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The options of every command that runs on a run config."""
    p.add_argument("--config", "-c", help="run config YAML (default: embedded toy-world config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (dotted path), repeatable")
    p.add_argument("--output", "-o", help="output folder (same as --set output.dir=...)")
    p.add_argument("--ray", action="store_true", help="run on distilabel's Ray pipeline (same as --set runtime.ray=true)")
    p.add_argument("--retry-failed", action="store_true",
                   help="send fresh requests for the rows that failed on content (refusal, empty answer, "
                        "incomplete/length, empty summary); successes replay from the cache, never paid twice")
    add_force(p)


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="write into (or replace) an existing non-empty output folder this project did not create")


def parse_overrides(items: list[str]) -> dict:
    """The config fields given as ``--set KEY=VALUE`` (dotted paths), merged in order."""
    overrides: dict = {}
    for item in items:
        overrides = deep_merge(overrides, parse_override(item))
    return overrides


def config_from(args, roles: tuple[str, ...] = ()) -> RunConfig:
    """The run config of a command with ``add_config_args``, checked; ``roles`` are the
    models the command runs, whose local folders must exist before any call
    (data.looks_like_local_path)."""
    from trace_inversion.data.loading import check_local_models

    overrides = parse_overrides(args.overrides)
    if args.output:
        overrides = deep_merge(overrides, {"output": {"dir": args.output}})
    if args.ray:
        overrides = deep_merge(overrides, {"runtime": {"ray": True}})
    if args.retry_failed:
        overrides = deep_merge(overrides, {"runtime": {"retry_failed": True}})
    cfg = load_config(args.config, overrides or None)
    check_local_models(cfg, roles)
    return cfg


def claim(path, args, inputs=(), empty: bool = False) -> Path:
    """The output folder ``path``, absolute, checked and claimed (see safe_paths)."""
    from trace_inversion.config.safe_paths import claim_dir

    return claim_dir(path, force=getattr(args, "force", False), inputs=inputs, empty=empty)


def print_json(obj) -> None:
    """A command's result on stdout, as indented JSON."""
    print(json.dumps(obj, indent=2))
