"""Model clients against a real local server speaking the OpenAI wire formats."""

import asyncio

import pytest

from trace_inversion.models.cache import RequestCache
from trace_inversion.models.clients import backoff_delay, make_client
from trace_inversion.config import ModelConfig
from trace_inversion.toy.world import ToyWorld, boxed_value


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


def test_chat_reasoning_content_is_a_full_trace(toy_server, tmp_path):
    """A vLLM server with a reasoning parser returns the whole chain of thought as
    reasoning_content: it is the trace (reasoning_field defaults to trace), never the summary."""
    srv = toy_server(flavor="vllm")
    batch, probs = msgs()
    cfg = ModelConfig(backend="openai-chat", model="toy-target", base_url=srv.base_url)
    res = run(make_client(cfg, RequestCache(tmp_path / "c.sqlite")), batch)
    assert all(r.ok for r in res)
    assert [boxed_value(r.response["answer"]) for r in res] == [str(p.answer) for p in probs]
    w = ToyWorld()
    assert [r.response["trace"] for r in res] == [w.target_response(p)["hidden_trace"] for p in probs]
    assert all(r.response["summary"] is None for r in res)
    # the stored response keeps the field as received; reasoning_field re-reads it without a new call
    as_summary = run(make_client(cfg.model_copy(update={"reasoning_field": "summary"}),
                                 RequestCache(tmp_path / "c.sqlite")), batch)
    assert all(r.cached and r.response["summary"] == r0.response["trace"] and r.response["trace"] is None
               for r, r0 in zip(as_summary, res))
    assert srv.stats()["total"] == 8 and srv.stats()["rejected"] == 0
    # OpenAI's own chat API exposes no reasoning at all
    srv2 = toy_server()
    res = run(make_client(ModelConfig(backend="openai-chat", model="toy-target", base_url=srv2.base_url),
                          RequestCache(tmp_path / "d.sqlite")), batch[:2])
    assert all(r.ok and r.response["trace"] is None and r.response["summary"] is None for r in res)


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
    from trace_inversion.models.clients import parse_responses_output

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
    assert r["reasoning"] == "**Plan** first\n\nsecond\n\nthird"
    assert r["answer"] == "The answer is \\boxed{7}."
    assert r["usage"] == {"input_tokens": 5, "output_tokens": 50, "reasoning_tokens": 40, "cached_input_tokens": 0}
    assert (r["finish_reason"], r["incomplete_reason"]) == ("stop", None)
    cut = parse_responses_output({**body, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}})
    assert (cut["finish_reason"], cut["incomplete_reason"]) == ("length", "max_output_tokens")
    cf = parse_responses_output({**body, "status": "incomplete", "incomplete_details": {"reason": "content_filter"}})
    assert (cf["finish_reason"], cf["incomplete_reason"]) == ("content_filter", "content_filter")
    assert parse_responses_output({**body, "status": "incomplete"})["finish_reason"] == "unknown"
    assert parse_responses_output({"output": [], "usage": None})["reasoning"] == ""
    cached = parse_responses_output({**body, "usage": {**body["usage"], "input_tokens_details": {"cached_tokens": 3}}})
    assert cached["usage"]["cached_input_tokens"] == 3
    # as a stage reads it: the Responses API's reasoning is a summary by default
    from trace_inversion.models.clients import present
    assert present(r, "summary")["summary"] == r["reasoning"] and present(r, "summary")["trace"] is None
    assert present(r, "none")["summary"] is None


@pytest.mark.parametrize("bad", [None, "text", {"id": "x"}, {"output": "nope"}])
def test_parse_responses_rejects_malformed_bodies(bad):
    from trace_inversion.models.clients import parse_responses_output

    with pytest.raises(ValueError):
        parse_responses_output(bad)


