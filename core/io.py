"""Writing stage outputs: parquet files written atomically (temp file, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_parquet(rows: list[dict], path: str | os.PathLike, schema_hint: dict | None = None) -> Path:
    """Write ``rows`` to ``path`` atomically; a crash leaves the old file or none."""
    import polars as pl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame(schema=schema_hint or {"id": pl.Utf8})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
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
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
    return path
