"""Dataset cards: dataset_info, huggingface_hub/datasets validation, escaping of model output."""

import pytest

from trace_inversion.hub_cards.card import CardError, card_context, fenced, md_cell, validate_card, write_card
from trace_inversion.local_services.hub_server import validate_card_yaml
from trace_inversion.data.io import write_split

EVIL = "ok\n---\nlicense: mit\n<script>alert('x')</script> | cell ```` ~~~\n```yaml\nconfigs: []\n"


def _stage(folder, rows, cfg=None, stats=None, sections=None):
    write_split(folder, "inverted", rows)
    write_split(folder, "failures", [{"id": "f1", "query_error": EVIL}])
    ctx = card_context("t: invert", "invert", cfg or {"name": "t"}, stats or {}, {"inverted": len(rows), "failures": 1},
                       sections)
    return write_card(folder, ctx).read_text()


def test_card_header_has_configs_and_dataset_info_matching_the_shards(tmp_path):
    import datasets

    rows = [{"id": str(i), "problem": f"p{i}", "inverted_trace": "t", "n": i} for i in range(7)]
    text = _stage(tmp_path, rows)
    header = validate_card(text, tmp_path)
    assert [c["config_name"] for c in header["configs"]] == ["failures", "inverted"]
    info = {i["config_name"]: i for i in header["dataset_info"]}
    assert info["inverted"]["splits"][0]["num_examples"] == 7 and info["failures"]["splits"][0]["num_examples"] == 1
    ds = datasets.load_dataset(str(tmp_path), "inverted", split="train")
    assert ds.num_rows == 7
    assert [f["name"] for f in info["inverted"]["features"]] == list(ds.features)
    assert validate_card_yaml(text) == []  # the contract server's Hub-style metadata check


def test_model_output_cannot_break_the_card(tmp_path):
    """Outputs with ---, HTML, YAML and fences in reasons, prompts, stats and sections."""
    rows = [{"id": "1", "problem": EVIL, "inverted_trace": EVIL}]
    cfg = {"name": "t", "query": {"system_prompt": EVIL}, "models": {"target": {"backend": "toy", "model": EVIL}}}
    stats = {"failure_reasons": {EVIL: 1}, "rejected_reasons": {"inconsistent: " + EVIL: 2}, "note": EVIL}
    text = _stage(tmp_path, rows, cfg, stats, {"Summary style report": fenced(EVIL)})
    header = validate_card(text, tmp_path)
    assert set(header) == {"configs", "dataset_info", "license", "tags", "task_categories"}
    assert header["license"] == "other"  # the injected "license: mit" stayed in the body
    assert "<script>" not in text.split("```")[0]  # outside fenced blocks, HTML is escaped
    assert "&lt;script&gt;" in text
    # the fenced blocks still hold the exact text
    assert fenced(EVIL).startswith("`````\n") and EVIL in fenced(EVIL)
    for line in text.splitlines():
        if line.startswith("| failed: ") or line.startswith("| target |"):
            assert line.count(" | ") + line.count("|") >= 3 and "\\|" in line  # pipes escaped inside cells
    from huggingface_hub import DatasetCard

    assert DatasetCard(text).data.to_dict()["tags"] == ["trace-inversion", "invert", "synthetic", "reasoning"]


def test_card_records_provenance(tmp_path):
    cfg = {"name": "t", "models": {"target": {"backend": "openai-responses", "model": "o-target", "reasoning_effort": "high",
                                              "reasoning_summary": "detailed", "price_input_per_mtok": 1.0,
                                              "price_output_per_mtok": 4.0, "sampling": {"temperature": 1.0}},
                                   "inverter": {"backend": "vllm", "model": "inv-7b", "sampling": {"temperature": 0.6}}},
           "inverter_data": {"summary_style": "bubbles"}}
    stats = {"rejected_reasons": {"inconsistent after 4 rounds": 3}, "kept_verdicts": {"consistent": 5},
             "overlap_kept": {"rougeL": 41.2}, "cost_usd": 1.25, "input_tokens": 100, "output_tokens": 900}
    text = _stage(tmp_path, [{"id": "1", "inverted_trace": "t"}], cfg, stats)
    for needle in ("| target | openai-responses | o-target |", "reasoning_effort=high", "inverter user message",
                   "sha256", "| rejected: inconsistent after 4 rounds | 3 |", "| kept | rougeL | 41.2 |",
                   "| cost of the data (USD) | 1.25 |", "## Responsible use", "trace-inversion 0.1.0",
                   "## Run configuration (secrets scrubbed)", "| inverted | 1 |"):
        assert needle in text, needle


def test_card_lengths_section(tmp_path):
    """A generating stage's card shows each generation's lengths, cap hits and unit."""
    words = "word tokens (whitespace split)"
    stats = {"lengths": {
        "inverter_first_draws": {"n": 100, "unit": "tokens (Qwen2.5-7B tokenizer)", "median": 7812.0, "p90": 16384.0,
                                 "cap": 16384, "cap_hits": 31, "cap_hit_rate": 0.31, "cap_unknown": 0,
                                 "of": "first draw of each row (whole output)"},
        "reference": {"n": 100, "unit": words, "median": 3001.5, "p90": 5000.0, "cap": None, "cap_hits": 0,
                      "cap_hit_rate": None, "cap_unknown": 100, "of": "true traces (column target_trace)"}},
        "length_ratio": {"reference": "true traces (column target_trace)", "unit": "tokens (Qwen2.5-7B tokenizer)",
                         "first_draws": {"n": 100, "median_ratio": 2.4, "p90_ratio": 3.9, "ratio_of_medians": 2.6},
                         "kept": {"n": 60, "median_ratio": 2.2, "p90_ratio": None, "ratio_of_medians": 2.3}}}
    text = _stage(tmp_path, [{"id": "1", "inverted_trace": "t"}], stats=stats)
    assert "## Lengths" in text
    assert ("| inverter first draws | first draw of each row (whole output) | 100 | tokens (Qwen2.5-7B tokenizer) "
            "| 7812 | 16384 | 16384 | 31 (31.0%) |") in text
    assert f"| reference | true traces (column target_trace) | 100 | {words} | 3001.5 | 5000 | — | — |" in text
    assert "| first draws | 100 | 2.4 | 3.9 | 2.6 |" in text and "| kept | 60 | 2.2 | — | 2.3 |" in text
    assert "## Lengths" not in _stage(tmp_path / "b", [{"id": "1"}], stats={"kept": 1})  # a stage without generations


def test_validation_catches_cards_that_lie(tmp_path):
    text = _stage(tmp_path, [{"id": "1"}, {"id": "2"}])
    with pytest.raises(CardError, match="card says 2 rows, file has 3"):
        write_split(tmp_path, "inverted", [{"id": "1"}, {"id": "2"}, {"id": "3"}])
        # the card still points at the old shard name; rewrite it to the new one to isolate the count check
        import re
        from trace_inversion.data.io import split_path

        validate_card(re.sub(r"data/inverted/train-[0-9a-f]+\.parquet",
                             f"data/inverted/{split_path(tmp_path, 'inverted').name}", text), tmp_path)
    with pytest.raises(CardError, match="no configs"):
        validate_card("# just a readme\n")
    with pytest.raises(CardError, match="does not parse"):
        validate_card("---\nconfigs: [\n---\n")
    assert validate_card_yaml("---\ntags: notalist\n---\n") == ['"tags" must be an array of strings']


def test_md_cell_escapes():
    assert md_cell("a|b\n<i>`x`") == "a\\|b<br>&lt;i&gt;&#96;x&#96;"
    assert len(md_cell("x" * 1000)) == 300
