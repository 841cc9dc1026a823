"""Rows as a stream (``data.columnar``): the same rows and the same errors as the
list path, read and validated column-wise."""

import pickle

import polars as pl
import pytest

from trace_inversion.config import DataConfig
from trace_inversion.data.columnar import FileRows, ListRows, ToyRows, open_rows
from trace_inversion.data.loading import DataError, validate_rows
from trace_inversion.toy.world import ToyWorld, iter_rows

from test_data import BAD_ROWS


def old_toy_rows(toy: dict, split: str, limit=None) -> list[dict]:
    """The list path as it was: ``ToyWorld.splits``/``problems`` materialised."""
    world = ToyWorld(**{k: v for k, v in toy.items() if k in ("seed", "n_ops", "modulus", "ops")})
    train, test = world.splits(toy["n_train"], toy["n_test"])
    if split == "attacker":
        probs = world.problems(toy["n_train"], "attacker", exclude={p.text for p in train + test})
    else:
        probs = test if split == "test" else train
    rows = list(iter_rows(probs))
    return rows[:limit] if limit else rows


@pytest.mark.parametrize("split", ["train", "test", "attacker"])
@pytest.mark.parametrize("toy", [
    {"n_train": 30, "n_test": 10},
    # a small world: many problems repeat, so the lazy de-duplication is exercised
    {"n_train": 40, "n_test": 20, "n_ops": 3, "modulus": 3, "ops": "+-"},
])
def test_toy_stream_is_the_old_list(split, toy):
    cfg = DataConfig(toy=toy)
    src = open_rows(cfg, split)
    expected = old_toy_rows(cfg.toy.model_dump(), split)
    assert isinstance(src, ToyRows) and len(src) == len(expected)
    assert src.skips is None and list(src) == expected
    # the first pass recorded the indices it passed over: a copy (a worker's) needs no sets
    again = pickle.loads(pickle.dumps(src))
    assert again.skips == src.skips and list(again) == expected
    limited = open_rows(DataConfig(toy=toy, limit=7), split)
    assert len(limited) == 7 and list(limited) == expected[:7]


def test_the_small_world_does_repeat_problems():
    src = open_rows(DataConfig(toy={"n_train": 40, "n_test": 20, "n_ops": 3, "modulus": 3, "ops": "+-"}), "attacker")
    list(src)
    assert src.skips  # repeats and excluded texts were passed over


def test_toy_source_is_small_whatever_the_rows():
    """A worker process gets the world's settings, not the rows."""
    small = len(pickle.dumps(open_rows(DataConfig(toy={"n_train": 10}))))
    large = len(pickle.dumps(open_rows(DataConfig(toy={"n_train": 1_000_000}))))
    assert abs(large - small) < 16 and large < 2000


@pytest.mark.parametrize("size,offset", [(7, 0), (7, 14), (50, 3), (1, 29)])
def test_batches_from_any_offset(tmp_path, size, offset):
    rows = list(open_rows(DataConfig(toy={"n_train": 30})))
    path = tmp_path / "d.parquet"
    pl.DataFrame(rows).write_parquet(path, row_group_size=4)  # batches cross row groups
    sources = [ToyRows(DataConfig(toy={"n_train": 30}).toy, "train"), ListRows(rows),
               open_rows(DataConfig(source=str(path)))]
    want = [rows[i:i + size] for i in range(offset, len(rows), size)]
    for src in sources:
        got = list(src.batches(size, offset))
        assert [[dict(r) for r in b] for b in got] == want, type(src).__name__


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv", "json"])
def test_file_rows_are_normalised_like_validate_rows(tmp_path, fmt):
    raw = [{"qid": f"q{i}", "question": f"{i}+1?", "extra": i, "id": "shadowed"} for i in range(5)]
    df = pl.DataFrame(raw)
    path = tmp_path / f"d.{fmt}"
    {"parquet": df.write_parquet, "jsonl": df.write_ndjson, "csv": df.write_csv, "json": df.write_json}[fmt](path)
    src = open_rows(DataConfig(source=str(path), problem_column="question", id_column="qid"))
    assert isinstance(src, FileRows) and len(src) == 5
    assert list(src) == validate_rows(raw, "question", "qid")
    numbered = list(open_rows(DataConfig(source=str(path), problem_column="question", id_column=None, limit=2)))
    assert [r["id"] for r in numbered] == ["row-0000000", "row-0000001"]


def _write(rows, path):
    if path.suffix == ".parquet":
        pl.DataFrame(rows, infer_schema_length=None).write_parquet(path)
    else:
        import json

        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
@pytest.mark.parametrize("rows", [c[1] for c in BAD_ROWS] + [
    [{"id": str(i), "problem": "" if i % 2 else "ok"} for i in range(10)],  # every bad row at once
    [{"id": "a", "problem": None}, {"id": "b", "problem": "x"}],  # a null in a text column
    [{"id": 1, "problem": "x"}, {"id": 2, "problem": " "}, {"id": 1, "problem": "y"}],  # numeric ids
    [{"id": "a", "problem": ""}, {"id": "a", "problem": "x"}, {"id": "a", "problem": "y"}],  # first *valid* row
    [{"id": None, "problem": "x"}, {"id": "b", "problem": "x" * 200_001}],
], ids=[c[0] for c in BAD_ROWS] + ["every bad row", "null problem", "numeric ids", "first valid", "null id, huge"])
def test_same_errors_as_the_row_by_row_check(tmp_path, fmt, rows):
    path = tmp_path / f"bad.{fmt}"
    _write(rows, path)
    with pytest.raises(DataError) as old:
        validate_rows(rows, "problem", "id", str(path))
    with pytest.raises(DataError) as new:
        open_rows(DataConfig(source=str(path)))
    assert new.value.problems == old.value.problems and str(new.value) == str(old.value)


def test_no_rows(tmp_path):
    path = tmp_path / "empty.parquet"
    pl.DataFrame(schema={"id": pl.String, "problem": pl.String}).write_parquet(path)
    with pytest.raises(DataError, match="the dataset has no rows; fix:"):
        open_rows(DataConfig(source=str(path)))


def test_stream_and_list_give_the_same_stage_fingerprint(tmp_path):
    """A finished run of the list path is still reused after the switch to streams."""
    from trace_inversion.config import load_config
    from trace_inversion.data.loading import load_rows
    from trace_inversion.pipelines.stage import stage_fingerprint

    cfg = load_config(None, {"data": {"toy": {"n_train": 50}}, "output": {"dir": str(tmp_path / "o")}})
    src = open_rows(cfg.data)
    assert stage_fingerprint(cfg, "query-target", src) == stage_fingerprint(cfg, "query-target", load_rows(cfg.data))
    assert stage_fingerprint(cfg, "query-target", src) != stage_fingerprint(cfg, "query-target", list(src)[:-1])