def test_parse_chat_reasoning_content_and_samples():
    from trace_inversion.models.clients import parse_chat_output

    body = {"choices": [{"message": {"content": "a", "reasoning_content": "why"}, "finish_reason": "stop"},
                        {"message": {"content": "b", "reasoning": "r2"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 9}}
    r = parse_chat_output(body)
    assert (r["answer"], r["reasoning"]) == ("a", "why")
    assert r["samples"][1] == {"answer": "b", "reasoning": "r2", "finish_reason": "length"}
    assert parse_chat_output({"choices": [{"message": {"content": "x"}}]})["reasoning"] is None
    from trace_inversion.models.clients import present
    shown = present(r, "trace")
    assert (shown["trace"], shown["summary"]) == ("why", None) and shown["samples"][1]["trace"] == "r2"
    assert parse_chat_output({**body, "usage": {"prompt_tokens": 3, "completion_tokens": 9,
                                                "prompt_tokens_details": {"cached_tokens": 2}}}
                             )["usage"]["cached_input_tokens"] == 2
    with pytest.raises(ValueError):
        parse_chat_output({"choices": []})


def test_budget_never_exceeded_under_concurrency(toy_server, tmp_path):
    from trace_inversion.models.clients import Budget

    srv = toy_server(latency=0.02)
    batch, _ = msgs(40)
    budget = Budget(1.0)
    cfg = responses_cfg(srv.base_url, price_input_per_mtok=1000.0, price_output_per_mtok=1000.0, concurrency=16,
                        sampling={"max_new_tokens": 200})
    res = run(make_client(cfg, RequestCache(tmp_path / "c.sqlite"), budget=budget), batch)
    ok = [r for r in res if r.ok]
    assert 0 < len(ok) < 40 and budget.spent <= 1.0 and budget.reserved == 0
    assert all(r.error.startswith("budget cap reached") for r in res if not r.ok)
    assert srv.stats()["total"] == len(ok)
    billed = srv.stats()["billed"]
    assert (billed["input_tokens"] + billed["output_tokens"]) * 1000 / 1e6 <= 1.0  # what the provider charged
    assert budget.spent == pytest.approx(sum(r.response["usage"]["input_tokens"] + r.response["usage"]["output_tokens"]
                                             for r in ok) * 1000 / 1e6, abs=1e-6)


# ----------------------------------------------------------------------------- what goes on the wire
def test_api_targets_are_sent_only_the_fields_the_config_sets(toy_server, tmp_path):
    srv = toy_server()
    batch, _ = msgs(2)
    run(make_client(responses_cfg(srv.base_url), RequestCache(tmp_path / "a.sqlite")), batch)
    assert set(srv.stats()["fields_seen"]) == {"model", "input", "max_output_tokens", "store", "reasoning"}
    srv.post("/reset")
    run(make_client(ModelConfig(backend="openai-chat", model="toy-target", base_url=srv.base_url),
                    RequestCache(tmp_path / "b.sqlite")), batch)
    assert set(srv.stats()["fields_seen"]) == {"model", "messages"}  # no paper preset (top_k, repetition_penalty)
    srv.post("/reset")
    cfg = ModelConfig(backend="openai-chat", model="toy-target", base_url=srv.base_url,
                      sampling={"temperature": 0.6, "max_new_tokens": 512, "seed": 3, "top_k": -1})
    res = run(make_client(cfg, RequestCache(tmp_path / "c.sqlite")), batch)
    assert all(r.ok for r in res) and srv.stats()["rejected"] == 0
    assert set(srv.stats()["fields_seen"]) == {"model", "messages", "temperature", "max_tokens", "seed"}


def test_responses_store_defaults_off_and_max_output_tokens_leaves_room_for_reasoning():
    from trace_inversion.models.clients import OpenAIResponsesClient

    c = OpenAIResponsesClient(responses_cfg("http://127.0.0.1:1/v1"))
    body = c.body([{"role": "user", "content": "x"}])
    assert body["store"] is False and body["max_output_tokens"] == 32768
    c = OpenAIResponsesClient(responses_cfg("http://127.0.0.1:1/v1", store=True, sampling={"max_new_tokens": 4000}))
    body = c.body([{"role": "user", "content": "x"}])
    assert body["store"] is True and body["max_output_tokens"] == 4000


def test_reasoning_models_over_chat_get_max_completion_tokens(toy_server, tmp_path):
    srv = toy_server()
    batch, _ = msgs(2)
    cfg = ModelConfig(backend="openai-chat", model="o4-mini", base_url=srv.base_url)
    res = run(make_client(cfg, RequestCache(tmp_path / "c.sqlite")), batch)
    assert all(r.ok for r in res) and srv.stats()["rejected"] == 0
    assert srv.stats()["fields_seen"].get("max_completion_tokens") == 2 and "max_tokens" not in srv.stats()["fields_seen"]


@pytest.mark.parametrize("bad,field", [
    ({"backend": "openai-chat", "base_url": "https://api.openai.com/v1", "model": "gpt-4.1",
      "sampling": {"top_k": 50}}, "sampling.top_k"),
    ({"backend": "openai-chat", "base_url": "http://127.0.0.1:8000/v1", "model": "m",
      "sampling": {"repetition_penalty": 1.05}}, "sampling.repetition_penalty"),
    ({"backend": "openai-responses", "model": "gpt-5-mini", "sampling": {"temperature": 0.7}}, "sampling.temperature"),
    ({"backend": "openai-responses", "model": "o3", "sampling": {"top_p": 0.9}}, "sampling.top_p"),
    ({"backend": "openai-responses", "model": "gpt-4.1", "sampling": {"seed": 1}}, "sampling.seed"),
    ({"backend": "openai-responses", "model": "gpt-4.1", "sampling": {"n": 4}}, "sampling.n"),
    ({"backend": "openai-responses", "model": "gpt-4.1", "sampling": {"max_new_tokens": 8}}, "sampling.max_new_tokens"),
    ({"backend": "openai-chat", "base_url": "https://api.openai.com/v1", "model": "gpt-5", "sampling": {"temperature": 1}},
     "sampling.temperature"),
    ({"backend": "openai-chat", "base_url": "https://api.openai.com/v1", "model": "gpt-4o",
      "extra_body": {"top_k": 20}}, "extra_body.top_k"),
    ({"backend": "openai-chat", "base_url": "http://127.0.0.1:8000/v1", "model": "m",
      "extra_body": {"temperature": 0.1}}, "extra_body.temperature"),
    ({"backend": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct", "extra_body": {"top_k": 20}}, "extra_body"),
])
def test_parameters_a_service_rejects_are_config_errors_naming_the_field(bad, field):
    from trace_inversion.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as e:
        parse_config({"models": {"target": bad}})
    assert field in str(e.value) and "fix:" in str(e.value)


def test_local_roles_keep_the_paper_presets_and_their_request_keys(tmp_path):
    from trace_inversion.models.cache import request_key
    from trace_inversion.models.clients import ToyTargetClient

    cfg = ModelConfig(backend="toy", model="toy-target")
    assert cfg.sampling.model_dump() == {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.05,
                                         "max_new_tokens": 8192, "n": 1, "seed": None}
    assert ModelConfig(backend="vllm", model="x/y", sampling={"temperature": 0.0}).sampling.top_k == 50
    m = [{"role": "user", "content": "q"}]
    old = request_key("toy", "toy-target", {"messages": m, "params": {"temperature": 0.7, "top_p": 0.9, "top_k": 50,
                      "repetition_penalty": 1.05, "max_new_tokens": 8192, "seed": None}, "n": 1})
    # the toy world's settings are part of a toy request's key (changing the world never
    # replays its old responses); the rest of the key is as before
    world = {"seed": 0, "n_train": 2000, "n_test": 500, "n_ops": 6, "modulus": 10, "ops": "+-*", "summary_every": 2,
             "surrogate_reliable_steps": 3, "surrogate_error_rate": 0.3, "surrogate_errors": "random",
             "inverter_error_rate": 0.1, "inverter_forces_answer": 0.5}
    assert ToyTargetClient(cfg).payload(m) == {"messages": m, "params": {"temperature": 0.7, "top_p": 0.9,
                                               "top_k": 50, "repetition_penalty": 1.05, "max_new_tokens": 8192,
                                               "seed": None}, "n": 1}
    key = make_client(cfg, RequestCache(tmp_path / "k.sqlite")).key(m)
    assert key != old
    from trace_inversion.config import ToyWorldConfig

    assert {k: v for k, v in ToyWorldConfig().model_dump().items() if k in world} == world
    other = make_client(cfg, RequestCache(tmp_path / "k.sqlite"), world=ToyWorldConfig(surrogate_error_rate=0.5)).key(m)
    assert other != key


def test_request_keys_carry_the_server_and_a_declared_revision():
    from trace_inversion.models.clients import OpenAIChatClient, OpenAIResponsesClient

    m = [{"role": "user", "content": "q"}]

    def key(**kw):
        cfg = ModelConfig(**{"backend": "openai-chat", "model": "ckpt", "base_url": "http://a:8000/v1", **kw})
        return make_client(cfg, RequestCache(':memory:')).key(m)

    assert key() == key(base_url="http://a:8000/v1/")
    assert key() != key(base_url="http://b:8000/v1")
    assert key() != key(model_revision="step-2000") != key(model_revision="step-4000")
    r = lambda url=None, **kw: make_client(responses_cfg(url, **kw), RequestCache(':memory:')).key(m)  # noqa: E731
    assert r() == r("https://api.openai.com/v1") != r("http://127.0.0.1:9/v1")
    assert r() == r(store=True)  # storing a response does not change it


# ----------------------------------------------------------------------------- Retry-After
@pytest.mark.parametrize("form,wait,least", [("seconds", 0.6, 0.55), ("ms", 0.6, 0.55), ("date", 1.6, 0.55)])
def test_retry_after_in_every_form_is_honoured(toy_server, tmp_path, form, wait, least):
    srv = toy_server(fail_first=1, retry_after=wait, retry_after_form=form)
    batch, _ = msgs(3)
    res = run(make_client(responses_cfg(srv.base_url), RequestCache(tmp_path / "c.sqlite")), batch)
    assert all(r.ok and r.attempts == 2 for r in res)
    assert all(r.latency_s >= least for r in res), [r.latency_s for r in res]


def test_a_retry_after_longer_than_the_maximum_wait_fails_at_once_with_the_reason(toy_server, tmp_path):
    srv = toy_server(fail_first=5, retry_after=900)
    batch, _ = msgs(2)
    res = run(make_client(responses_cfg(srv.base_url, max_retry_wait_s=5), RequestCache(tmp_path / "c.sqlite")), batch)
    assert all(not r.ok and r.attempts == 1 and "retry after 900s" in r.error and "max_retry_wait_s" in r.error
               and r.latency_s < 3 for r in res)


def test_parse_retry_after_forms():
    import email.utils
    import time

    from trace_inversion.models.clients import parse_retry_after

    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    d = parse_retry_after({"retry-after": email.utils.formatdate(time.time() + 120, usegmt=True)})
    assert 118 <= d <= 121
    assert parse_retry_after({"retry-after": email.utils.formatdate(time.time() - 60, usegmt=True)}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None
    assert backoff_delay(0, retry_after=900, max_wait=60) == 60
    assert 7 <= backoff_delay(0, retry_after=7, max_wait=600) <= 7.7


# ----------------------------------------------------------------------------- incomplete responses, prices, keys
def test_incomplete_reasons_are_kept_apart(toy_server, tmp_path):
    srv = toy_server()
    batch, _ = msgs(3)
    res = run(make_client(responses_cfg(srv.base_url, sampling={"max_new_tokens": 16}),
                          RequestCache(tmp_path / "a.sqlite")), batch)
    assert all(r.ok and r.response["finish_reason"] == "length" and r.response["incomplete_reason"] == "max_output_tokens"
               and r.response["usage"]["output_tokens"] == 16 for r in res)
    srv2 = toy_server(p_content_filter=1.0)
    res = run(make_client(responses_cfg(srv2.base_url), RequestCache(tmp_path / "b.sqlite")), batch)
    assert all(r.ok and r.response["finish_reason"] == "content_filter" for r in res)


def test_cached_input_tokens_are_priced_apart(toy_server, tmp_path):
    from trace_inversion.models.clients import cost_of

    cfg = responses_cfg(None, price_input_per_mtok=1.0, price_cached_input_per_mtok=0.1, price_output_per_mtok=10.0)
    u = {"input_tokens": 1000, "cached_input_tokens": 800, "output_tokens": 100}
    assert cost_of(u, cfg) == pytest.approx((200 * 1.0 + 800 * 0.1 + 100 * 10.0) / 1e6)
    assert cost_of(u, responses_cfg(None, price_input_per_mtok=1.0)) == pytest.approx(1000 / 1e6)
    srv = toy_server()
    system = [{"role": "system", "content": "Solve carefully and box the final answer. " * 5}]
    batch, _ = msgs(3)
    client = make_client(responses_cfg(srv.base_url, concurrency=1), RequestCache(tmp_path / "c.sqlite"))
    res = run(client, [system + b for b in batch])
    assert [r.response["usage"]["cached_input_tokens"] > 0 for r in res] == [False, True, True]
    assert client.usage.cached_input_tokens == sum(r.response["usage"]["cached_input_tokens"] for r in res)


def test_api_key_lookup(toy_server, tmp_path, monkeypatch):
    """api_key_env unset: for OpenAI's API the SDK's own OPENAI_API_KEY lookup (never "EMPTY");
    for another server a placeholder, so an OpenAI key never leaves for another host."""
    import hashlib

    from trace_inversion.models.clients import api_key_for, credential_problems

    srv = toy_server()
    secret = "sk-test-" + "k" * 40
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)  # what the SDK reads when base_url is unset
    batch, _ = msgs(1)
    res = run(make_client(responses_cfg(None), RequestCache(tmp_path / "a.sqlite")), batch)
    assert res[0].ok
    seen = srv.stats()["auth_sha256"]
    assert seen == [hashlib.sha256(secret.encode()).hexdigest()]
    assert api_key_for(responses_cfg("https://api.openai.com/v1")) is None
    assert api_key_for(responses_cfg("http://127.0.0.1:8000/v1")) == "EMPTY"
    run(make_client(responses_cfg(srv.base_url), RequestCache(tmp_path / "b.sqlite")), batch)
    assert hashlib.sha256(b"EMPTY").hexdigest() in srv.stats()["auth_sha256"]
    assert credential_problems(responses_cfg(None)) == []
    monkeypatch.delenv("OPENAI_API_KEY")
    assert "OPENAI_API_KEY" in credential_problems(responses_cfg(None))[0]
    assert credential_problems(responses_cfg(srv.base_url)) == []
    assert "TI_NOT_SET" in credential_problems(responses_cfg(srv.base_url, api_key_env="TI_NOT_SET"))[0]
