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

``run`` runs the seeds (and holds the ``demo`` command), ``scheduler`` the background
trainings and evaluations, ``report`` the report and chart.
"""

from trace_inversion.pipelines.demo.report import LABELS, plot, render_report, same_data
from trace_inversion.pipelines.demo.run import DEMO, add_parser, main, run_demo, run_seed
from trace_inversion.pipelines.demo.scheduler import TrainQueue

__all__ = ["DEMO", "LABELS", "TrainQueue", "add_parser", "main", "plot", "render_report", "run_demo", "run_seed",
           "same_data"]
