"""A local server that speaks the OpenAI wire formats, played by the toy target.

Endpoints:
- ``POST /v1/responses``: the Responses API (a ``reasoning`` output item whose
  ``summary`` holds ``summary_text`` parts, then a ``message`` with ``output_text``);
- ``POST /v1/chat/completions``: chat completions with ``reasoning_content`` (the
  DeepSeek/vLLM reasoning-parser convention);
- ``GET /v1/models``; ``GET /stats`` (request counts per request-body hash, in-flight
  count) and ``POST /reset``.

Faults are injected on demand so clients can be tested for real: latency, 429 with
``Retry-After``, 500, timeouts (the server stalls), malformed bodies, empty summaries
and refusals, each with a probability, plus ``fail_first`` (the first k attempts of
every distinct request fail with 429) for deterministic retry tests.

Run: ``python -m trace_inversion.toy_server --port 8123 --latency 0.05``; it prints
``READY <port>`` when it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass, field

from .toy_world import ToyWorld, parse_problem

REFUSAL = "I can't help with that request."


@dataclass
class Faults:
    latency: float = 0.0
    p429: float = 0.0
    retry_after: float = 0.05
    p500: float = 0.0
    p_timeout: float = 0.0
    timeout_stall: float = 30.0
    p_malformed: float = 0.0
    p_empty_summary: float = 0.0
    p_refusal: float = 0.0
    fail_first: int = 0
    seed: int = 0


@dataclass
class ServerState:
    world: ToyWorld
    faults: Faults
    counts: Counter = field(default_factory=Counter)  # body hash -> requests received
    paid: Counter = field(default_factory=Counter)  # body hash -> successful responses
    in_flight: int = 0
    in_flight_keys: Counter = field(default_factory=Counter)
    total: int = 0
    auth_sha256: set = field(default_factory=set)  # sha256 of each distinct bearer token seen (never the token)
    rng: random.Random = field(default_factory=random.Random)


def _body_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _problem_text(body: dict) -> str:
    if "messages" in body:
        msgs = [m for m in body["messages"] if m.get("role") == "user"]
        content = msgs[-1]["content"] if msgs else ""
    else:
        inp = body.get("input", "")
        if isinstance(inp, list):
            users = [m for m in inp if isinstance(m, dict) and m.get("role") == "user"]
            content = users[-1]["content"] if users else ""
        else:
            content = inp
    if isinstance(content, list):  # content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _ntok(text: str) -> int:
    return max(1, len(text.split()))


def _answer(state: ServerState, body: dict) -> tuple[str, str, str]:
    """(answer, summary, hidden trace) for the request's problem (refusal if none)."""
    text = _problem_text(body)
    p = parse_problem(text)
    if p is None:
        return REFUSAL, "", ""
    r = state.world.target_response(p)
    return r["answer"], r["summary"], r["hidden_trace"]


def responses_body(body: dict, answer: str, summary: str, trace: str, key: str) -> dict:
    # The summary arrives as several summary_text parts; clients must join them in order.
    parts = [s.strip() for s in summary.split(";") if s.strip()] if summary else []
    in_tok = _ntok(json.dumps(body.get("input", "")))
    reasoning = _ntok(trace) * 3 if trace else 0
    out_tok = _ntok(answer) + reasoning
    return {
        "id": f"resp_{key}",
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": body.get("model", "toy-target"),
        "output": [
            {"type": "reasoning", "id": f"rs_{key}", "summary": [{"type": "summary_text", "text": t} for t in parts]},
            {"type": "message", "id": f"msg_{key}", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": answer, "annotations": []}]},
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": in_tok,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out_tok,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": in_tok + out_tok,
        },
    }


def chat_body(body: dict, answer: str, summary: str, trace: str, key: str) -> dict:
    n = int(body.get("n") or 1)
    in_tok = _ntok(json.dumps(body.get("messages", "")))
    reasoning = _ntok(trace) * 3 if trace else 0
    message = {"role": "assistant", "content": answer}
    if summary:
        message["reasoning_content"] = summary
    return {
        "id": f"chatcmpl-{key}",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "toy-target"),
        "choices": [{"index": i, "message": dict(message), "finish_reason": "stop"} for i in range(n)],
        "usage": {
            "prompt_tokens": in_tok,
            "completion_tokens": (_ntok(answer) + reasoning) * n,
            "total_tokens": in_tok + (_ntok(answer) + reasoning) * n,
            "completion_tokens_details": {"reasoning_tokens": reasoning * n},
        },
    }


def make_app(state: ServerState):
    from aiohttp import web

    f = state.faults

    async def handle(request: web.Request, kind: str) -> web.StreamResponse:
        try:
            body = await request.json()
        except Exception:
            return web.json_response({"error": {"message": "invalid JSON body", "type": "invalid_request_error"}}, status=400)
        key = _body_key(body)
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            state.auth_sha256.add(hashlib.sha256(auth[7:].encode()).hexdigest())
        state.counts[key] += 1
        state.total += 1
        attempt = state.counts[key]
        state.in_flight += 1
        state.in_flight_keys[key] += 1
        try:
            # A rate limiter answers at once, before any work is done.
            r = state.rng.random()
            edges = [f.p429, f.p500, f.p_timeout, f.p_malformed]
            if attempt <= f.fail_first or r < edges[0]:
                return web.json_response({"error": {"message": "rate limited", "type": "rate_limit"}}, status=429,
                                         headers={"Retry-After": str(f.retry_after)})
            if f.latency:
                await asyncio.sleep(f.latency)
            r -= edges[0]
            if r < edges[1]:
                return web.json_response({"error": {"message": "internal error", "type": "server_error"}}, status=500)
            r -= edges[1]
            if r < edges[2]:
                await asyncio.sleep(f.timeout_stall)
                return web.json_response({"error": {"message": "stalled"}}, status=504)
            r -= edges[2]
            if r < edges[3]:
                return web.Response(text='{"id": "truncated", "output": [', content_type="application/json")
            answer, summary, trace = _answer(state, body)
            if state.rng.random() < f.p_refusal:
                answer, summary, trace = REFUSAL, "", ""
            if state.rng.random() < f.p_empty_summary:
                summary = ""
            builder = responses_body if kind == "responses" else chat_body
            state.paid[key] += 1
            return web.json_response(builder(body, answer, summary, trace, key))
        finally:
            state.in_flight -= 1
            state.in_flight_keys[key] -= 1
            if not state.in_flight_keys[key]:
                del state.in_flight_keys[key]

    async def responses(request):
        return await handle(request, "responses")

    async def chat(request):
        return await handle(request, "chat")

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "toy-target", "object": "model", "owned_by": "toy"}]})

    async def stats(request):
        return web.json_response({
            "total": state.total, "in_flight": state.in_flight, "in_flight_keys": list(state.in_flight_keys), "distinct": len(state.counts),
            "counts": dict(state.counts), "paid": dict(state.paid), "auth_sha256": sorted(state.auth_sha256),
        })

    async def reset(request):
        state.counts.clear()
        state.paid.clear()
        state.total = 0
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m trace_inversion.toy_server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--summary-every", type=int, default=2)
    for name, val in Faults().__dict__.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(val), default=val)
    a = ap.parse_args(argv)
    faults = Faults(**{k: getattr(a, k) for k in Faults().__dict__})
    state = ServerState(ToyWorld(seed=a.world_seed, summary_every=a.summary_every), faults, rng=random.Random(faults.seed))

    from aiohttp import web

    async def run():
        runner = web.AppRunner(make_app(state), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, a.host, a.port, backlog=2048)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
