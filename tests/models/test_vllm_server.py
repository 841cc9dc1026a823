"""The tiny offline model served by a real vLLM CPU server, called through the cache."""

import asyncio

import pytest

from trace_inversion.models.cache import RequestCache
from trace_inversion.models.clients import make_client
from trace_inversion.config import ModelConfig


@pytest.mark.slow
def test_chat_client_against_vllm_cpu_server(vllm_server, tmp_path):
    assert "tiny" in str(vllm_server.get("/v1/models"))
    cfg = ModelConfig(backend="openai-chat", model="tiny", base_url=vllm_server.base_url,
                      sampling={"temperature": 0.7, "max_new_tokens": 16, "n": 2, "seed": 1})
    cache = RequestCache(tmp_path / "c.sqlite")
    batch = [[{"role": "user", "content": f"Evaluate left to right modulo 10: {i} + 4"}] for i in range(4)]

    async def go(client):
        try:
            return await client.query_many(batch)
        finally:
            await client.aclose()

    first = asyncio.run(go(make_client(cfg, cache)))
    assert all(r.ok and not r.cached for r in first)
    assert all(len(r.response["samples"]) == 2 for r in first)  # n samples per request
    assert all(0 < r.response["usage"]["output_tokens"] <= 32 for r in first)
    again = asyncio.run(go(make_client(cfg, RequestCache(tmp_path / "c.sqlite"))))
    assert all(r.cached for r in again) and [r.response for r in again] == [r.response for r in first]
