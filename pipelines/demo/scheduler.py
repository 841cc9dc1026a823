"""The demo's job scheduler: trainings and evaluations as background processes."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from typing import Optional


class TrainQueue:
    """Trainings run as background processes, at most ``slots`` at once, started in
    order. No threads: distilabel forks this process while trainings run, and a fork
    copies other threads' locks as held."""

    def __init__(self, slots: int, side_slots: int = 0):
        self.slots, self.side_slots = slots, side_slots
        self.pending: list[tuple] = []
        self.running: dict = {}
        self.side: set[str] = set()  # running jobs started in a side slot
        self.results: dict[str, dict] = {}

    @property
    def seconds(self) -> dict[str, float]:
        return {n: r["seconds"] for n, r in self.results.items()}

    def add(self, name: str, start, then=None, first: bool = False, side: bool = False) -> None:
        """Queue ``start()`` (returns a ``BackgroundRun``); ``then(result)`` runs when it
        has finished (it may queue more). ``first`` puts it ahead of queued jobs. A
        ``side`` job (a short one) may also start in one of the ``side_slots``, beside
        the ``slots`` jobs, so that it does not hold a slot the long jobs wait for."""
        self.pending.insert(0 if first else len(self.pending), (name, start, then, side))
        self.pump()

    def pump(self) -> None:
        """Collect finished runs (raising if one failed), then start queued ones."""
        finished = [(name, run, then) for name, (run, then) in self.running.items() if run.done()]
        for name, run, then in finished:
            del self.running[name]
            self.side.discard(name)
            self.results[name] = run.result()
        for name, run, then in finished:
            if then is not None:  # may queue more and pump again
                then(self.results[name])
        while (i := self._next()) is not None:
            name, start, then, side = self.pending.pop(i)
            if side and len(self.side) < self.side_slots:
                self.side.add(name)
            self.running[name] = (start(), then)

    def _next(self) -> Optional[int]:
        """The first queued job that can start now: a side job in a free side slot, any
        job in a free slot."""
        slot_free = len(self.running) - len(self.side) < self.slots
        side_free = len(self.side) < self.side_slots
        return next((i for i, job in enumerate(self.pending) if slot_free or (job[3] and side_free)), None)

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
        self.side.clear()
        self.pending.clear()
