"""What a person sees: one line per stage, library logs in a file.

Each stage prints one line when it ends (``✓ query-target  3,000 rows · 2 failed ·
$0.41 · 12.3s``); while it runs, on a terminal, that line is a live progress bar
drawn by a small watcher process from the progress files the model steps write
(the steps run in distilabel's worker processes, which must not draw bars of their
own: several bars from several processes interleave). Library logs (distilabel, vLLM,
transformers, datasets) go to ``<output>/logs/<stage>.log``, whose path is printed;
warnings and errors still reach the console. ``--verbose`` (or
``TRACE_INVERSION_VERBOSE=1``) restores every library's own output.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

VERBOSE_ENV = "TRACE_INVERSION_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_libraries() -> None:
    """Before heavy imports: library progress bars off, library logs to the log file."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose():
        return
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # vLLM's own handler prints INFO to stdout; without it its records propagate to the
    # root logger, which distilabel forwards to the log file.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def log_path(out_dir: str | os.PathLike, stage: str) -> Path:
    p = Path(out_dir) / "logs" / f"{stage}.log"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def file_handler(path: Path) -> logging.Handler:
    h = logging.FileHandler(path, encoding="utf-8", delay=True)
    h.setLevel(logging.INFO)
    h.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)-8s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    return h


_PATCHED = False


def quiet_distilabel_console() -> None:
    """distilabel adds a console handler for every INFO record of every step; keep it
    for warnings and errors only (the full log goes to the stage's file)."""
    global _PATCHED
    if _PATCHED or verbose():
        return
    import distilabel.pipeline.base as base
    import distilabel.utils.logging as dl_logging
    from rich.logging import RichHandler

    original = dl_logging.setup_logging

    def setup_logging(*args, **kwargs):
        original(*args, **kwargs)
        listener = dl_logging.queue_listener
        for h in getattr(listener, "handlers", ()):
            if isinstance(h, RichHandler):
                h.setLevel(logging.WARNING)

    base.setup_logging = setup_logging
    _PATCHED = True


# ----------------------------------------------------------------------------- progress
def write_progress(progress_dir: Optional[str], step: str, label: str, done: int, total: Optional[int],
                   failed: int, cost: float) -> None:
    """Called by a model step after each batch (in its worker process)."""
    if not progress_dir:
        return
    d = Path(progress_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{step}.json.tmp"
    tmp.write_text(json.dumps({"label": label, "done": done, "total": total, "failed": failed, "cost": cost}))
    os.replace(tmp, d / f"{step}.json")


def _bar(frac: float, width: int = 20) -> str:
    n = int(round(max(0.0, min(1.0, frac)) * width))
    return "█" * n + "·" * (width - n)


def _elapsed(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def render_live(label: str, parts: list[dict], seconds: float) -> str:
    done = sum(p["done"] for p in parts)
    total = sum(p["total"] or 0 for p in parts)
    text = f"  {label:<22} "
    text += f"[{_bar(done / total if total else 0)}] " if total else ""
    text += " · ".join(f"{p['label']} {p['done']:,}/" + (f"{p['total']:,}" if p["total"] else "?")
                       for p in parts) or "starting"
    failed = sum(p["failed"] for p in parts)
    cost = sum(p["cost"] for p in parts)
    if failed:
        text += f" · {failed:,} failed"
    if cost:
        text += f" · ${cost:.4f}"
    return text + f" · {_elapsed(seconds)}"


def _watch(progress_dir: str, label: str) -> None:
    """The watcher process: redraw the stage's line on the terminal until stopped."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    parent, t0 = os.getppid(), time.monotonic()
    while not stop and os.getppid() == parent:
        parts = []
        for f in sorted(Path(progress_dir).glob("*.json")):
            try:
                parts.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                pass
        sys.stderr.write("\r\x1b[2K" + render_live(label, parts, time.monotonic() - t0)[:200])
        sys.stderr.flush()
        time.sleep(0.5)
    sys.stderr.write("\r\x1b[2K")
    sys.stderr.flush()


class StageView:
    """Around a running pipeline: a live line on a terminal (nothing elsewhere)."""

    def __init__(self, label: str, progress_dir: Path):
        self.label = label
        self.progress_dir = Path(progress_dir)
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "StageView":
        import shutil

        shutil.rmtree(self.progress_dir, ignore_errors=True)
        self.progress_dir.mkdir(parents=True, exist_ok=True)
        if not verbose() and sys.stderr.isatty():
            # a process, not a thread: distilabel forks this process (see distilabel_compat)
            self.proc = subprocess.Popen([sys.executable, "-m", "trace_inversion.console", str(self.progress_dir),
                                          self.label], stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


def stage_line(label: str, summary: str, seconds: float, log: Optional[Path] = None, reused: bool = False) -> str:
    mark = "✓"
    text = f"{mark} {label:<22} {summary}" + (" · reused (finished earlier, 0 calls)" if reused else
                                              f" · {_elapsed(seconds)}")
    if log is not None and not reused:
        text += f"  (log: {_rel(log)})"
    return text


def say(line: str) -> None:
    """A line for the person at the console (stderr: stdout carries JSON results)."""
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    _watch(sys.argv[1], sys.argv[2])
