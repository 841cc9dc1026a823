"""Input data is validated before any model call; problems name the row and the fix."""

import json

import polars as pl
import pytest

from trace_inversion.config import DataConfig
from trace_inversion.data.loading import DataError, load_rows, validate_rows


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


# ----------------------------------------------------------------------------- splits, subsets
def test_split_from_the_config_unless_the_command_gives_one(tmp_path, monkeypatch):
    """`data.split: test` is honoured: the commands' --split overrides it only when given."""
    from trace_inversion import cli
    from trace_inversion.pipelines import query_target

    seen = {}

    def fake_run(cfg, rows, split="train"):
        seen.update(rows=rows, split=split)
        return {}

    monkeypatch.setattr(query_target, "run_query_target", fake_run)
    toy = ["--set", "data.toy.n_train=7", "--set", "data.toy.n_test=3", "--output", str(tmp_path / "o")]
    assert cli.main(["query-target", *toy, "--set", "data.split=test"]) == 0
    assert len(seen["rows"]) == 3 and seen["split"] == "test"
    assert cli.main(["query-target", *toy, "--set", "data.split=test", "--split", "train"]) == 0
    assert len(seen["rows"]) == 7 and seen["split"] == "train"
    assert cli.main(["query-target", *toy]) == 0
    assert len(seen["rows"]) == 7  # data.split's default is train
    for cmd in ("query-target", "build-inverter-data"):
        assert cli.build_parser().parse_args([cmd]).split is None


def test_hub_subset_and_split_reach_load_dataset(monkeypatch):
    import datasets

    calls = []

    class FakeDataset:
        def to_list(self):
            return [{"question": "Natalia sold clips...", "answer": "72"}]

    def fake_load(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return FakeDataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = DataConfig(source="openai/gsm8k", subset="main", split="test", problem_column="question", id_column=None)
    rows = load_rows(cfg)
    assert calls == [("openai/gsm8k", "main", "test")] and rows[0]["problem"].startswith("Natalia")
    load_rows(DataConfig(source="HuggingFaceH4/MATH-500", split="test", problem_column="question", id_column=None))
    assert calls[-1] == ("HuggingFaceH4/MATH-500", None, "test")


def test_missing_split_or_subset_names_the_fix(tmp_path):
    """datasets' own errors for a dataset with subsets (a repo laid out like the Hub's)."""
    from trace_inversion.data.loading import _read_hub
    from trace_inversion.hub_cards.card import card_context, write_card
    from trace_inversion.data.io import write_split

    repo = tmp_path / "gsm8k"
    write_split(repo, "main", [{"id": "a", "problem": "1+1"}], split="train")
    write_split(repo, "main", [{"id": "b", "problem": "2+2"}], split="test")
    write_split(repo, "socratic", [{"id": "c", "problem": "3+3"}], split="test")
    write_card(repo, card_context("t", "x", {"name": "t"}, {}, {"main": 2, "socratic": 1}))
    assert [r["id"] for r in _read_hub(str(repo), "test", "socratic")] == ["c"]
    assert [r["id"] for r in _read_hub(str(repo), "test", "main")] == ["b"]
    with pytest.raises(DataError, match="no split 'validation'.*fix: set data.split"):
        _read_hub(str(repo), "validation", "main")
    with pytest.raises(DataError, match="subset 'nope'.*fix: set data.subset"):
        _read_hub(str(repo), "test", "nope")


def test_subset_only_for_hub_sources(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="applies only to Hub datasets"):
        DataConfig(subset="main")
    f = tmp_path / "d.jsonl"
    f.write_text('{"id": "a", "problem": "x"}\n')
    with pytest.raises(ValidationError, match="fix: remove data.subset"):
        DataConfig(source=str(f), subset="main")
    assert DataConfig(source="openai/gsm8k", subset="main").subset == "main"


# ----------------------------------------------------------------------------- local model folders
@pytest.mark.parametrize("model,local", [
    ("Qwen/Qwen2.5-7B-Instruct", False), ("meta-llama/Llama-3.1-8B-Instruct", False), ("gpt2", False),
    ("runs/x/inverter", True), ("runs/inverter", True), ("./inverter", True), ("../m", True), ("/abs/m", True),
    ("~/models/m", True), ("out/inverter", True),  # out/ is the first folder of output.dir below
])
def test_which_model_names_are_local_paths(model, local):
    from trace_inversion.data.loading import looks_like_local_path

    assert looks_like_local_path(model, "out/run1") is local


def test_missing_local_models_fail_before_any_call(tmp_path, monkeypatch, capsys):
    from trace_inversion import cli
    from trace_inversion.config import ConfigError, load_config
    from trace_inversion.data.loading import check_local_models

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, {"output": {"dir": "runs/x"}, "models": {
        "inverter": {"backend": "vllm", "model": "runs/x/inverter"},
        "surrogate": {"backend": "transformers", "model": "Qwen/Qwen2.5-1.5B-Instruct"},
        "target": {"backend": "openai-chat", "model": "/models/served-name", "base_url": "http://127.0.0.1:1/v1"}}})
    with pytest.raises(ConfigError) as e:
        check_local_models(cfg, ("target", "surrogate", "inverter", "compressor"))
    assert e.value.problems == [e.value.problems[0]] and e.value.problems[0].startswith("models.inverter.model:")
    assert "'runs/x/inverter' does not exist" in str(e.value) and "fix:" in str(e.value)
    (tmp_path / "runs" / "x" / "inverter").mkdir(parents=True)
    check_local_models(cfg, ("inverter",))
    # through the command: the stage that runs the missing model stops first (exit 2, the field named)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("output: {dir: runs/y}\nmodels:\n  inverter: {backend: vllm, model: runs/y/inverter}\n")
    capsys.readouterr()
    assert cli.main(["invert", "--config", str(cfg_file)]) == 2
    assert "models.inverter.model: local model folder 'runs/y/inverter' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "y").exists()  # nothing was claimed or written
    # a stage that does not run it is not held up by it (the inverter is trained later)
    from trace_inversion.pipelines import query_target

    monkeypatch.setattr(query_target, "run_query_target", lambda cfg, rows, split=None: {})
    assert cli.main(["query-target", "--config", str(cfg_file), "--set", "data.toy.n_train=5"]) == 0
