"""distilabel's leaf-step writer with columns whose type is only known in later chunks."""

from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, StepInput, step

from trace_inversion.pipelines.common import run_distiset


@step(inputs=["i"], outputs=["err", "usage"])
def LateTypes(inputs: StepInput):
    for row in inputs:
        # the first 100 rows (two write chunks) have no error and no usage: typed null
        late = row["i"] >= 100
        row["err"] = f"failed {row['i']}" if late else None
        row["usage"] = {"input_tokens": row["i"], **({"reasoning_tokens": 1} if row["i"] % 2 else {})} if late else None
    yield inputs


def test_late_typed_columns_survive_the_write_buffer(tmp_path):
    rows = [{"i": i} for i in range(230)]
    with Pipeline(name="late-types", cache_dir=str(tmp_path / "cache")) as p:
        LoadDataFromDicts(name="load", data=rows, batch_size=25) >> LateTypes(name="late", input_batch_size=25)
    out = run_distiset(p)["default"]["train"].to_list()
    assert len(out) == 230
    by_i = {r["i"]: r for r in out}
    assert by_i[5]["err"] is None and by_i[150]["err"] == "failed 150"
    assert by_i[151]["usage"] == {"input_tokens": 151, "reasoning_tokens": 1}
    assert by_i[150]["usage"]["input_tokens"] == 150 and by_i[150]["usage"].get("reasoning_tokens") is None


@step(inputs=["i"], outputs=["j"])
def WithABar(inputs: StepInput):
    from tqdm.auto import tqdm

    bar = tqdm(total=len(inputs), desc="child bar")  # what ModelStep does in its process
    for row in inputs:
        row["j"] = row["i"] + 1
        bar.update(1)
    bar.close()
    yield inputs


def _monitors():
    import threading

    return [t for t in threading.enumerate() if t.name == "tqdm_monitor" and t.is_alive()]


def test_no_tqdm_monitor_thread_is_alive_when_distilabel_forks(tmp_path):
    """A bar made in this process (as a step run in-process, or datasets, does) starts
    tqdm's monitor thread; a fork while it holds tqdm's lock would hang the child's bar.
    run_distiset stops it before forking and new bars do not restart it."""
    from tqdm.auto import tqdm

    from trace_inversion.distilabel_compat import stop_tqdm_monitor

    monitor_interval = tqdm.monitor_interval
    try:
        tqdm.monitor_interval = 10
        bar = tqdm(total=2, desc="parent bar")
        bar.update(1)
        assert _monitors(), "tqdm should have started its monitor thread"
        with Pipeline(name="bars", cache_dir=str(tmp_path / "cache")) as p:
            LoadDataFromDicts(name="load", data=[{"i": i} for i in range(40)], batch_size=10) >> \
                WithABar(name="bar", input_batch_size=10)
        out = run_distiset(p)["default"]["train"].to_list()
        assert sorted(r["j"] for r in out) == list(range(1, 41))
        assert not _monitors()
        tqdm(total=1, desc="after").close()
        assert not _monitors()
        bar.close()
    finally:
        stop_tqdm_monitor()
        tqdm.monitor_interval = monitor_interval


def test_the_pipeline_thread_polls_promptly(tmp_path, monkeypatch):
    """distilabel's pipeline thread slept 2.5 s between checks that its steps were loaded
    (and 0.5 s for them to finish): ~3 s lost by every pipeline run. After a run its
    module's ``time`` caps every sleep at POLL_SECONDS and is otherwise ``time`` (the
    speed-up itself is measured by benchmarks/inversion.py)."""
    import time

    from distilabel.pipeline import base

    from trace_inversion.distilabel_compat import POLL_SECONDS

    rows = [{"i": i} for i in range(10)]
    with Pipeline(name="prompt-poll", cache_dir=str(tmp_path / "cache")) as p:
        LoadDataFromDicts(name="load", data=rows, batch_size=10) >> WithABar(name="bar", input_batch_size=10)
    out = run_distiset(p)["default"]["train"].to_list()
    assert [r["j"] for r in out] == list(range(1, 11))
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    base.time.sleep(2.5)  # what the load wait sleeps between its checks
    base.time.sleep(0.001)
    assert slept == [POLL_SECONDS, 0.001]
    assert base.time.monotonic is time.monotonic and base.time.time is time.time
