"""Model clients against a real local server speaking the OpenAI wire formats."""

import asyncio

import pytest

from trace_inversion.cache import RequestCache
from trace_inversion.clients import backoff_delay, make_client
from trace_inversion.config import ModelConfig
from trace_inversion.toy_world import ToyWorld, boxed_value


def msgs(n=8, seed=0):
    return [[{"role": "user", "content": p.text}] for p in ToyWorld(seed=seed).problems(n)], ToyWorld(seed=seed).problems(n)


def run(client, batch):
    async def go():
        try:
            return await client.query_many(batch)
        finally:
            await client.aclose()
    return asyncio.run(go())


def responses_cfg(url, **kw):
    return ModelConfig(backend="openai-responses", model="toy-target", base_url=url, reasoning_effort="medium",
                       reasoning_summary="auto", **kw)


def test_responses_api_answer_summary_usage(toy_server, tmp_path):
    srv = toy_server()
    batch, probs = msgs()
    client = make_client(responses_cfg(srv.base_url, price_input_per_mtok=1.0, price_output_per_mtok=4.0),
                         RequestCache(tmp_path / "c.sqlite"))
    res = run(client, batch)
    w = ToyWorld()
    for r, p in zip(res, probs):
        assert r.ok and r.attempts == 1 and not r.cached
        assert boxed_value(r.response["answer"]) == str(p.answer)
        # summary parts joined in order
        assert r.response["summary"].replace("\n\n", "; ") == w.target_response(p)["summary"]
        assert r.response["usage"]["reasoning_tokens"] > 0
    assert client.usage.cost_usd > 0


def test_chat_completions_reasoning_content(toy_server, tmp_path):
    srv = toy_server()
    batch, probs = msgs()
    cfg = ModelConfig(backend="openai-chat", model="toy-target", base_url=srv.base_url)
    res = run(make_client(cfg, RequestCache(tmp_path / "c.sqlite")), batch)
    assert all(r.ok for r in res)
    assert [boxed_value(r.response["answer"]) for r in res] == [str(p.answer) for p in probs]
    assert all(r.response["summary"].startswith("step 2 gives") for r in res)


def test_replay_from_cache_sends_nothing(toy_server, tmp_path):
    srv = toy_server()
    batch, _ = msgs(20)
    cache = RequestCache(tmp_path / "c.sqlite")
    first = run(make_client(responses_cfg(srv.base_url), cache), batch)
    assert srv.stats()["total"] == 20
    second = run(make_client(responses_cfg(srv.base_url), RequestCache(tmp_path / "c.sqlite")), batch)
    assert srv.stats()["total"] == 20  # nothing reached the server
    assert all(r.cached and r.attempts == 0 for r in second)
    assert [r.response for r in first] == [r.response for r in second]


def test_retries_429_with_retry_after(toy_server, tmp_path):
    srv = toy_server(fail_first=2, retry_after=0.2)
    batch, _ = msgs(4)
    res = run(make_client(responses_cfg(srv.base_url), RequestCache(tmp_path / "c.sqlite")), batch)
    assert all(r.ok and r.attempts == 3 for r in res)
    assert all(r.latency_s >= 0.4 for r in res)  # two waits of at least Retry-After
    assert srv.stats()["total"] == 12


def test_gives_up_with_reason_after_max_retries(toy_server, tmp_path):
    srv = toy_server(p500=1.0)
    batch, _ = msgs(3)
    res = run(make_client(responses_cfg(srv.base_url, max_retries=2), RequestCache(tmp_path / "c.sqlite")), batch)
    assert all(not r.ok and r.attempts == 3 and "gave up after 3 attempts" in r.error and "500" in r.error for r in res)


def test_timeouts_and_malformed_bodies_are_retried(toy_server, tmp_path):
    srv = toy_server(p_timeout=1.0, timeout_stall=5)
    batch, _ = msgs(2)
    res = run(make_client(responses_cfg(srv.base_url, max_retries=1, timeout_s=0.3), RequestCache(tmp_path / "a.sqlite")), batch)
    assert all(not r.ok and "timeout" in r.error.lower() for r in res)
    srv2 = toy_server(p_malformed=1.0)
    res = run(make_client(responses_cfg(srv2.base_url, max_retries=1), RequestCache(tmp_path / "b.sqlite")), batch)
    assert all(not r.ok and "malformed" in r.error for r in res)


