"""The demo's job scheduler: trainings and evaluations as background processes."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager


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

    def busy(self, names: tuple[str, ...] = ()) -> bool:
        """Whether ``names`` (default: anything queued) have yet to finish."""
        if names:
            return any(n not in self.results for n in names)
        return bool(self.pending or self.running)

    def wait(self, *names: str) -> None:
        """Until ``names`` (default: everything queued) have finished."""
        while self.busy(names):
            self.pump()
            if self.busy(names):
                time.sleep(0.5)

    @contextmanager
    def paused(self):
        """Stop running jobs for the duration (SIGSTOP their process groups), then resume."""
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
