"""Stage folders: content-addressed shards keep `datasets`' cache from mixing runs."""

import datasets

from trace_inversion.data.io import read_split, split_path, write_split


def _card(folder):
    from trace_inversion.hub_cards.card import configs_block
    import yaml

    (folder / "README.md").write_text("---\n" + yaml.safe_dump({"configs": configs_block(folder)}) + "---\n")


def test_same_folder_name_different_runs_never_share_a_cache_entry(tmp_path):
    # datasets caches local folders by name + relative paths: fixed shard names would collide
    a, b = tmp_path / "run_a" / "inverter_data", tmp_path / "run_b" / "inverter_data"
    write_split(a, "cfg", [{"x": i} for i in range(5)])
    write_split(b, "cfg", [{"x": i} for i in range(7)])
    _card(a)
    _card(b)
    assert datasets.load_dataset(str(a), "cfg", split="train").num_rows == 5
    assert datasets.load_dataset(str(b), "cfg", split="train").num_rows == 7


def test_rewrite_replaces_the_shard(tmp_path):
    first = write_split(tmp_path, "cfg", [{"x": 1}])
    second = write_split(tmp_path, "cfg", [{"x": 2}, {"x": 3}])
    assert first != second and not first.exists()
    assert split_path(tmp_path, "cfg") == second and read_split(tmp_path, "cfg") == [{"x": 2}, {"x": 3}]
    assert write_split(tmp_path, "cfg", [{"x": 2}, {"x": 3}]) == second  # same content, same name


def test_an_empty_split_keeps_the_columns_of_its_sibling(tmp_path):
    import polars as pl

    kept = [{"id": "a", "score": 0.5, "reason": None}]
    write_split(tmp_path, "rejected", [], like=kept)
    df = pl.read_parquet(split_path(tmp_path, "rejected"))
    assert df.height == 0 and df.columns == ["id", "score", "reason"]
    assert df.schema["score"] == pl.Float64
    write_split(tmp_path, "empty", [])
    assert pl.read_parquet(split_path(tmp_path, "empty")).columns == ["id"]
