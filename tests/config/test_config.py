"""Run configs: the default loads; bad configs fail with the field and the fix."""

import os

import pytest
import yaml

from trace_inversion.config import ConfigError, RunConfig, load_config, parse_config, parse_override


def write(tmp_path, text: str, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return p


def errors_for(data) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return e.value.problems


def base(**models):
    return {"models": {"target": {"backend": "toy", "model": "toy-target", **models}}}


def test_embedded_default_loads():
    cfg = load_config()
    assert cfg.data.source == "toy"
    assert cfg.models.target.backend == "toy"
    assert cfg.models.target.sampling.temperature == 0.7  # paper's inversion decoding is the default preset
    assert cfg.models.target.sampling.top_k == 50


def test_overrides_merge_and_validate():
    cfg = load_config(None, parse_override("data.toy.n_train=17"))
    assert cfg.data.toy.n_train == 17
    with pytest.raises(ConfigError, match="data.toy.n_train"):
        load_config(None, parse_override("data.toy.n_train=-1"))


# Each case: (config data, field that must be named, text of the fix that must appear)
BAD = [
    ("temperature out of range", base(sampling={"temperature": 3.5}), "models.target.sampling.temperature", "<= 2"),
    ("top_p zero", base(sampling={"top_p": 0}), "models.target.sampling.top_p", "> 0"),
    ("top_k zero", base(sampling={"top_k": 0}), "models.target.sampling.top_k", "-1"),
    ("max_new_tokens negative", base(sampling={"max_new_tokens": -5}), "max_new_tokens", ">= 1"),
    ("wrong type", base(sampling={"n": "many"}), "models.target.sampling.n", "int"),
    ("typo field", base(sampling={"temprature": 0.5}), "models.target.sampling.temprature", "did you mean 'temperature'"),
    ("unknown backend", {"models": {"target": {"backend": "gpt", "model": "x"}}}, "models.target.backend", "openai-responses"),
    ("unknown toy model", {"models": {"target": {"backend": "toy", "model": "gpt-5"}}}, "models.target", "toy-target"),
    ("chat without base_url", {"models": {"target": {"backend": "openai-chat", "model": "m"}}}, "models.target", "base_url"),
    ("bad base_url", {"models": {"target": {"backend": "openai-chat", "model": "m", "base_url": "localhost:8000"}}},
     "models.target.base_url", "http://"),
    ("api key in config", base(api_key="sk-abcdefghijklmnopqrstuvwxyz123456"), "models.target", "environment variable"),
    ("api_key_env holds a key", base(api_key_env="sk-abcdefghijklmnopqrstuvwxyz123456"), "models.target", "environment variable"),
    ("missing model", {"models": {"target": {"backend": "toy"}}}, "models.target.model", "add 'model'"),
    ("reasoning on chat", {"models": {"target": {"backend": "openai-chat", "model": "m", "base_url": "http://x/v1",
                                               "reasoning_effort": "high"}}}, "models.target", "remove"),
    ("bad effort", {"models": {"target": {"backend": "openai-responses", "model": "m", "reasoning_effort": "max"}}},
     "models.target.reasoning_effort", "'medium'"),
    ("missing data file", {"data": {"source": "nope/missing.parquet"}}, "data.source", "check the path"),
    ("bad data suffix", {"data": {"source": "problems.txt"}}, "data.source", ".parquet"),
    ("bad toy ops", {"data": {"toy": {"ops": "+/"}}}, "data.toy.ops", "'+-*'"),
    ("negative concurrency", base(concurrency=0), "models.target.concurrency", ">= 1"),
    ("path traversal in name", {"name": "../../etc"}, "name", "no '/' or '..'"),
    ("bad hub id", {"output": {"hub_repo_id": "not a repo"}}, "output.hub_repo_id", "owner/name"),
    ("bad version tag", {"output": {"version": "latest"}}, "output.version", "v<number>"),
    ("missing vllm folder", {"models": {"inverter": {"backend": "vllm", "model": "./no/such/model"}}}, "models.inverter",
     "does not exist"),
    ("negative price", base(price_input_per_mtok=-1), "price_input_per_mtok", ">= 0"),
    ("unknown section", {"modles": {}}, "modles", "did you mean 'models'"),
]


@pytest.mark.parametrize("data,field,fix", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_names_field_and_fix(data, field, fix):
    problems = errors_for(data)
    joined = "\n".join(problems)
    assert field in joined, joined
    assert fix in joined, joined


def test_all_problems_reported_at_once():
    problems = errors_for(base(sampling={"temperature": 9, "top_p": 5, "n": 0}))
    assert len(problems) == 3


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="line 2"):
        load_config(write(tmp_path, "name: x\n  bad: [unclosed\n"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(write(tmp_path, b"name: \xff\xfe\n"))
    with pytest.raises(ConfigError, match="empty"):
        load_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_secret_values_never_serialised(monkeypatch):
    key = "sk-test-" + "x" * 40
    monkeypatch.setenv("MY_TARGET_KEY", key)
    cfg = parse_config({"models": {"target": {"backend": "openai-responses", "model": "gpt-5-mini",
                                              "api_key_env": "MY_TARGET_KEY", "reasoning_effort": "medium"}}})
    assert cfg.models.target.api_key() == key  # read from the environment at call time
    dumped = cfg.to_yaml()
    assert key not in dumped and "MY_TARGET_KEY" in dumped
    assert key not in repr(cfg) and key not in str(cfg.model_dump())


def test_schema_has_descriptions_for_every_field():
    schema = RunConfig.model_json_schema()

    def walk(node, path=""):
        for name, prop in node.get("properties", {}).items():
            assert "description" in prop, f"{path}{name} lacks a description"
    walk(schema)
    for name, d in schema.get("$defs", {}).items():
        walk(d, f"{name}.")


def test_local_roles_start_from_their_own_decoding_presets():
    """Surrogate as R1-distill models decode, compressor with Qwen2.5-Instruct's defaults,
    judge greedy, inverter with the paper's inversion decoding; a field the user sets wins;
    the toy backend (which ignores sampling) keeps the paper's preset, so its keys are stable."""
    from trace_inversion.config import PAPER_SAMPLING, ROLE_SAMPLING

    cfg = load_config(None, {"models": {
        "surrogate": {"backend": "vllm", "model": "s"},
        "compressor": {"backend": "transformers", "model": "c", "sampling": {"temperature": 0.1}},
        "inverter": {"backend": "vllm", "model": "i"},
        "judge": {"backend": "vllm", "model": "j"}}})
    m = cfg.models
    assert m.surrogate.sampling.temperature == 0.6 and m.surrogate.sampling.max_new_tokens == 32768
    assert m.compressor.sampling.temperature == 0.1 and m.compressor.sampling.top_k == ROLE_SAMPLING["compressor"]["top_k"]
    assert m.judge.sampling.temperature == 0.0
    assert {k: getattr(m.inverter.sampling, k) for k in PAPER_SAMPLING} == PAPER_SAMPLING
    toy = load_config(None, {"models": {"surrogate": {"backend": "toy", "model": "toy-surrogate"}}})
    assert {k: getattr(toy.models.surrogate.sampling, k) for k in PAPER_SAMPLING} == PAPER_SAMPLING
