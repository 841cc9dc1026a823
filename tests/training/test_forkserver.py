"""The fork server: a job forked from a pre-imported process behaves as the same command
started fresh (argv, environment, working directory, exit status, signals, its own
process group, its output in its log), jobs it cannot fork start as plain processes, and
no job outlives the server or the client that started it.

The fast tests preload a light module; the slow one preloads the real set (torch,
transformers, TRL) and checks a forked training and a forked evaluation give the same
bytes as fresh processes. The test process itself stays torch-free.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trace_inversion.training.forkserver import (PRELOAD, ForkedProcess, ForkServer, env_difference,
                                                 python_entry)
from trace_inversion.training.sft import BackgroundRun

LIGHT = ("json",)

JOB = r"""
import json, os, random, sys
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
                  "x": os.environ.get("X"), "omp": os.environ.get("OMP_NUM_THREADS"), "pgid": os.getpgid(0),
                  "pid": os.getpid(), "rand": random.random()}), flush=True)
code = sys.argv[1]
if code == "sleep":
    import time
    time.sleep(60)
elif code == "raise":
    raise ValueError("broken job")
elif code == "message":
    sys.exit("stopped with a message")
sys.exit(int(code))
"""


def _env(**kw) -> dict:
    return dict(os.environ, **{"OMP_NUM_THREADS": "1", **kw})


def _state(pid: int) -> str:
    """The process's state letter (R, S, T stopped, Z zombie), "" if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    return _state(pid) not in ("", "Z")  # a zombie (exited, not yet reaped) counts as gone


def _gone(*pids: int, timeout: float = 10) -> bool:
    """Whether every process in ``pids`` is gone within ``timeout`` (a kill is asynchronous)."""
    deadline = time.time() + timeout
    while any(map(_alive, pids)) and time.time() < deadline:
        time.sleep(0.05)
    return not any(map(_alive, pids))


def _first_json(log: Path) -> dict:
    return json.loads(next(line for line in log.read_text().splitlines() if line.startswith("{")))


@pytest.fixture
def script(tmp_path):
    p = tmp_path / "scripts" / "job.py"
    p.parent.mkdir()
    p.write_text(JOB)
    return p


def test_python_entry_and_the_environment_check():
    assert python_entry([sys.executable, "a.py", "--x"]) == ("script", "a.py", ["--x"])
    assert python_entry([sys.executable, "-m", "pkg.mod", "1"]) == ("module", "pkg.mod", ["1"])
    assert python_entry(["trl", "sft"]) is None and python_entry([sys.executable, "-c", "pass"]) is None
    assert python_entry(["/usr/bin/other-python", "a.py"]) is None
    server = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/bin"}
    job = dict(server, OMP_NUM_THREADS="2", ACCELERATE_USE_CPU="False", VLLM_CPU_KVCACHE_SPACE="1",
               TRACE_INVERSION_TRAIN_THREADS="2")
    assert env_difference(server, job) == []  # read when a job runs, not at import
    assert env_difference(server, dict(job, HF_HUB_OFFLINE="0", NEW="x")) == ["HF_HUB_OFFLINE", "NEW"]
    assert "vllm" not in PRELOAD  # VLLM_* may differ only because the server never imports vLLM


