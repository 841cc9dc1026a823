"""Input data is validated before any model call; problems name the row and the fix."""

import json

import polars as pl
import pytest

from trace_inversion.config import DataConfig
from trace_inversion.data import DataError, load_rows, validate_rows


def test_toy_rows():
    rows = load_rows(DataConfig(toy={"n_train": 10, "n_test": 5}))
    assert len(rows) == 10 and {"id", "problem", "reference_answer"} <= set(rows[0])
    test = load_rows(DataConfig(toy={"n_train": 10, "n_test": 5}), "test")
    assert len(test) == 5 and not {r["problem"] for r in rows} & {r["problem"] for r in test}


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_local_files(tmp_path, fmt):
    df = pl.DataFrame({"qid": ["a", "b"], "question": ["1+1?", "2+2?"], "extra": [1, 2]})
    path = tmp_path / f"d.{fmt}"
    {"parquet": df.write_parquet, "jsonl": df.write_ndjson, "csv": df.write_csv}[fmt](path)
    rows = load_rows(DataConfig(source=str(path), problem_column="question", id_column="qid", limit=1))
    assert rows == [{"extra": 1, "id": "a", "problem": "1+1?"}]


BAD_ROWS = [
    ("missing column", [{"id": "a", "question": "x"}], "column 'problem' is missing", "problem_column"),
    ("non-text problem", [{"id": "a", "problem": 5}], "row 0 (id 'a')", "must be text"),
    ("empty problem", [{"id": "a", "problem": "  "}], "row 0", "is empty"),
    ("huge problem", [{"id": "a", "problem": "x" * 300_000}], "row 0", "limit 200,000"),
    ("duplicate ids", [{"id": "a", "problem": "x"}, {"id": "a", "problem": "y"}], "row 1", "duplicate id 'a'"),
    ("empty id", [{"id": "", "problem": "x"}], "row 0", "id is empty"),
    ("no id column", [{"problem": "x"}], "id column 'id' is missing", "id_column: null"),
]


@pytest.mark.parametrize("rows,where,what", [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_rows_rejected_with_row_and_fix(rows, where, what):
    with pytest.raises(DataError) as e:
        validate_rows(rows, "problem", "id")
    assert where in str(e.value) and what in str(e.value) and "fix:" in str(e.value)


def test_every_bad_row_reported_at_once():
    rows = [{"id": str(i), "problem": "" if i % 2 else "ok"} for i in range(10)]
    with pytest.raises(DataError) as e:
        validate_rows(rows, "problem", "id")
    assert len(e.value.problems) == 5


def test_unreadable_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "problem": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="fix:"):
        load_rows(DataConfig(source=str(bad)))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot be read"):
        load_rows(DataConfig(source=str(broken)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"id": "a", "problem": "x"}) + "\n")
    assert len(load_rows(DataConfig(source=str(empty)))) == 1
