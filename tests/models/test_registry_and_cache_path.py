"""The model layer without loading a model: the registry builds every backend's LLM
with the config's engine settings, CachedModel is the one cache path for any distilabel
LLM (the project's and distilabel's own), and the project's LLMs work in distilabel's
own Tasks."""

from typing import Optional

import pytest
from distilabel.models.llms.base import AsyncLLM

from trace_inversion.models import CachedModel, llm_from_config, model_for_step
from trace_inversion.models.cached import local_chunk_size
from trace_inversion.models.cache import RequestCache
from trace_inversion.models.project import ToyLLM
from trace_inversion.toy.world import ToyWorld

PROBLEM = [{"role": "user", "content": ToyWorld().problems(1)[0].text}]


def test_registry_builds_local_roles_with_their_engine_settings(tiny_lm_dir):
    v = llm_from_config({"backend": "vllm", "model": str(tiny_lm_dir), "dtype": "float16", "cuda_devices": [1, 2],
                         "tensor_parallel_size": 2, "gpu_memory_utilization": 0.45, "max_model_len": 2048,
                         "engine_kwargs": {"enable_prefix_caching": True}})
    assert type(v).__name__ == "VLLM" and v.dtype == "float16" and v.cuda_devices == [1, 2]
    assert v.extra_kwargs == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.45, "max_model_len": 2048,
                              "enable_prefix_caching": True}
    # requests per engine call: 256, or as many as the engine runs at once
    assert local_chunk_size(v) == 256
    wide = llm_from_config({"backend": "vllm", "model": str(tiny_lm_dir), "engine_kwargs": {"max_num_seqs": 1024}})
    assert local_chunk_size(wide) == 1024
    t = llm_from_config({"backend": "transformers", "model": str(tiny_lm_dir), "dtype": "bfloat16",
                         "cuda_devices": [0]})
    assert type(t).__name__ == "TransformersLLM" and t.cfg.dtype == "bfloat16" and t.cuda_devices == [0]
    with pytest.raises(ValueError, match="applies only to the local backends"):
        llm_from_config({"backend": "toy", "model": "toy-target", "dtype": "float16"})


def test_a_budget_beside_a_local_role_costs_nothing_and_loads(tiny_lm_dir, tmp_path):
    llm = llm_from_config({"backend": "transformers", "model": str(tiny_lm_dir)})
    m = model_for_step(llm, str(tmp_path / "c.sqlite"), budget_usd=1.0)
    assert m.backend == "transformers"


class CountingLLM(AsyncLLM):
    """A distilabel AsyncLLM of another vendor's shape: no num_generations argument."""

    _num_generations_param_supported = False
    calls: int = 0

    @property
    def model_name(self) -> str:
        return "vendor-model"

    async def agenerate(self, input, temperature: Optional[float] = None) -> dict:
        self.calls += 1
        if "fail" in input[-1]["content"]:
            raise RuntimeError("vendor error 400: bad request")
        return {"generations": [f"echo {input[-1]['content']} at {temperature}"],
                "statistics": {"input_tokens": [3], "output_tokens": [4]}}


def test_any_distilabel_llm_goes_through_the_one_cache(tmp_path):
    llm = CountingLLM(generation_kwargs={"temperature": 0.3})
    m = CachedModel(llm, RequestCache(tmp_path / "c.sqlite"))
    batch = [PROBLEM, [{"role": "user", "content": "fail please"}]]
    first = m.generate(batch, seeds=[1, 1])
    assert first[0].ok and first[0].response["answer"].endswith("at 0.3") and not first[0].cached
    assert not first[1].ok and "vendor error 400" in first[1].error  # the row keeps its reason
    again = CachedModel(llm, RequestCache(tmp_path / "c.sqlite")).generate(batch, seeds=[1, 1])
    assert again[0].cached and llm.calls == 3  # the success replayed; only the failure was sent again
    assert m.key(PROBLEM, 1) != m.key(PROBLEM, 2) != m.key(PROBLEM, 1, retry=1)  # seed and retry are requests
    other = CachedModel(CountingLLM(generation_kwargs={"temperature": 0.9}), RequestCache(tmp_path / "c.sqlite"))
    assert other.key(PROBLEM, 1) != m.key(PROBLEM, 1)  # generation kwargs are part of the key
    assert m.usage.output_tokens == 4 and m.usage.requests == 1 and m.usage.cached_requests == 0


def test_one_rows_unexpected_error_is_that_rows_reason(tmp_path, monkeypatch):
    m = CachedModel(ToyLLM(model="toy-target"), RequestCache(tmp_path / "c.sqlite"))
    real = m.llm.call

    async def call(messages, seed=None):
        if "boom" in messages[-1]["content"]:
            raise KeyError("boom")
        return await real(messages, seed)

    object.__setattr__(m.llm, "call", call)
    res = m.generate([PROBLEM, [{"role": "user", "content": "boom"}]])
    assert res[0].ok and not res[1].ok and "KeyError" in res[1].error


def test_project_llms_work_in_distilabels_own_task(tmp_path):
    from distilabel.steps.tasks import TextGeneration

    task = TextGeneration(llm=ToyLLM(model="toy-target", generation_kwargs={"temperature": 0.5}))
    task.load()
    out = next(task.process([{"instruction": PROBLEM[0]["content"]}]))
    assert "\\boxed" in out[0]["generation"]


def test_toy_world_settings_that_change_responses_are_in_the_key(tmp_path):
    key = lambda **w: CachedModel(ToyLLM(model="toy-surrogate", world=w), RequestCache(":memory:")).key(PROBLEM)  # noqa: E731
    assert key() == key(n_train=50, n_test=7)  # dataset sizes change no response
    assert key() != key(surrogate_error_rate=0.5) != key(seed=1)


def test_keep_verified_writes_each_excluded_row_once(tmp_path):
    import json

    from trace_inversion.steps.verified_filter import KeepVerified

    step = KeepVerified(excluded_path=str(tmp_path / "excluded.jsonl"))
    step.load()
    rows = [{"id": "a", "inversion_status": "verified", "inversion_reason": "consistent"},
            {"id": "b", "inversion_status": "rejected", "inversion_reason": "inconsistent: 3 vs 4"}]
    assert [r["id"] for r in next(step.process(rows))] == ["a"]
    next(step.process(rows))  # a rerun meets the same rows
    lines = [json.loads(x) for x in (tmp_path / "excluded.jsonl").read_text().splitlines()]
    assert [(r["id"], r["inversion_reason"]) for r in lines] == [("b", "inconsistent: 3 vs 4")]