def test_a_forked_job_is_the_command_run_fresh(tmp_path, script, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with ForkServer(_env(X="server"), tmp_path / "server.log", preload=LIGHT) as server:
        runs = {}
        for code in ("0", "3", "raise", "message"):
            runs[code] = BackgroundRun([sys.executable, str(script), code], tmp_path / f"{code}.log",
                                       _env(X="server", OMP_NUM_THREADS="2"), spawn=server.spawn)
        assert all(isinstance(r.proc, ForkedProcess) for r in runs.values()) and server.fallbacks == []
        assert runs["0"].result()["seconds"] >= 0
        seen = _first_json(tmp_path / "0.log")
        assert seen["argv"] == [str(script), "0"] and seen["name"] == "__main__"
        assert seen["cwd"] == str(work) and seen["path0"] == str(script.parent)
        assert seen["x"] == "server" and seen["omp"] == "2"  # the job's environment, not the server's
        assert seen["pgid"] == seen["pid"] == runs["0"].proc.pid  # its own process group
        with pytest.raises(RuntimeError, match=r"failed \(3\)"):
            runs["3"].result()
        with pytest.raises(RuntimeError, match=r"failed \(1\)") as err:
            runs["raise"].result()
        assert "ValueError: broken job" in str(err.value)  # the traceback is in the log
        with pytest.raises(RuntimeError, match=r"failed \(1\)") as err:
            runs["message"].result()
        assert "stopped with a message" in str(err.value)
        # each job draws fresh random numbers, as a fresh process does
        rands = {_first_json(tmp_path / f"{c}.log")["rand"] for c in runs}
        assert len(rands) == len(runs)
        # python -m: the module runs as __main__ with the job's argv
        (tmp_path / "in.json").write_text('{"a": [1, 2]}')
        mod = BackgroundRun([sys.executable, "-m", "json.tool", str(tmp_path / "in.json")], tmp_path / "m.log",
                            _env(X="server"), spawn=server.spawn)
        mod.result()
        assert json.loads((tmp_path / "m.log").read_text()) == {"a": [1, 2]}
        assert server.forked == 5


def test_jobs_it_cannot_fork_start_as_plain_processes(tmp_path, script):
    with ForkServer(_env(HF_HUB_OFFLINE="1"), tmp_path / "server.log", preload=LIGHT) as server:
        differs = BackgroundRun([sys.executable, str(script), "0"], tmp_path / "a.log", _env(HF_HUB_OFFLINE="0"),
                                spawn=server.spawn)
        no_threads = {k: v for k, v in _env(HF_HUB_OFFLINE="1").items() if k != "OMP_NUM_THREADS"}
        unset = BackgroundRun([sys.executable, str(script), "0"], tmp_path / "b.log", no_threads, spawn=server.spawn)
        other = BackgroundRun(["sh", "-c", "echo plain"], tmp_path / "c.log", _env(HF_HUB_OFFLINE="1"),
                              spawn=server.spawn)
        for r in (differs, unset, other):
            assert isinstance(r.proc, subprocess.Popen)
            r.result()
        assert (tmp_path / "c.log").read_text() == "plain\n"
        assert len(server.fallbacks) == 3 and "HF_HUB_OFFLINE" in server.fallbacks[0]
        assert "OMP_NUM_THREADS not set" in server.fallbacks[1] and "not a python" in server.fallbacks[2]
        assert server.proc is None and server.forked == 0  # never needed: never started
        assert server.summary() == {"forked": 0, "plain": server.fallbacks}
        assert server.fallback_note().startswith("3 job(s) started as plain processes: ")
    run_server = ForkServer.for_run(tmp_path / "run")  # a run's: its jobs' environment at one thread
    assert run_server.env["OMP_NUM_THREADS"] == "1" and run_server.log_path == tmp_path / "run" / "fork-server.log"
    assert run_server.fallback_note() is None


def test_kill_pause_and_close_reach_the_forked_job(tmp_path, script):
    server = ForkServer(_env(), tmp_path / "server.log", preload=LIGHT)
    try:
        run = BackgroundRun([sys.executable, str(script), "sleep"], tmp_path / "s.log", _env(), spawn=server.spawn)
        pid = run.proc.pid
        while "pid" not in (tmp_path / "s.log").read_text():
            time.sleep(0.05)
        run.signal_group(signal.SIGSTOP)
        deadline = time.time() + 5
        while _state(pid) != "T" and time.time() < deadline:
            time.sleep(0.05)
        assert _state(pid) == "T"  # stopped
        run.signal_group(signal.SIGCONT)
        run.kill()
        assert run.proc.poll() == -9 and _gone(pid)
        # closing the server stops a job still running, even while a process forked from
        # this one (as distilabel forks its workers) holds the server's stdin open
        other = BackgroundRun([sys.executable, str(script), "sleep"], tmp_path / "t.log", _env(), spawn=server.spawn)
        pid2 = other.proc.pid
        assert _alive(pid2)
        holder = os.fork()
        if holder == 0:
            time.sleep(30)
            os._exit(0)
        t = time.time()
    finally:
        server.close()
    assert time.time() - t < 5
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)
    assert _gone(pid2) and other.proc.poll() == -9
    with pytest.raises(RuntimeError, match=r"failed \(-9\)"):
        other.result()


