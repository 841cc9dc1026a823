"""The ``trace-inversion`` command: one subcommand per pipeline, plus tools.

Each command lives beside the code it runs: its module has ``add_parser(subparsers)``
and ``main(args)``; this module only assembles them, applies the shared options and
turns a ``UserError`` into its message. Heavy imports happen inside the commands'
``main`` so ``--help`` and ``config validate`` answer instantly. Errors in configs or
data are printed as a list of problems (each naming the field or row and the fix) with
exit status 2, before any model call.
"""

from __future__ import annotations

import argparse
import os
import sys

from trace_inversion import __version__
from trace_inversion.toy import tiny_models
from trace_inversion.toy import world as toy_world
from trace_inversion.training import evaluation
from trace_inversion.training import sft as training
from trace_inversion import config
from trace_inversion.models import cache
from trace_inversion.errors import UserError
from trace_inversion.hub_cards import publish, review
from trace_inversion.pipelines import audit, build_inverter_data, demo, invert, query_target, student_data

EPILOG = """\
Pipelines run on a YAML config (default: the embedded toy world, offline, no key).
Override any field with --set, e.g. --set data.toy.n_train=200 --set output.dir=runs/x.
Start a config from `trace-inversion config show > my.yaml`."""


# The commands in --help order: each adds its subparser, with ``func`` its main.
COMMANDS = (demo.add_parser, query_target.add_parser, build_inverter_data.add_parser, invert.add_parser,
            training.add_parser, student_data.add_parser, evaluation.add_parser, audit.add_parser, publish.add_parser,
            review.add_parser, config.add_parser, toy_world.add_parser, tiny_models.add_parser, cache.add_parser)


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
    for add_parser in COMMANDS:
        add_parser(sub)
    return ap


def _console(args) -> None:
    """One line per stage on the console, library logs in the output folder's logs/."""
    import warnings

    from trace_inversion.console import VERBOSE_ENV, quiet_libraries

    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # inherited by distilabel's workers and background runs
    quiet_libraries()
    if not args.verbose:  # a library's own noise, not a warning about the user's run
        warnings.filterwarnings("ignore", message=".*attribute with value None was provided to the `Field")


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
