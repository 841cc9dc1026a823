"""``LoadProblems``: the generator step feeding pipelines from a row stream."""

import pickle

import pytest

from trace_inversion.config import DataConfig
from trace_inversion.data.columnar import ROW_INDEX, open_rows
from trace_inversion.data.loading import load_rows
from trace_inversion.steps.load_problems import LoadProblems


def batches(step, offset=0):
    step.load()
    return list(step.process_applying_mappings(offset=offset))


@pytest.mark.parametrize("n,size", [(20, 7), (21, 7), (5, 64), (1, 1)])
def test_same_rows_in_the_same_batches_as_load_data_from_dicts(n, size):
    from distilabel.steps import LoadDataFromDicts

    cfg = DataConfig(toy={"n_train": n, "n_test": 0})
    old = batches(LoadDataFromDicts(name="old", data=load_rows(cfg), batch_size=size))
    new = batches(LoadProblems(name="new", source=open_rows(cfg), batch_size=size))
    assert [last for _, last in new] == [last for _, last in old]
    assert [[{k: v for k, v in r.items() if k != ROW_INDEX} for r in b] for b, _ in new] == [b for b, _ in old]
    assert [r[ROW_INDEX] for b, _ in new for r in b] == list(range(n))


def test_offset_resumes_where_distilabel_asks():
    step = LoadProblems(name="load", source=open_rows(DataConfig(toy={"n_train": 10})), batch_size=4)
    rest = batches(step, offset=4)
    assert [[r[ROW_INDEX] for r in b] for b, _ in rest] == [[4, 5, 6, 7], [8, 9]] and rest[-1][1] is True


def test_columns_and_a_small_pickled_form():
    src = open_rows(DataConfig(toy={"n_train": 100_000}))
    step = LoadProblems(name="load", source=src, batch_size=64)
    assert step.outputs == ["id", "problem", "reference_answer", ROW_INDEX]
    assert len(pickle.dumps(step)) < 20_000  # the worker gets the world's settings, not 100k rows
    assert "source" not in step.dump()  # nor does the pipeline's saved form


def test_invalid_data_stops_the_command_before_any_model_call(tmp_path, capsys):
    """Validation happens when the rows are opened: the command exits 2 with the row named,
    and nothing is claimed, cached or queried."""
    from trace_inversion import cli

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "problem": "1+1?"}\n{"id": "a", "problem": "2+2?"}\n')
    out = tmp_path / "out"
    code = cli.main(["query-target", "--set", f"data.source={bad}", "--output", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "row 1 (id 'a'): duplicate id 'a' (first at row 0); fix: make ids unique" in err
    assert not (out / "target_query").exists() and not list(out.rglob("*.sqlite*"))