def test_client_errors_are_not_retried(toy_server, tmp_path):
    srv = toy_server()
    # a body the server rejects with 400: the openai client sends JSON, so use a bad route
    cfg = ModelConfig(backend="openai-chat", model="toy-target", base_url=srv.url + "/nope/v1", max_retries=5)
    res = run(make_client(cfg, RequestCache(tmp_path / "c.sqlite")), [[{"role": "user", "content": "x"}]])
    assert not res[0].ok and res[0].attempts == 1 and "HTTP 404" in res[0].error


def test_toy_backend_offline(tmp_path):
    batch, probs = msgs(5)
    res = run(make_client(ModelConfig(backend="toy", model="toy-target"), RequestCache(tmp_path / "c.sqlite")), batch)
    assert [boxed_value(r.response["answer"]) for r in res] == [str(p.answer) for p in probs]
    sur = run(make_client(ModelConfig(backend="toy", model="toy-surrogate"), RequestCache(tmp_path / "c.sqlite")), batch)
    assert all("</think>" in r.response["answer"] for r in sur)


@pytest.mark.parametrize("attempt", [0, 3, 10])
def test_backoff_is_jittered_capped_and_honours_retry_after(attempt):
    import random

    rng = random.Random(0)
    ds = [backoff_delay(attempt, base=0.25, cap=5, rng=rng) for _ in range(200)]
    assert all(0 <= d <= min(5, 0.25 * 2 ** attempt) for d in ds) and len(set(ds)) > 100
    assert all(backoff_delay(attempt, cap=5, retry_after=7, rng=rng) >= 7 for _ in range(20))


def test_parse_responses_joins_summary_parts_of_every_reasoning_item_in_order():
    from trace_inversion.clients import parse_responses_output

    body = {"id": "r1", "status": "completed", "output": [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "**Plan** first"},
                                          {"type": "summary_text", "text": "second"}]},
        {"type": "reasoning", "summary": []},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "third"}]},
        {"type": "message", "content": [{"type": "output_text", "text": "The answer is "},
                                        {"type": "refusal", "refusal": "x"},
                                        {"type": "output_text", "text": "\\boxed{7}."}]}],
        "usage": {"input_tokens": 5, "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 40}}}
    r = parse_responses_output(body)
    assert r["summary"] == "**Plan** first\n\nsecond\n\nthird"
    assert r["answer"] == "The answer is \\boxed{7}."
    assert r["usage"] == {"input_tokens": 5, "output_tokens": 50, "reasoning_tokens": 40}
    assert parse_responses_output({**body, "status": "incomplete"})["finish_reason"] == "length"
    assert parse_responses_output({"output": [], "usage": None})["summary"] == ""


@pytest.mark.parametrize("bad", [None, "text", {"id": "x"}, {"output": "nope"}])
def test_parse_responses_rejects_malformed_bodies(bad):
    from trace_inversion.clients import parse_responses_output

    with pytest.raises(ValueError):
        parse_responses_output(bad)


def test_parse_chat_reasoning_content_and_samples():
    from trace_inversion.clients import parse_chat_output

    body = {"choices": [{"message": {"content": "a", "reasoning_content": "why"}, "finish_reason": "stop"},
                        {"message": {"content": "b", "reasoning": "r2"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 9}}
    r = parse_chat_output(body)
    assert (r["answer"], r["summary"]) == ("a", "why")
    assert r["samples"][1] == {"answer": "b", "summary": "r2", "finish_reason": "length"}
    assert parse_chat_output({"choices": [{"message": {"content": "x"}}]})["summary"] is None
    with pytest.raises(ValueError):
        parse_chat_output({"choices": []})


def test_budget_never_exceeded_under_concurrency(toy_server, tmp_path):
    from trace_inversion.clients import Budget

    srv = toy_server(latency=0.02)
    batch, _ = msgs(40)
    budget = Budget(0.5)
    cfg = responses_cfg(srv.base_url, price_input_per_mtok=1000.0, price_output_per_mtok=1000.0, concurrency=16)
    res = run(make_client(cfg, RequestCache(tmp_path / "c.sqlite"), budget=budget), batch)
    ok = [r for r in res if r.ok]
    assert 0 < len(ok) < 40 and budget.spent <= 0.5
    assert all(r.error.startswith("budget cap reached") for r in res if not r.ok)
    assert srv.stats()["total"] == len(ok)
