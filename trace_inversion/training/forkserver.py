"""Python jobs forked from one pre-imported process: torch, transformers and TRL imported
once instead of once per job.

A tiny CPU training or a student's evaluation spends ~5 s of a core importing its
libraries before its first step; the demo starts 13-15 of them a seed while both cores
train. ``ForkServer`` starts one process that imports them (``PRELOAD``) and then forks a
child per job: the child is what ``python script.py args`` / ``python -m module args``
would have been (its own session and process group, its output in the job's log, the
job's environment, working directory, ``sys.argv`` and thread count), minus the imports.

What keeps a forked job the same as a fresh process:
- The server runs nothing multi-threaded (it only imports), so a child's OpenMP pool is
  created in the child; the child sets torch's threads from the job's ``OMP_NUM_THREADS``.
- A job's environment may differ from the server's only in variables read when a job
  runs, not when a module is imported (``RUNTIME_VARS``: threads, accelerate's launch
  variables). Any other difference (say ``HF_HUB_OFFLINE``, which huggingface_hub reads
  at import) and the job is started as a plain process instead (``fallbacks`` says why);
  so is anything that is not ``python <script>`` or ``python -m <module>``.
- Python's and numpy's global random state are reseeded in the child (a fresh process
  seeds them from the OS); torch's generator is untouched in the server, so it starts at
  torch's default as in a fresh process. A training seeds all three itself.
A test trains the same tiny recipe both ways and compares the model files byte for byte.

Protocol (JSON lines): the client writes ``{"id", "argv", "env", "cwd", "log"}`` to the
server's stdin; the server answers ``{"id", "pid"}`` when it has forked and ``{"id",
"rc"}`` when the child has exited (``rc`` as ``subprocess`` reports it: negative for a
signal). When its stdin closes (the client closed it, or the client died) the server kills
its children's process groups and exits: no job outlives the run that started it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

# What the demo's trainings (TRL's sft script) and evaluations (`trace-inversion evaluate
# --backend transformers`) import; TRL and transformers import lazily, so their names are
# touched too (``_preload``).
PRELOAD = ("torch", "numpy", "datasets", "accelerate", "accelerate.logging", "transformers", "trl", "trl.scripts.sft",
           "trl.scripts._hf_argparser", "trl.trainer.sft_trainer", "trl.trainer.base_trainer", "trl.chat_template_utils",
           "transformers.trainer", "transformers.modelcard", "transformers.data.data_collator",
           "transformers.conversion_mapping", "transformers.integrations.flash_attention",
           "transformers.loss.loss_utils", "transformers.image_processing_utils",
           "transformers.models.auto.image_processing_auto", "transformers.models.auto.tokenization_auto",
           "transformers.models.llama.modeling_llama", "transformers.generation.utils",
           "trace_inversion.cli", "trace_inversion.models.transformers", "trace_inversion.training.evaluation")
_PRELOAD_NAMES = {"trl": ("SFTTrainer", "SFTConfig", "TrlParser", "ModelConfig", "ScriptArguments",
                          "DatasetMixtureConfig", "get_dataset", "get_peft_config", "get_quantization_config"),
                  "transformers": ("AutoModelForCausalLM", "AutoTokenizer", "LlamaForCausalLM", "Trainer",
                                   "GenerationConfig", "LogitsProcessorList")}
# Environment variables a job may set differently from the server: read when the job
# runs (threads; accelerate's launch settings, read by its state objects; torch
# inductor's cache folder, read when it compiles), not at import; or read only by vLLM,
# which the server does not import (a test checks it stays so). Two are set by libraries
# in the demo's own process after the server starts: TORCHINDUCTOR_CACHE_DIR (by vLLM /
# inductor when it compiles) and _RJEM_MALLOC_CONF (by polars at import: its allocator's
# settings, which polars sets to the same defaults in the server when it imports there).
RUNTIME_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "TRACE_INVERSION_TRAIN_THREADS",
                "TORCHINDUCTOR_CACHE_DIR", "_RJEM_MALLOC_CONF")
RUNTIME_PREFIXES = ("ACCELERATE_", "VLLM_")
SERVER_MODULE = "trace_inversion.training.forkserver"


def _runtime_var(key: str) -> bool:
    return key in RUNTIME_VARS or key.startswith(RUNTIME_PREFIXES)


def env_difference(server_env: dict, job_env: dict) -> list[str]:
    """Variables that differ between the server's and a job's environment and that a
    module may read at import (a job with any of them cannot be forked)."""
    keys = set(server_env) | set(job_env)
    return sorted(k for k in keys if server_env.get(k) != job_env.get(k) and not _runtime_var(k))


def python_entry(cmd: list[str]) -> Optional[tuple[str, str, list[str]]]:
    """``("script", path, args)`` for ``python path args``, ``("module", name, args)`` for
    ``python -m name args`` run by this interpreter; None for anything else."""
    if len(cmd) < 2 or os.path.abspath(cmd[0]) != os.path.abspath(sys.executable):
        return None
    if cmd[1] == "-m" and len(cmd) > 2:
        return "module", cmd[2], cmd[3:]
    if cmd[1].startswith("-"):
        return None
    return "script", cmd[1], cmd[2:]


def popen_job(cmd: list[str], log_file, env: Optional[dict]) -> subprocess.Popen:
    """``cmd`` as a plain background process, its output in ``log_file``, in its own
    process group (a kill reaches what it starts: accelerate launches trl)."""
    return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)


# ---------------------------------------------------------------- the server process

def _preload(modules: Sequence[str]) -> None:
    import importlib
    import warnings

    # import-time warnings are not shown (here nor in the jobs' logs, as they would be in a
    # fresh process's): the libraries' deprecation notices, not the run's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            importlib.import_module(name)
            for n in _PRELOAD_NAMES.get(name, ()):
                getattr(sys.modules[name], n)


def _child(job: dict) -> None:
    """In the forked child: become the job, run it, exit with its status (never returns)."""
    code = 1
    try:
        os.setsid()  # its own process group, as the client's killpg expects
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(job["env"])
        os.chdir(job["cwd"])
        import random

        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(job["env"]["OMP_NUM_THREADS"]))
        import runpy

        kind, target, args = python_entry(job["argv"])
        sys.argv = [target] + args  # run_module sets argv[0] to the module's file
        if kind == "module":
            sys.path[0] = os.getcwd()
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = os.path.dirname(os.path.abspath(target))
            runpy.run_path(target, run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()  # what interpreter shutdown runs (logging, tqdm, ...)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def _reply(msg: dict) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()  # before any fork: a child must not inherit unwritten replies


def _kill_groups(pids) -> None:
    for pid in pids:
        try:
            os.killpg(pid, 9)
        except ProcessLookupError:
            pass


def serve(modules: Sequence[str] = PRELOAD) -> None:
    _preload(modules)
    children: dict[int, int] = {}  # pid -> job id
    buf = b""
    open_ = True
    while open_ or children:
        if open_:
            ready, _, _ = select.select([0], [], [], 0.2)
            if ready:
                data = os.read(0, 1 << 16)
                if not data:  # the client is gone: its jobs go too
                    open_ = False
                    _kill_groups(children)
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    job = json.loads(line)
                    if job.get("close"):  # the client is done: stop what still runs, then exit
                        open_ = False
                        _kill_groups(children)
                        break
                    pid = os.fork()
                    if pid == 0:
                        _child(job)
                    children[pid] = job["id"]
                    _reply({"id": job["id"], "pid": pid})
        else:
            time.sleep(0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            _reply({"id": children.pop(pid), "rc": os.waitstatus_to_exitcode(status)})


# ---------------------------------------------------------------- the client side

class ForkedProcess:
    """A job the server forked, with the part of ``subprocess.Popen``'s interface that
    ``BackgroundRun`` uses: ``pid``, ``poll()``, ``wait(timeout)``."""

    def __init__(self, server: "ForkServer", job_id: int, argv: list[str]):
        self.server, self.id, self.args = server, job_id, argv

    @property
    def pid(self) -> Optional[int]:
        """The child's pid (waits for the server to fork it); None if it never started."""
        while True:
            state = self.server._poll(self.id)
            if "pid" in state or "rc" in state:
                return state.get("pid")
            time.sleep(0.05)

    def poll(self) -> Optional[int]:
        return self.server._poll(self.id).get("rc")

    def wait(self, timeout: Optional[float] = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while (rc := self.poll()) is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.1)
        return rc


