"""The Batch API path (``batch_api.run_batch``) against the local server's batch endpoints
(files upload and content, batches create / retrieve / list): results land in the request
cache under the keys the direct path reads, a rerun sends nothing, a crash between submit
and retrieve (SIGKILL) or between create and recording the batch is picked up without a
second submission, failed lines keep their reason, and the server refuses malformed batch
input as the service does."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from trace_inversion.models.batch_api import TAG_KEY, BatchRequest, run_batch
from trace_inversion.models.cache import RequestCache
from trace_inversion.models.clients import (OpenAIChatClient, OpenAIResponsesClient, cost_of, make_client,
                                     parse_chat_output, parse_responses_output)
from trace_inversion.config import ModelConfig
from trace_inversion.toy.world import ToyWorld

KEY = "sk-test-" + "b" * 40
ENDPOINT = {"openai-responses": "/v1/responses", "openai-chat": "/v1/chat/completions"}
PARSE = {"openai-responses": parse_responses_output, "openai-chat": parse_chat_output}


def model_cfg(base_url: str, backend: str = "openai-responses", **kw) -> ModelConfig:
    return ModelConfig(backend=backend, model="toy-target", base_url=base_url, price_input_per_mtok=2.0,
                       price_output_per_mtok=8.0, max_retries=0, **kw)


def conversations(n: int) -> list:
    return [[{"role": "user", "content": p.text}] for p in ToyWorld().problems(n)]


def build_requests(cfg: ModelConfig, cache: RequestCache, convs: list) -> list[BatchRequest]:
    """What a caller does: the direct path (the cached model) gives each request's key and
    cache payload, its request client the body it would send."""
    direct = make_client(cfg, cache)
    raw = (OpenAIResponsesClient if cfg.backend == "openai-responses" else OpenAIChatClient)(cfg)
    return [BatchRequest(key=direct.key(m), body={"model": cfg.model, **raw.body(m)}, key_payload=direct.payload(m),
                         model=cfg.model, backend=direct.backend) for m in convs]


def batch(reqs, cfg, cache, state_dir, **kw):
    args = dict(cache=cache, parse=PARSE[cfg.backend], endpoint=ENDPOINT[cfg.backend], base_url=cfg.base_url,
                api_key=KEY, state_dir=state_dir, run_tag="test-run/target", poll_s=0.05, timeout_s=60,
                cost_fn=lambda u: cost_of(u, cfg))
    args.update(kw)
    return run_batch(reqs, **args)


# ----------------------------------------------------------------------------- (a) happy path
@pytest.mark.parametrize("backend", ["openai-responses", "openai-chat"])
def test_one_batch_fills_the_cache_and_a_rerun_sends_nothing(toy_server, tmp_path, backend):
    srv = toy_server()
    cfg = model_cfg(srv.base_url, backend)
    cache = RequestCache(tmp_path / "cache.sqlite")
    convs = conversations(6)
    reqs = build_requests(cfg, cache, convs)
    rep = batch(reqs, cfg, cache, tmp_path / "batches")
    assert rep.status == "done" and len(rep.created) == 1 and rep.resumed == {}, rep
    assert rep.stored == 6 and rep.failures == {} and len(cache) == 6
    assert rep.usage["output_tokens"] > 0
    assert rep.cost_usd == pytest.approx(0.5 * rep.cost_full_price_usd) and rep.cost_usd > 0
    st = srv.stats()
    assert st["batch_creates"] == 1 and list(st["batches"].values()) == ["completed"]
    assert st["rejected"] == 0 and st["total"] == 6  # each line ran through the request handler once

    # the direct path reads the batch's results from the cache: no request reaches the server
    results = make_client(cfg, cache).query_many_sync(convs)
    assert all(r.ok and r.cached for r in results) and all(r.response["answer"] for r in results)
    assert srv.stats()["total"] == 6

    # a second run: everything cached, not a single API call
    calls = srv.stats()["batch_api_calls"]
    rep2 = batch(reqs, cfg, cache, tmp_path / "batches")
    assert rep2.status == "nothing_to_do" and rep2.api_calls == 0 and rep2.already_cached == 6
    st = srv.stats()
    assert st["batch_api_calls"] == calls and st["batch_creates"] == 1


def test_cached_requests_are_not_sent(toy_server, tmp_path):
    srv = toy_server()
    cfg = model_cfg(srv.base_url)
    cache = RequestCache(tmp_path / "cache.sqlite")
    convs = conversations(5)
    assert all(r.ok for r in make_client(cfg, cache).query_many_sync(convs[:2]))
    rep = batch(build_requests(cfg, cache, convs), cfg, cache, tmp_path / "batches")
    assert rep.already_cached == 2 and rep.stored == 3 and rep.status == "done"
    assert srv.stats()["total"] == 5  # 2 direct + 3 batch lines


# ----------------------------------------------------------------------------- (b) SIGKILL between submit and retrieve
CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_batch_api import batch, build_requests, conversations, model_cfg
from trace_inversion.models.cache import RequestCache
cfg = model_cfg({url!r})
cache = RequestCache({cache!r})
rep = batch(build_requests(cfg, cache, conversations(5)), cfg, cache, {state!r}, timeout_s=120)
print("FINISHED", rep.status, flush=True)
"""


