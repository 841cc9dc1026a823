"""The demo: the whole system end to end in the toy world, offline, on a CPU.

Per world seed: query the programmatic target; build the inverter's data from the
programmatic surrogate on the attacker's own problems (summaries by the attacker's
compressor, which differs from the target's summariser: ``run.DEMO_WORLD``); train a
tiny inverter with the tiny recipe (``trl sft``); invert the target's answers +
summaries twice with verified synthesis, once with answer consistency + the toy world's
exact step checker and once with answer consistency alone (its samples replay from the
request cache: the first run drew every one of them); publish local releases (git
repository, one tag per version); build the student conditions, row-matched (every
condition on the problems all of them have); train one tiny student per condition;
evaluate every student on held-out problems with the same matcher as the consistency
filter. The report gives accuracy per condition as mean and sd over seeds, a verdict
per claim of the paper as it fell (supported, not supported, within noise), the
step-correctness of every trace source and the filter counts: ``report.md``,
``results.png`` and ``stats.json``.

Resumable: model calls replay from the request cache, finished trainings are reused,
stage files are written atomically; run the same command again after Ctrl-C.

Trainings and evaluations run as background processes forked from one process that
imported torch, transformers and TRL once (``training.forkserver``; its log is
``fork-server.log``, and ``stats.json``'s ``fork_server`` counts the jobs forked and any
started as plain processes): the same runs, bit for bit, without ~5 s of imports each.

``run`` runs the seeds (and holds the ``demo`` command), ``scheduler`` the background
trainings and evaluations, ``report`` the report, the verdicts and the chart.
"""

from trace_inversion.pipelines.demo.report import (CLAIMS, DEMO_CONDITIONS, LABELS, claim_verdicts, plot, render_report,
                                                    same_data)
from trace_inversion.pipelines.demo.run import DEMO, DEMO_WORLD, add_parser, main, run_demo, run_seed
from trace_inversion.pipelines.demo.scheduler import TrainQueue

__all__ = ["CLAIMS", "DEMO", "DEMO_CONDITIONS", "DEMO_WORLD", "LABELS", "claim_verdicts", "TrainQueue", "add_parser",
           "main", "plot", "render_report", "run_demo", "run_seed",
           "same_data"]