class ForkServer:
    """One pre-imported process that forks jobs (see the module doc). Started on the first
    ``spawn``; ``close()`` (or leaving a ``with`` block) stops it. ``spawn(cmd, log_file,
    env)`` returns a ``ForkedProcess``, or a ``subprocess.Popen`` for a job it cannot fork
    (recorded in ``fallbacks``)."""

    def __init__(self, env: dict, log_path: Path, preload: Sequence[str] = PRELOAD):
        self.env, self.log_path, self.preload = dict(env), Path(log_path), tuple(preload)
        self.proc: Optional[subprocess.Popen] = None
        self.states: dict[int, dict] = {}
        self.fallbacks: list[str] = []
        self.forked = 0
        self._buf = b""
        self._next_id = 0

    @classmethod
    def for_run(cls, folder: Path) -> "ForkServer":
        """The server of a run's jobs (the demo's, a toy audit's): the environment its
        jobs start with (``sft.job_env``) at one thread, its log ``folder/fork-server.log``."""
        from trace_inversion.training.sft import job_env

        return cls(job_env({"OMP_NUM_THREADS": "1"}), Path(folder) / "fork-server.log")

    def summary(self) -> dict:
        """For a run's stats: jobs forked, and why any started as plain processes."""
        return {"forked": self.forked, "plain": list(self.fallbacks)}

    def fallback_note(self) -> Optional[str]:
        """One line for the console when jobs started as plain processes, else None."""
        if not self.fallbacks:
            return None
        return f"{len(self.fallbacks)} job(s) started as plain processes: " + "; ".join(self.fallbacks[:3])

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", SERVER_MODULE, ",".join(self.preload)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, env=self.env, start_new_session=True)
        os.set_blocking(self.proc.stdout.fileno(), False)

    def spawn(self, cmd: list[str], log_file, env: Optional[dict]):
        env = dict(os.environ if env is None else env)
        why = None
        if python_entry(cmd) is None:
            why = "not a python script or module"
        elif diff := env_difference(self.env, env):
            why = f"environment differs from the server's in {diff}"
        elif not env.get("OMP_NUM_THREADS"):
            why = "OMP_NUM_THREADS not set (a fresh process would pick its thread count itself)"
        elif self.proc is not None and self.proc.poll() is not None:
            why = f"the fork server exited ({self.proc.returncode}); see {self.log_path}"
        if why:
            self.fallbacks.append(f"{cmd[:3]}: {why}")
            return popen_job(cmd, log_file, env)
        if self.proc is None:
            self._start()
        self._next_id += 1
        job = {"id": self._next_id, "argv": list(cmd), "env": env, "cwd": os.getcwd(),
               "log": os.path.abspath(log_file.name)}
        self.states[job["id"]] = {"log": job["log"]}
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        self.forked += 1
        return ForkedProcess(self, job["id"], list(cmd))

    def _poll(self, job_id: int) -> dict:
        """Read the server's answers so far; ``job_id``'s state."""
        if self.proc is not None:
            self._read()
        return self.states[job_id]

    def _read(self) -> None:
        eof = False
        try:
            while chunk := os.read(self.proc.stdout.fileno(), 1 << 16):
                self._buf += chunk
            eof = True
        except BlockingIOError:
            pass
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            msg = json.loads(line)
            self.states[msg.pop("id")].update(msg)
        if eof:  # the server is gone: a job it did not see end is killed and counts as killed
            unfinished = [st for st in self.states.values() if "rc" not in st]
            _kill_groups([st["pid"] for st in unfinished if st.get("pid")])
            for st in unfinished:
                st["rc"] = -9
                with open(st["log"], "a") as log:  # the job's error message quotes its log
                    log.write(f"\n[the fork server exited before this job ended; its log: {self.log_path}]\n")

    def close(self) -> None:
        """Stop the server; it kills any job still running."""
        if self.proc is None:
            return
        try:
            # an explicit message: a process forked from the client (a distilabel worker)
            # may hold the pipe open, so the server would not see it close
            self.proc.stdin.write(b'{"close": true}\n')
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.set_blocking(self.proc.stdout.fileno(), True)
        self._read()  # the last answers, then EOF
        self.proc.stdout.close()
        self.proc = None


if __name__ == "__main__":
    serve([m for m in sys.argv[1].split(",") if m] if len(sys.argv) > 1 else PRELOAD)
