"""Fixes applied before every distilabel pipeline run (see ``pipelines.common.run_distiset``).

1. ``stop_tqdm_monitor``: distilabel starts its step processes with ``fork``. tqdm's
   monitor thread (started by the first progress bar in a process: a step run in-process,
   ``datasets.load_dataset``, ...) wakes every 10 s and holds tqdm's thread lock while it
   looks at the bars. A fork at that moment copies the lock held, and the child's first
   progress bar then waits on it forever: the pipeline hangs with no error (seen once in
   CI, where a test ran a step in-process before a pipeline). The monitor only nudges
   stalled bars, so it is stopped and kept off.

2. ``patch_write_buffer``: distilabel 1.5.3's leaf-step write buffer.

distilabel writes a leaf step's rows to parquet in chunks of 50 and keeps the first
chunk's schema. When a later chunk has the same column names but other types (a column
that was all None in the first chunk, so typed ``null``, then holds strings), it only
reorders the columns; at close it re-reads every chunk with that first schema and fails
with ``ArrowNotImplementedError: Unsupported cast from string to null``. Whether a run
hits this depends on which rows land in the first chunk (e.g. a batch in which no row
failed has an all-None error column), so it shows up at random after retries or a resume.

The patched writer unifies schemas permissively (null widens to any type, struct fields
merge) and rebuilds any chunk whose schema differs from the final one.

3. ``patch_poll_intervals``: distilabel 1.5.3's pipeline thread waits for its steps to
   load by sleeping 2.5 s between checks, and for them to finish by sleeping 0.5 s: every
   pipeline run lost up to 3 s after its steps were ready (measured: 2.6-3.0 s of a 7.5 s
   toy inversion of 2,048 rows; benchmarks/inversion.py). The pipeline module's ``time``
   is replaced by a view of ``time`` whose ``sleep`` polls at most every 20 ms.
"""

from __future__ import annotations

_PATCHED = False
POLL_SECONDS = 0.02  # the longest sleep distilabel's pipeline thread takes between checks


class _PromptPoll:
    """``time`` for distilabel's pipeline module, with ``sleep`` capped at ``POLL_SECONDS``."""

    def __getattr__(self, name):
        import time

        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        import time

        time.sleep(min(seconds, POLL_SECONDS))


def patch_poll_intervals() -> None:
    """Shorten the polling sleeps of distilabel's pipeline thread (fix 3 of the module doc)."""
    from distilabel.pipeline import base

    if not isinstance(base.time, _PromptPoll):
        base.time = _PromptPoll()


def stop_tqdm_monitor() -> None:
    """Stop tqdm's monitor thread, if running, and keep new bars from starting one."""
    from tqdm import std

    std.tqdm.monitor_interval = 0
    todo, seen = [std.tqdm], set()
    while todo:  # tqdm stores the thread on the class that made the bar (tqdm.auto's, ...)
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        mon = cls.__dict__.get("monitor")
        if mon is not None:
            mon.exit()  # sets its kill event and joins: tqdm's lock is free afterwards
            cls.monitor = None
        if "monitor_interval" in cls.__dict__:
            cls.monitor_interval = 0


def unify(old, new):
    import pyarrow as pa

    return pa.unify_schemas([old, new], promote_options="permissive")


def conform(table, schema):
    """``table`` with ``schema``: a cast where arrow can, else rebuilt from its rows."""
    if table.schema.equals(schema):
        return table
    import pyarrow as pa

    try:
        return table.select(schema.names).cast(schema)
    except Exception:  # noqa: BLE001 - struct field sets differ, etc.
        return pa.Table.from_pylist(table.to_pylist(), schema=schema)


def patch_write_buffer() -> None:
    global _PATCHED
    if _PATCHED:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    from distilabel.pipeline.write_buffer import _WriteBuffer
    from distilabel.utils.dicts import flatten_dict
    from distilabel.utils.files import list_files_in_dir

    def _write(self, step_name: str) -> None:
        step_dir = self._path / step_name
        step_dir.mkdir(parents=True, exist_ok=True)
        rows = self._buffers[step_name]
        try:
            table = pa.Table.from_pylist(rows)
        except pa.lib.ArrowInvalid:
            table = pa.Table.from_pylist([flatten_dict(r) for r in rows])
        last = self._buffer_last_schema.get(step_name)
        schema = table.schema if last is None else unify(last, table.schema)
        self._buffer_last_schema[step_name] = schema
        table = conform(table, schema)
        n = self._buffers_last_file[step_name]
        self._buffers_last_file[step_name] = n + 1
        pq.write_table(table, step_dir / f"{str(n).zfill(5)}.parquet")
        self._clean_buffer(step_name)

    def close(self) -> None:
        for step_name in self._buffers:
            if self._buffers[step_name]:
                self._write(step_name)
            schema = self._buffer_last_schema.get(step_name)
            if schema is None:
                continue
            for file in list_files_in_dir(self._path / step_name):
                table = pq.read_table(file)
                if not table.schema.equals(schema):
                    pq.write_table(conform(table, schema), file)

    _WriteBuffer._write = _write
    _WriteBuffer.close = close
    _PATCHED = True
