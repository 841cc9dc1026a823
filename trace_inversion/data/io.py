"""Writing stage outputs: parquet files written atomically (temp file, then rename), from
rows (lists of dicts) or, streaming, from polars frames (``write_split_frame``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp uses 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_parquet(rows: list[dict], path: str | os.PathLike, schema_hint: dict | None = None,
                  like: list[dict] | None = None) -> Path:
    """Write ``rows`` to ``path`` atomically; a crash leaves the old file or none.

    An empty ``rows`` still gets the real columns: those of ``like`` (rows of a sibling
    split, e.g. the kept rows for an empty rejected split), else ``schema_hint``, else
    just ``id``; readers can then select columns without special-casing empty splits.
    """
    import polars as pl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rows:
        df = pl.DataFrame(rows, infer_schema_length=None)
    elif like:
        df = pl.DataFrame(like, infer_schema_length=None).clear()
    else:
        df = pl.DataFrame(schema=schema_hint or {"id": pl.Utf8})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _umask_mode())  # shards are shared: readable like any file the user writes
    try:
        df.write_parquet(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_parquet_rows(path: str | os.PathLike) -> list[dict]:
    import polars as pl

    return pl.read_parquet(path).to_dicts()


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, _umask_mode())
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
    return path


def write_split(folder: str | os.PathLike, config: str, rows: list[dict], split: str = "train",
                like: list[dict] | None = None) -> Path:
    """Write one split of a dataset folder as ``data/<config>/<split>-<sha12>.parquet``.

    The shard name carries a hash of its bytes: ``datasets`` caches local folders by
    folder *name* and relative file paths (not the parent path), so two runs' folders
    with the same name and fixed shard names would share a cache entry and a later
    ``load_dataset`` or ``trl sft`` could read the other run's rows. Older shards of the
    split are removed after the new one is in place (the card lists the newest only).
    An empty split takes its columns from ``like`` (see ``write_parquet``).
    """
    import hashlib

    d = Path(folder) / "data" / config
    tmp = write_parquet(rows, d / f".{split}.parquet.new", like=like)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:12]
    final = d / f"{split}-{digest}.parquet"
    os.replace(tmp, final)
    for old in list(d.glob(f"{split}-*.parquet")) + list(d.glob(f"{split}.parquet")):
        if old != final:
            old.unlink()
    return final


def write_split_frame(folder: str | os.PathLike, config: str, frame, split: str = "train") -> Path:
    """``write_split`` for a polars (Lazy)Frame: streamed to parquet (``sink_parquet``),
    never turned into Python rows; the shard is named by a hash of its bytes, read in
    chunks."""
    import hashlib

    import polars as pl

    d = Path(folder) / "data" / config
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{split}.parquet.", dir=d)
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    try:
        lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
        lf.sink_parquet(tmp, row_group_size=16_384)
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        final = d / f"{split}-{h.hexdigest()[:12]}.parquet"
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in list(d.glob(f"{split}-*.parquet")) + list(d.glob(f"{split}.parquet")):
        if old != final:
            old.unlink()
    return final


def count_rows(path: str | os.PathLike) -> int:
    """Rows of a parquet shard (from its metadata)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def split_path(folder: str | os.PathLike, config: str, split: str = "train") -> Path:
    """The current shard of a split (newest, if a crash left an older one)."""
    d = Path(folder) / "data" / config
    files = sorted(list(d.glob(f"{split}-*.parquet")) + list(d.glob(f"{split}.parquet")),
                   key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no {split} split of config {config!r} in {folder}")
    return files[-1]


def read_split(folder: str | os.PathLike, config: str, split: str = "train") -> list[dict]:
    return read_parquet_rows(split_path(folder, config, split))