def test_a_batch_submitted_before_a_crash_is_picked_up_never_submitted_twice(toy_server, tmp_path):
    srv = toy_server(batch_delay=6.0)
    cfg = model_cfg(srv.base_url)
    state_dir = tmp_path / "batches"
    code = CHILD.format(tests=str(Path(__file__).parent), url=srv.base_url, cache=str(tmp_path / "cache.sqlite"),
                        state=str(state_dir))
    log = open(tmp_path / "child.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        recorded = []
        while time.time() < deadline:
            files = list(state_dir.glob("*.batches.json"))
            recorded = list(json.loads(files[0].read_text())["batches"]) if files else []
            if recorded and srv.stats()["batch_creates"] == 1:
                break
            assert proc.poll() is None, (tmp_path / "child.log").read_text()
            time.sleep(0.05)
        assert recorded, (tmp_path / "child.log").read_text()
        os.kill(proc.pid, signal.SIGKILL)  # submitted, recorded, still being polled
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert "FINISHED" not in (tmp_path / "child.log").read_text()
    (bid,) = recorded
    assert srv.stats()["batches"][bid] in ("validating", "in_progress")  # killed before it finished

    cache = RequestCache(tmp_path / "cache.sqlite")
    assert len(cache) == 0
    reqs = build_requests(cfg, cache, conversations(5))
    rep = batch(reqs, cfg, cache, state_dir)
    assert rep.status == "done" and rep.created == [] and rep.resumed == {bid: "state_file"}, rep
    assert rep.stored == 5 and rep.failures == {} and all(r.key in cache for r in reqs)
    assert any("not submitted again" in m for m in rep.messages)
    st = srv.stats()
    assert st["batch_creates"] == 1 and st["batches"] == {bid: "completed"}
    assert st["total"] == 5  # each request ran once, on the service's side


def test_a_timeout_leaves_the_batch_recorded_and_the_next_run_collects_it(toy_server, tmp_path):
    srv = toy_server(batch_delay=1.5)
    cfg = model_cfg(srv.base_url)
    cache = RequestCache(tmp_path / "cache.sqlite")
    reqs = build_requests(cfg, cache, conversations(3))
    rep = batch(reqs, cfg, cache, tmp_path / "batches", timeout_s=0.2)
    assert rep.status == "pending" and rep.pending == rep.created and len(rep.created) == 1
    assert any("next run collects" in m for m in rep.messages) and len(cache) == 0
    rep2 = batch(reqs, cfg, cache, tmp_path / "batches")
    assert rep2.status == "done" and rep2.created == [] and rep2.resumed == {rep.created[0]: "state_file"}
    assert rep2.stored == 3 and srv.stats()["batch_creates"] == 1


# ----------------------------------------------------------------------------- (c) crash after create, before recording
def test_a_batch_created_but_never_recorded_is_adopted_by_its_tag(toy_server, tmp_path):
    srv = toy_server(batch_delay=0.5)
    cfg = model_cfg(srv.base_url)
    cache = RequestCache(tmp_path / "cache.sqlite")
    reqs = build_requests(cfg, cache, conversations(4))
    # another run's batch on the same account (a different tag) must not be taken
    other = build_requests(cfg, cache, conversations(6))[4:]
    rep0 = batch(other, cfg, cache, tmp_path / "other", run_tag="another-run")
    assert rep0.status == "done" and len(rep0.created) == 1

    class Crash(Exception):
        pass

    def crash(name, info):
        if name == "created":
            raise Crash(info["batch_id"])

    with pytest.raises(Crash) as e:
        batch(reqs, cfg, cache, tmp_path / "batches", on_event=crash)
    bid = str(e.value)
    state_files = list((tmp_path / "batches").glob("*.batches.json"))
    assert all(bid not in json.loads(f.read_text())["batches"] for f in state_files)  # never recorded
    assert srv.stats()["batch_creates"] == 2

    rep = batch(reqs, cfg, cache, tmp_path / "batches")
    assert rep.status == "done" and rep.created == [] and rep.resumed == {bid: "server_tag"}, rep
    assert rep.stored == 4 and all(r.key in cache for r in reqs)
    assert srv.stats()["batch_creates"] == 2  # the crashed run's batch and the other run's: none added

    # the state file was also lost entirely after collection: a rerun has nothing to do anyway
    for f in (tmp_path / "batches").glob("*"):
        f.unlink()
    assert batch(reqs, cfg, cache, tmp_path / "batches").status == "nothing_to_do"


def test_a_create_whose_answer_is_lost_is_found_by_its_tag_not_sent_again(toy_server, tmp_path):
    import httpx

    srv = toy_server()
    cfg = model_cfg(srv.base_url)
    cache = RequestCache(tmp_path / "cache.sqlite")
    reqs = build_requests(cfg, cache, conversations(3))

    class LostAnswer:
        """The service creates the batch; the connection drops before its answer arrives."""

        def __init__(self):
            self.real = openai.OpenAI(base_url=srv.base_url, api_key=KEY, max_retries=0)
            self.files, self.batches = self.real.files, self

        def with_options(self, **kw):
            return self

        def create(self, **kw):
            self.real.batches.create(**kw)
            raise openai.APIConnectionError(request=httpx.Request("POST", srv.base_url + "/batches"))

        def retrieve(self, *a, **kw):
            return self.real.batches.retrieve(*a, **kw)

        def list(self, **kw):
            return self.real.batches.list(**kw)

    rep = batch(reqs, cfg, cache, tmp_path / "batches", client_factory=LostAnswer)
    assert rep.status == "done" and len(rep.created) == 1 and rep.stored == 3
    assert srv.stats()["batch_creates"] == 1


def test_two_processes_of_one_run_never_submit_twice(toy_server, tmp_path):
    import threading

    srv = toy_server(batch_delay=1.0)
    cfg = model_cfg(srv.base_url)
    convs = conversations(4)
    reports = []

    def go():
        cache = RequestCache(tmp_path / "cache.sqlite")  # each its own connection, like a process
        reports.append(batch(build_requests(cfg, cache, convs), cfg, cache, tmp_path / "batches"))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join(60)
    assert sorted(r.status for r in reports) == ["done", "nothing_to_do"]
    assert srv.stats()["batch_creates"] == 1 and len(RequestCache(tmp_path / "cache.sqlite")) == 4


def test_one_batch_per_model(toy_server, tmp_path):
    srv = toy_server()
    cache = RequestCache(tmp_path / "cache.sqlite")
    a, b = model_cfg(srv.base_url), model_cfg(srv.base_url).model_copy(update={"model": "gpt-4.1"})
    reqs = build_requests(a, cache, conversations(2)) + build_requests(b, cache, conversations(3))
    rep = batch(reqs, a, cache, tmp_path / "batches")
    assert rep.status == "done" and len(rep.created) == 2 and rep.stored == 5 and rep.failures == {}
    assert set(srv.stats()["batches"].values()) == {"completed"}


# ----------------------------------------------------------------------------- (d) failed lines
def test_failed_lines_keep_their_reason(toy_server, tmp_path):
    srv = toy_server()
    cfg = model_cfg(srv.base_url)
    cache = RequestCache(tmp_path / "cache.sqlite")
    reqs = build_requests(cfg, cache, conversations(3))
    bad = BatchRequest(key="k-bad", body={**reqs[0].body, "input": reqs[0].body["input"], "top_k": 50},
                       key_payload={"bad": True}, model=cfg.model, backend="openai-responses")
    small = BatchRequest(key="k-small", body={**reqs[1].body, "max_output_tokens": 8}, key_payload={"small": True},
                         model=cfg.model, backend="openai-responses")
    rep = batch(reqs + [bad, small], cfg, cache, tmp_path / "batches")
    assert rep.status == "done" and rep.stored == 3 and len(rep.created) == 1
    assert set(rep.failures) == {"k-bad", "k-small"}
    assert rep.failures["k-bad"].startswith("HTTP 400") and "Unrecognized request argument supplied: top_k" in \
        rep.failures["k-bad"]
    assert "max_output_tokens" in rep.failures["k-small"] and "k-bad" not in cache

    # a rerun sends the failed ones again (in a new batch), like a rerun of the direct path
    rep2 = batch(reqs + [bad, small], cfg, cache, tmp_path / "batches")
    assert len(rep2.created) == 1 and rep2.created != rep.created and set(rep2.failures) == {"k-bad", "k-small"}
    assert srv.stats()["batch_creates"] == 2


def test_an_expired_batch_keeps_its_results_and_the_rest_are_sent_again(toy_server, tmp_path):
    srv = toy_server(batch_expire_after=2)
    cfg = model_cfg(srv.base_url)
    cache = RequestCache(tmp_path / "cache.sqlite")
    reqs = build_requests(cfg, cache, conversations(4))
    rep = batch(reqs, cfg, cache, tmp_path / "batches")
    assert rep.status == "done" and rep.stored == 2 and len(rep.failures) == 2
    assert all(r.startswith("batch_expired") for r in rep.failures.values())
    assert list(srv.stats()["batches"].values()) == ["expired"]
    rep2 = batch(reqs, cfg, cache, tmp_path / "batches")
    assert rep2.stored == 2 and rep2.failures == {} and all(r.key in cache for r in reqs)
    assert srv.stats()["batch_creates"] == 2


# ----------------------------------------------------------------------------- (e) the server's validation
def jsonl(lines) -> bytes:
    return "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()


def line(cid: str, url: str = "/v1/responses", model: str = "toy-target", **kw) -> dict:
    return {"custom_id": cid, "method": "POST", "url": url,
            "body": {"model": model, "input": conversations(1)[0], **kw}}


def test_the_server_rejects_malformed_batch_input_like_the_service(toy_server):
    srv = toy_server()
    client = openai.OpenAI(base_url=srv.base_url, api_key=KEY, max_retries=0)

    def upload_error(data: bytes, purpose: str = "batch", name: str = "in.jsonl") -> str:
        with pytest.raises(openai.BadRequestError) as e:
            client.files.create(file=(name, data), purpose=purpose)
        assert e.value.status_code == 400
        return e.value.message

    good = jsonl([line("a"), line("b")])
    assert "is not one of" in upload_error(good, purpose="batches")
    assert "Must be .jsonl" in upload_error(good, name="in.json")
    assert "not supported" in upload_error(jsonl([line("a"), line("b", url="/v1/completionz")]))
    assert "duplicate" in upload_error(jsonl([line("a"), line("a")]))
    assert "not parseable as valid JSON" in upload_error(jsonl([line("a"), "{not json"]))
    assert "'body' is a required property" in upload_error(jsonl([{"custom_id": "a", "method": "POST",
                                                                    "url": "/v1/responses"}]))
    assert "empty" in upload_error(b"")

    fid = client.files.create(file=("in.jsonl", good), purpose="batch").id
    assert client.files.retrieve(fid).purpose == "batch"
    with pytest.raises(openai.BadRequestError, match="does not match the batch endpoint"):
        client.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(input_file_id=fid, endpoint="/v1/responses", completion_window="1h")
    with pytest.raises(openai.BadRequestError, match="metadata"):
        client.batches.create(input_file_id=fid, endpoint="/v1/responses", completion_window="24h",
                              metadata={"k": "v" * 600})
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/responses", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    st = srv.stats()
    assert st["batch_creates"] == 0 and st["total"] == 0  # nothing ran

    # one model per batch: a mixed file fails during validation, with the line
    mixed = client.files.create(file=("m.jsonl", jsonl([line("a"), line("b", model="gpt-5-mini")])), purpose="batch")
    b = client.batches.create(input_file_id=mixed.id, endpoint="/v1/responses", completion_window="24h")
    assert b.status == "validating" and b.request_counts.total == 2
    for _ in range(200):
        b = client.batches.retrieve(b.id)
        if b.status == "failed":
            break
        time.sleep(0.02)
    assert b.status == "failed" and b.errors.data[0].code == "mismatched_model" and b.errors.data[0].line == 2


def test_the_batch_objects_and_files_have_the_services_shapes(toy_server):
    srv = toy_server()
    client = openai.OpenAI(base_url=srv.base_url, api_key=KEY, max_retries=0)
    ids = []
    for i in range(3):
        fid = client.files.create(file=(f"in{i}.jsonl", jsonl([line(f"c{i}"), line(f"d{i}", top_k=1)])),
                                  purpose="batch").id
        ids.append(client.batches.create(input_file_id=fid, endpoint="/v1/responses", completion_window="24h",
                                         metadata={TAG_KEY: f"t{i}"}).id)
    # pagination as the SDK walks it: newest first, `after` cursors
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # auto-paging
    for _ in range(200):
        if all(client.batches.retrieve(i).status == "completed" for i in ids):
            break
        time.sleep(0.02)
    b = client.batches.retrieve(ids[0])
    assert b.status == "completed" and b.metadata == {TAG_KEY: "t0"} and b.completed_at and b.in_progress_at
    assert b.request_counts.total == 2 and b.request_counts.completed == 1 and b.request_counts.failed == 1
    assert b.usage.output_tokens > 0 and b.model == "toy-target"
    out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    err = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["c0"] and out[0]["response"]["status_code"] == 200
    assert out[0]["id"].startswith("batch_req_") and out[0]["error"] is None
    assert out[0]["response"]["body"]["object"] == "response"
    assert err[0]["custom_id"] == "d0" and err[0]["response"]["status_code"] == 400
    assert client.files.retrieve(b.output_file_id).purpose == "batch_output"
    assert srv.stats()["batch_creates"] == 3