def test_no_job_outlives_a_dead_client_or_a_dead_server(tmp_path, script):
    # the client dies (SIGKILL, no cleanup): the server sees its stdin close, kills the job, exits
    client = tmp_path / "client.py"
    client.write_text(f"""
import os, sys, time
from pathlib import Path
from trace_inversion.training.forkserver import ForkServer
from trace_inversion.training.sft import BackgroundRun
env = dict(os.environ, OMP_NUM_THREADS="1")
server = ForkServer(env, Path({str(tmp_path / 'server.log')!r}), preload=("json",))
run = BackgroundRun([sys.executable, {str(script)!r}, "sleep"], Path({str(tmp_path / 'c.log')!r}), env,
                    spawn=server.spawn)
print(run.proc.pid, server.proc.pid, flush=True)
time.sleep(60)
""")
    proc = subprocess.Popen([sys.executable, str(client)], stdout=subprocess.PIPE, text=True)
    job_pid, server_pid = map(int, proc.stdout.readline().split())
    assert _alive(job_pid) and _alive(server_pid)
    proc.kill()
    proc.wait()
    assert _gone(job_pid, server_pid)
    # the server dies: its running job is killed and reported killed, not left running
    with ForkServer(_env(), tmp_path / "server2.log", preload=LIGHT) as server:
        run = BackgroundRun([sys.executable, str(script), "sleep"], tmp_path / "d.log", _env(), spawn=server.spawn)
        pid = run.proc.pid
        server.proc.kill()
        with pytest.raises(RuntimeError, match=r"failed \(-9\)") as err:
            run.result(timeout=10)
        assert _gone(pid) and "the fork server exited before this job ended" in str(err.value)
        # and a job after that starts as a plain process
        after = BackgroundRun([sys.executable, str(script), "0"], tmp_path / "e.log", _env(), spawn=server.spawn)
        assert isinstance(after.proc, subprocess.Popen) and "fork server exited" in server.fallbacks[-1]
        after.result()


@pytest.mark.slow
def test_forked_training_and_evaluation_match_fresh_processes_byte_for_byte(tiny_lm_dir, tmp_path):
    """The real preload (torch, transformers, TRL): a tiny training forked from the server
    (cold, then warm) writes the same model file as the same training started fresh, at
    two threads and at one; a forked evaluation writes the same outputs as a fresh one."""
    import filecmp

    from trace_inversion.config import load_config
    from trace_inversion.data.loading import load_rows
    from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
    from trace_inversion.toy.world import REFERENCE_COLUMN
    from trace_inversion.training.sft import TRAIN_THREADS_ENV, job_env, start_sft

    cfg = load_config(None, {"data": {"toy": {"n_train": 64, "n_test": 12}}, "output": {"dir": str(tmp_path / "out")}})
    run_build_inverter_data(cfg, load_rows(cfg.data))
    bench = tmp_path / "test.jsonl"
    bench.write_text("".join(json.dumps({"id": r["id"], "problem": r["problem"], REFERENCE_COLUMN: r[REFERENCE_COLUMN]})
                             + "\n" for r in load_rows(cfg.data, "test")))
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def train(name: str, threads: int, spawn=None) -> dict:
        over = {"model_name_or_path": str(tiny_lm_dir), "dataset_name": str(tmp_path / "out" / "inverter_data"),
                "output_dir": str(tmp_path / name), "max_steps": 12, "logging_steps": 4}
        return start_sft("tiny/inverter.yaml", over, tmp_path / f"{name}.run",
                         env={**offline, TRAIN_THREADS_ENV: str(threads)}, spawn=spawn).result(timeout=600)

    def evaluate(name: str, spawn=None):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "trace_inversion.cli", "evaluate", "--model", str(tmp_path / "fresh2"),
               "--benchmark", str(bench), "--split", "test", "--id-column", "id", "--answer-column", REFERENCE_COLUMN,
               "--backend", "transformers", "--temperature", "0", "--max-new-tokens", "16", "--output", str(out)]
        BackgroundRun(cmd, tmp_path / f"{name}.log", job_env({**offline, "OMP_NUM_THREADS": "1"}),
                      spawn=spawn).result(timeout=600)
        return out

    fresh = {t: train(f"fresh{t}", t) for t in (2, 1)}
    with ForkServer(job_env({**offline, "OMP_NUM_THREADS": "1"}), tmp_path / "server.log") as server:
        forked = {t: train(f"forked{t}", t, server.spawn) for t in (2, 1)}
        fresh_eval, forked_eval = evaluate("eval-fresh"), evaluate("eval-forked", server.spawn)
        assert server.forked == 3 and server.fallbacks == []
    for t in (2, 1):
        assert forked[t]["losses"] == fresh[t]["losses"] and len(fresh[t]["losses"]) >= 3
        assert filecmp.cmp(tmp_path / f"fresh{t}" / "model.safetensors", tmp_path / f"forked{t}" / "model.safetensors",
                           shallow=False)
    # the warm fork skips the imports (cold: the server imports first)
    assert forked[1]["seconds"] < fresh[1]["seconds"], (forked, fresh)
    from trace_inversion.data.io import read_split

    a, b = read_split(fresh_eval, "results"), read_split(forked_eval, "results")
    assert len(a) == 12 and any(r["output"] for r in a) and [r["output"] for r in a] == [r["output"] for r in b]
    assert json.loads((fresh_eval / "accuracy.json").read_text()) == json.loads((forked_eval / "accuracy.json").read_text())
