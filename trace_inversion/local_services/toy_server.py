"""A local server that speaks the OpenAI wire formats, played by the toy target.

Endpoints:
- ``POST /v1/responses``: the Responses API (a ``reasoning`` output item whose
  ``summary`` holds ``summary_text`` parts, then a ``message`` with ``output_text``);
- ``POST /v1/chat/completions``: chat completions with ``reasoning_content`` (the
  DeepSeek/vLLM reasoning-parser convention);
- a user message in ProcessBench's judge format (``verifiers.JUDGE_TEMPLATE``) is
  answered by the toy judge (``judge_answer``), on either endpoint;
- ``GET /v1/models``; ``GET /stats`` (request counts per request-body hash, in-flight
  count) and ``POST /reset``;
- the Batch API: ``POST /v1/files`` (multipart; a ``purpose=batch`` file is validated as
  the service does: ``.jsonl``, each line ``custom_id``/``method``/``url``/``body``, unique
  custom_ids, a batch URL), ``GET /v1/files/{id}`` and ``/content``, ``POST /v1/batches``
  (the lines' URL must be the batch ``endpoint``; ``completion_window`` 24h; metadata),
  ``GET /v1/batches/{id}``, ``GET /v1/batches`` (newest first, ``after``/``limit``) and
  ``POST /v1/batches/{id}/cancel``. Each line runs through the same handler as a direct
  request; ``--batch-delay`` holds a batch in ``validating``/``in_progress``,
  ``--batch-expire-after`` expires it after that many lines. ``/stats`` counts
  ``batch_creates``.

Faults are injected on demand so clients can be tested for real: latency, 429 with
``Retry-After`` (``--retry-after-form``: seconds, ``ms`` as ``retry-after-ms``, or an
HTTP ``date``), 500, timeouts (the server stalls), malformed bodies, empty summaries,
refusals and content-filtered (incomplete) responses, each with a probability, plus
``fail_first`` (the first k attempts of every distinct request fail with 429) for
deterministic retry tests.

Request bodies are validated the way the services do (``--flavor``):

- ``openai`` (default): OpenAI's rules. A field the API does not know is a 400
  "Unrecognized request argument supplied: <field>"; reasoning models (o-series,
  gpt-5*) refuse ``temperature``/``top_p`` (and ``max_tokens`` on chat: they take
  ``max_completion_tokens``); ``reasoning`` is refused for gpt-4*/gpt-3.5*;
  ``max_output_tokens`` must be >= 16. Chat answers carry no reasoning (OpenAI's chat API
  returns none).
- ``vllm``: a vLLM/SGLang server started with a reasoning parser: vLLM's sampling
  extras are accepted, unknown fields are ignored (and counted in ``/stats``
  ``ignored_fields``, as vLLM only logs them), and chat answers carry the full hidden
  trace as ``reasoning_content``.

Payloads are realistic: the Responses reasoning summary comes in several
``summary_text`` parts; an output cap (``max_output_tokens`` / ``max_tokens`` /
``max_completion_tokens``) too small for the reasoning gives ``status: incomplete`` with
``incomplete_details.reason: max_output_tokens`` (chat: ``finish_reason: length``);
``--reasoning-spread`` makes reasoning lengths (so costs) vary; a repeated system
prompt is reported as cached input tokens. ``/stats`` counts rejected requests (with
their messages), the fields seen, and the tokens billed (answers, incomplete answers and
malformed bodies alike: the service produced them).

Run: ``python -m trace_inversion.local_services.toy_server --port 8123 --latency 0.05``; it prints
``READY <port>`` when it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hashlib
import json
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from trace_inversion.toy.world import ToyWorld, check_steps, parse_problem

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
    p_content_filter: float = 0.0
    fail_first: int = 0
    seed: int = 0
    retry_after_form: str = "seconds"  # seconds | ms | date
    reasoning_spread: float = 0.0  # reasoning tokens x (1 + spread * U[0,1)): variable costs
    batch_delay: float = 0.0  # Batch API: seconds a batch spends validating + in_progress before it finishes
    batch_expire_after: int = -1  # Batch API: lines a batch runs before it expires (the rest: batch_expired); -1 never


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
    flavor: str = "openai"  # openai | vllm (see the module docstring)
    rejected: Counter = field(default_factory=Counter)  # 400 message -> count
    ignored_fields: Counter = field(default_factory=Counter)  # vllm flavor: unknown fields it ignored
    fields_seen: Counter = field(default_factory=Counter)  # top-level request fields received
    billed: Counter = field(default_factory=Counter)  # input_tokens, cached_input_tokens, output_tokens, responses
    system_prompts: set = field(default_factory=set)  # seen system prompts (reported as cached input)
    files: dict = field(default_factory=dict)  # Batch API: file id -> {"object": FileObject, "content": bytes}
    batches: dict = field(default_factory=dict)  # Batch API: batch id -> Batch object (insertion order = age)
    batch_creates: int = 0  # successful POST /v1/batches (a client must never submit the same work twice)
    batch_api_calls: Counter = field(default_factory=Counter)  # "METHOD route" -> calls to the file/batch endpoints
    batch_tasks: set = field(default_factory=set)  # running batch jobs (references keep them alive)


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


_JUDGE_PROMPT = re.compile(r"\[Math Problem\]\s*(.*?)\s*\[Solution\]\s*(.*?)\s*Your task is to review", re.S)
_PARAGRAPH = re.compile(r"<paragraph_(\d+)>\s*(.*?)\s*</paragraph_\1>", re.S)


def judge_answer(text: str) -> str | None:
    """The toy judge (ProcessBench's protocol, ``verifiers.JUDGE_TEMPLATE``): the index
    of the earliest paragraph holding a wrong step by the toy world's exact checker (the
    last paragraph when steps are missing), or -1, in ``\\boxed{}``. None when ``text``
    is not a judge prompt; an answer without an index for a problem outside the toy world."""
    m = _JUDGE_PROMPT.search(text or "")
    if not m:
        return None
    p = parse_problem(m.group(1))
    paras = [c for _, c in _PARAGRAPH.findall(m.group(2))]
    if p is None or not paras:
        return "I can only check toy-world solutions; I cannot say which paragraph is wrong."
    index = -1
    for i in range(len(paras)):
        if check_steps(p, "\n".join(paras[: i + 1]))["first_error"] is not None:
            index = i
            break
    else:
        if not check_steps(p, "\n".join(paras))["all_correct"]:
            index = len(paras) - 1
    verdict = "No paragraph is wrong." if index < 0 else f"The earliest error is in paragraph {index}."
    return f"I checked each paragraph's arithmetic against the problem.\n\n{verdict}\n\n\\boxed{{{index}}}"


def _answer(state: ServerState, body: dict) -> tuple[str, str, str]:
    """(answer, summary, hidden trace) for the request's problem (refusal if none); a
    judge prompt gets the toy judge's answer."""
    text = _problem_text(body)
    judged = judge_answer(text)
    if judged is not None:
        return judged, "", ""
    p = parse_problem(text)
    if p is None:
        return REFUSAL, "", ""
    r = state.world.target_response(p)
    return r["answer"], r["summary"], r["hidden_trace"]


# vLLM's sampling and chat extras (accepted by its OpenAI-compatible server besides OpenAI's fields).
VLLM_EXTRAS = frozenset((
    "top_k", "min_p", "repetition_penalty", "length_penalty", "stop_token_ids", "include_stop_str_in_output",
    "ignore_eos", "min_tokens", "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "prompt_logprobs", "allowed_token_ids", "bad_words", "echo", "add_generation_prompt", "continue_final_message",
    "add_special_tokens", "documents", "chat_template", "chat_template_kwargs", "mm_processor_kwargs",
    "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar", "priority", "request_id",
    "return_tokens_as_token_ids", "cache_salt", "kv_transfer_params", "vllm_xargs", "use_beam_search",
    "logits_processors"))
EFFORTS = (None, "none", "minimal", "low", "medium", "high", "xhigh")
SUMMARIES = (None, "auto", "concise", "detailed")


def is_reasoning_model(model: str) -> bool:
    """The service's rule: o-series and gpt-5* models reason (gpt-5-chat* does not)."""
    m = str(model).lower().removeprefix("ft:")
    return bool(re.match(r"o[1-9](-|$)|gpt-5", m)) and "chat" not in m


def validate_body(kind: str, body: dict, flavor: str, state: "ServerState | None" = None) -> tuple | None:
    """None, or (message, param, code) of the 400 the service answers for this body."""
    from trace_inversion.config import OPENAI_CHAT_FIELDS, OPENAI_RESPONSES_FIELDS

    known = OPENAI_RESPONSES_FIELDS if kind == "responses" else OPENAI_CHAT_FIELDS
    for k in body:
        if k not in known:
            if flavor == "vllm":
                if k not in VLLM_EXTRAS and state is not None:
                    state.ignored_fields[k] += 1  # vLLM logs "present in the request but ignored"
                continue
            return f"Unrecognized request argument supplied: {k}", k, "unknown_parameter"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter", "model", "missing_required_parameter"
    model, strict = body["model"], flavor == "openai"
    for name, lo, hi in (("temperature", 0, 2), ("top_p", 0, 1)):
        v = body.get(name)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi):
            return f"Invalid '{name}': expected a number between {lo} and {hi}, got {v!r}.", name, "invalid_value"
    if kind == "responses":
        if not isinstance(body.get("input"), (str, list)):
            return "Invalid 'input': expected a string or a list of input items.", "input", "invalid_type"
        mot = body.get("max_output_tokens")
        if mot is not None and (not isinstance(mot, int) or isinstance(mot, bool) or mot < 16):
            return (f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got "
                    f"{mot!r} instead.", "max_output_tokens", "integer_below_min_value")
        if "store" in body and not isinstance(body["store"], bool):
            return "Invalid 'store': expected a boolean.", "store", "invalid_type"
        rs = body.get("reasoning")
        if rs is not None:
            if not isinstance(rs, dict):
                return "Invalid 'reasoning': expected an object.", "reasoning", "invalid_type"
            for k in rs:
                if k not in ("effort", "summary", "generate_summary"):
                    return f"Unrecognized request argument supplied: reasoning.{k}", f"reasoning.{k}", "unknown_parameter"
            if rs.get("effort") not in EFFORTS:
                return f"Invalid value: {rs.get('effort')!r}. Supported values are: {EFFORTS[1:]}.", \
                    "reasoning.effort", "invalid_value"
            if rs.get("summary") not in SUMMARIES:
                return f"Invalid value: {rs.get('summary')!r}. Supported values are: {SUMMARIES[1:]}.", \
                    "reasoning.summary", "invalid_value"
            if strict and str(model).lower().startswith(("gpt-4", "gpt-3.5")):
                return ("Unsupported parameter: 'reasoning.effort' is not supported with this model.",
                        "reasoning.effort", "unsupported_parameter")
        if strict and is_reasoning_model(model):
            for name in ("temperature", "top_p"):
                if name in body:
                    return f"Unsupported parameter: '{name}' is not supported with this model.", name, \
                        "unsupported_parameter"
    else:
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return "Invalid 'messages': expected a non-empty array.", "messages", "invalid_type"
        n = body.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
            return f"Invalid 'n': expected an integer between 1 and 128, got {n!r}.", "n", "invalid_value"
        for name in ("max_tokens", "max_completion_tokens", "seed"):
            v = body.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "seed" else 1)):
                return f"Invalid '{name}': expected a positive integer, got {v!r}.", name, "invalid_value"
        if strict and is_reasoning_model(model):
            if "max_tokens" in body:
                return ("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                        "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
            for name in ("temperature", "top_p"):
                if name in body and body[name] != 1:
                    return (f"Unsupported value: '{name}' does not support {body[name]} with this model. Only the "
                            "default (1) value is supported.", name, "unsupported_value")
    return None


def _cap_output(reasoning: int, answer: str, cap) -> tuple[int, str, bool]:
    """(reasoning tokens, answer, truncated) under an output-token cap: reasoning comes first."""
    if cap is None or reasoning + _ntok(answer) <= cap:
        return reasoning, answer, False
    if reasoning >= cap:
        return cap, "", True
    return reasoning, " ".join(answer.split()[: cap - reasoning]), True


def responses_body(body: dict, answer: str, summary: str, trace: str, key: str, *, factor: float = 1.0,
                   cached: int = 0, content_filter: bool = False) -> dict:
    # The summary arrives as several summary_text parts; clients must join them in order.
    parts = [s.strip() for s in summary.split(";") if s.strip()] if summary else []
    in_tok = _ntok(json.dumps(body.get("input", "")))
    reasoning = int(_ntok(trace) * 3 * factor) if trace else 0
    reason = None
    if content_filter:  # the filter stops the answer part-way
        answer, reason = " ".join(answer.split()[: len(answer.split()) // 2]), "content_filter"
    reasoning, answer, cut = _cap_output(reasoning, answer, body.get("max_output_tokens"))
    if cut:
        reason = "max_output_tokens"
    out_tok = reasoning + (_ntok(answer) if answer or not reason else 0)
    output = [{"type": "reasoning", "id": f"rs_{key}", "summary": [{"type": "summary_text", "text": t} for t in parts]}]
    if answer or not reason:
        output.append({"type": "message", "id": f"msg_{key}", "role": "assistant",
                       "status": "incomplete" if reason else "completed",
                       "content": [{"type": "output_text", "text": answer, "annotations": []}]})
    return {
        "id": f"resp_{key}",
        "object": "response",
        "created_at": 0,
        "status": "incomplete" if reason else "completed",
        "incomplete_details": {"reason": reason} if reason else None,
        "model": body.get("model", "toy-target"),
        "output": output,
        "parallel_tool_calls": True,
        "store": body.get("store", True),
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": in_tok,
            "input_tokens_details": {"cached_tokens": min(cached, in_tok)},
            "output_tokens": out_tok,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": in_tok + out_tok,
        },
    }


def chat_body(body: dict, answer: str, summary: str, trace: str, key: str, *, factor: float = 1.0,
              cached: int = 0, content_filter: bool = False, flavor: str = "openai") -> dict:
    n = int(body.get("n") or 1)
    in_tok = _ntok(json.dumps(body.get("messages", "")))
    reasoning = full = int(_ntok(trace) * 3 * factor) if trace else 0
    finish = "stop"
    if content_filter:
        answer, finish = " ".join(answer.split()[: len(answer.split()) // 2]), "content_filter"
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    reasoning, answer, cut = _cap_output(reasoning, answer, cap)
    if cut:
        finish = "length"
    message = {"role": "assistant", "content": answer}
    if flavor == "vllm" and trace:
        # a reasoning parser returns the whole chain of thought (cut at the cap like any output)
        words = trace.split()
        message["reasoning_content"] = trace if reasoning >= full else " ".join(words[: len(words) * reasoning // full])
    completion = reasoning + (_ntok(answer) if answer or finish == "stop" else 0)
    return {
        "id": f"chatcmpl-{key}",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "toy-target"),
        "choices": [{"index": i, "message": dict(message), "finish_reason": finish} for i in range(n)],
        "usage": {
            "prompt_tokens": in_tok,
            "completion_tokens": completion * n,
            "total_tokens": in_tok + completion * n,
            "prompt_tokens_details": {"cached_tokens": min(cached, in_tok)},
            "completion_tokens_details": {"reasoning_tokens": reasoning * n},
        },
    }


def _system_text(body: dict) -> str:
    msgs = body.get("messages") if "messages" in body else body.get("input")
    if not isinstance(msgs, list):
        return ""
    return " ".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict) and m.get("role") in ("system", "developer"))


def _retry_headers(f: "Faults") -> dict:
    if f.retry_after_form == "ms":
        return {"retry-after-ms": str(int(round(f.retry_after * 1000)))}
    if f.retry_after_form == "date":
        return {"Retry-After": email.utils.formatdate(time.time() + f.retry_after, usegmt=True)}
    return {"Retry-After": str(f.retry_after)}


def make_app(state: ServerState):
    from aiohttp import web

    f = state.faults

    async def handle(request: web.Request, kind: str) -> web.StreamResponse:
        try:
            body = await request.json()
        except Exception:
            return web.json_response({"error": {"message": "invalid JSON body", "type": "invalid_request_error"}}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "invalid JSON body", "type": "invalid_request_error"}}, status=400)
        key = _body_key(body)
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            state.auth_sha256.add(hashlib.sha256(auth[7:].encode()).hexdigest())
        state.total += 1
        state.fields_seen.update(body.keys())
        bad = validate_body(kind, body, state.flavor, state)
        if bad is not None:  # refused before any work: not billed
            state.rejected[bad[0]] += 1
            return web.json_response({"error": {"message": bad[0], "type": "invalid_request_error", "param": bad[1],
                                                "code": bad[2]}}, status=400)
        state.counts[key] += 1
        attempt = state.counts[key]
        state.in_flight += 1
        state.in_flight_keys[key] += 1
        try:
            # A rate limiter answers at once, before any work is done.
            r = state.rng.random()
            edges = [f.p429, f.p500, f.p_timeout, f.p_malformed]
            if attempt <= f.fail_first or r < edges[0]:
                return web.json_response({"error": {"message": "rate limited", "type": "rate_limit"}}, status=429,
                                         headers=_retry_headers(f))
            if f.latency:
                await asyncio.sleep(f.latency)
            r -= edges[0]
            if r < edges[1]:
                return web.json_response({"error": {"message": "internal error", "type": "server_error"}}, status=500)
            r -= edges[1]
            # What the service bills for: the response it produced, whether or not the
            # client gets to read it (stalled, malformed) and whether or not it is complete.
            spread = random.Random(f"{f.seed}:{key}:{attempt}").random() if f.reasoning_spread else 0.0
            system = _system_text(body)
            kw = {"factor": 1.0 + f.reasoning_spread * spread,
                  "cached": _ntok(system) if system and system in state.system_prompts else 0}
            if kind == "chat":
                kw["flavor"] = state.flavor
            builder = responses_body if kind == "responses" else chat_body

            def bill(resp: dict) -> dict:
                u = resp["usage"]
                if kind == "responses":
                    state.billed.update(input_tokens=u["input_tokens"], output_tokens=u["output_tokens"],
                                        cached_input_tokens=u["input_tokens_details"]["cached_tokens"], responses=1)
                else:
                    state.billed.update(input_tokens=u["prompt_tokens"], output_tokens=u["completion_tokens"],
                                        cached_input_tokens=u["prompt_tokens_details"]["cached_tokens"], responses=1)
                if system:
                    state.system_prompts.add(system)
                return resp

            if r < edges[2]:
                bill(builder(body, *_answer(state, body), key, **kw))
                await asyncio.sleep(f.timeout_stall)
                return web.json_response({"error": {"message": "stalled"}}, status=504)
            r -= edges[2]
            if r < edges[3]:
                bill(builder(body, *_answer(state, body), key, **kw))
                return web.Response(text='{"id": "truncated", "output": [', content_type="application/json")
            answer, summary, trace = _answer(state, body)
            if state.rng.random() < f.p_refusal:
                answer, summary, trace = REFUSAL, "", ""
            if state.rng.random() < f.p_empty_summary:
                summary = ""
            if f.p_content_filter and state.rng.random() < f.p_content_filter:
                kw["content_filter"] = True
            state.paid[key] += 1
            return web.json_response(bill(builder(body, answer, summary, trace, key, **kw)))
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
            "flavor": state.flavor, "rejected": sum(state.rejected.values()), "rejected_reasons": dict(state.rejected),
            "ignored_fields": dict(state.ignored_fields), "fields_seen": dict(state.fields_seen),
            "billed": dict(state.billed), "batch_creates": state.batch_creates,
            "batches": {bid: b["status"] for bid, b in state.batches.items()},
            "batch_api_calls": dict(state.batch_api_calls), "files": len(state.files),
        })

    async def reset(request):
        state.counts.clear()
        state.paid.clear()
        state.total = 0
        for c in (state.rejected, state.ignored_fields, state.fields_seen, state.billed):
            c.clear()
        state.system_prompts.clear()
        state.batch_creates = 0
        state.batch_api_calls.clear()
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    add_batch_routes(app, state, handle)
    return app


# ----------------------------------------------------------------------------- Batch API
BATCH_ENDPOINTS = ("/v1/responses", "/v1/chat/completions")  # what the toy can run (the service takes more)
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_MAX_LINES = 50_000


class _LineRequest:
    """A batch line as the request handler reads it (its JSON body and the batch's auth)."""

    def __init__(self, body: dict, auth: str):
        self._body = body
        self.headers = {"Authorization": auth} if auth else {}

    async def json(self) -> dict:
        return self._body


def _oid(prefix: str) -> str:
    return prefix + "".join(random.choice("0123456789abcdef") for _ in range(24))


def _err(message: str, status: int = 400, param=None, code=None, line=None):
    from aiohttp import web

    e = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    if line is not None:
        e["line"] = line
    return web.json_response({"error": e}, status=status)


def parse_batch_input(content: bytes) -> tuple[list[dict] | None, tuple | None]:
    """(lines, None) or (None, (message, code, line)) as the service validates a batch
    input file: JSONL, each line an object with a unique string ``custom_id``, ``method``
    POST, a supported ``url`` and an object ``body``."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None, ("The batch input file is not valid UTF-8.", "invalid_file", None)
    lines, seen = [], set()
    raw = [ln for ln in text.splitlines()]
    while raw and not raw[-1].strip():
        raw.pop()
    if not raw:
        return None, ("The batch input file is empty.", "empty_file", None)
    if len(raw) > BATCH_MAX_LINES:
        return None, (f"The batch input file has more than {BATCH_MAX_LINES} requests.", "too_many_tasks", None)
    for n, ln in enumerate(raw, 1):
        try:
            obj = json.loads(ln)
        except ValueError:
            return None, (f"Line {n}: This line is not parseable as valid JSON.", "invalid_json_line", n)
        if not isinstance(obj, dict):
            return None, (f"Line {n}: expected a JSON object.", "invalid_request", n)
        for k in obj:
            if k not in ("custom_id", "method", "url", "body"):
                return None, (f"Line {n}: Unrecognized field '{k}'.", "invalid_request", n)
        for k in ("custom_id", "method", "url", "body"):
            if k not in obj:
                return None, (f"Line {n}: '{k}' is a required property.", "invalid_request", n)
        if not isinstance(obj["custom_id"], str) or not obj["custom_id"]:
            return None, (f"Line {n}: 'custom_id' must be a non-empty string.", "invalid_request", n)
        if obj["method"] != "POST":
            return None, (f"Line {n}: Invalid method {obj['method']!r}; only POST is supported.", "invalid_method", n)
        if obj["url"] not in BATCH_ENDPOINTS:
            return None, (f"Line {n}: The URL provided for this request is not supported: {obj['url']!r}. Supported "
                          f"URLs: {', '.join(BATCH_ENDPOINTS)}.", "invalid_url", n)
        if not isinstance(obj["body"], dict):
            return None, (f"Line {n}: 'body' must be an object.", "invalid_request", n)
        if obj["custom_id"] in seen:
            return None, (f"Line {n}: The custom_id for this request is a duplicate of another request. The custom_id "
                          "parameter must be unique for each request in a batch.", "duplicate_custom_id", n)
        seen.add(obj["custom_id"])
        lines.append(obj)
    return lines, None


def add_batch_routes(app, state: ServerState, handle) -> None:
    """The Batch API (files upload and content, batches create / retrieve / list / cancel),
    each line run through ``handle`` like a direct request. A batch stays ``validating``
    then ``in_progress`` for ``batch_delay`` seconds in all, then runs its lines,
    ``finalizing``, and ends ``completed`` (or ``expired`` after ``batch_expire_after``
    lines, ``cancelled``, or ``failed`` when its lines name more than one model)."""
    from aiohttp import web

    f = state.faults

    def count(name: str) -> None:
        state.batch_api_calls[name] += 1

    def new_file(content: bytes, filename: str, purpose: str) -> dict:
        obj = {"id": _oid("file-"), "object": "file", "bytes": len(content), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
               "status_details": None}
        state.files[obj["id"]] = {"object": obj, "content": content}
        return obj

    async def upload(request: web.Request):
        count("POST /v1/files")
        try:
            form = await request.post()
        except Exception:
            return _err("Expected a multipart/form-data body with 'file' and 'purpose'.")
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose is None:
            return _err("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
        if purpose not in FILE_PURPOSES:
            state.rejected["invalid purpose"] += 1
            return _err(f"{purpose!r} is not one of {list(FILE_PURPOSES)} - 'purpose'", param="purpose",
                        code="invalid_value")
        if upload is None or isinstance(upload, str):
            return _err("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        content = upload.file.read()
        filename = upload.filename or "upload"
        if purpose == "batch":
            if not filename.endswith(".jsonl"):
                state.rejected["batch file not .jsonl"] += 1
                return _err("Invalid file format for Batch API. Must be .jsonl", param="file", code="invalid_file")
            _, bad = parse_batch_input(content)
            if bad is not None:
                state.rejected[bad[1]] += 1
                return _err(bad[0], param="file", code=bad[1], line=bad[2])
        return web.json_response(new_file(content, filename, purpose))

    def get_file(request: web.Request):
        return state.files.get(request.match_info["file_id"])

    async def file_retrieve(request: web.Request):
        count("GET /v1/files/{id}")
        rec = get_file(request)
        if rec is None:
            return _err(f"No such File object: {request.match_info['file_id']}", status=404, param="id")
        return web.json_response(rec["object"])

    async def file_content(request: web.Request):
        count("GET /v1/files/{id}/content")
        rec = get_file(request)
        if rec is None:
            return _err(f"No such File object: {request.match_info['file_id']}", status=404, param="id")
        return web.Response(body=rec["content"], content_type="application/octet-stream")

    async def run_line(line: dict, auth: str) -> tuple[int, dict]:
        kind = "responses" if line["url"] == "/v1/responses" else "chat"
        resp = await handle(_LineRequest(line["body"], auth), kind)
        try:
            return resp.status, json.loads(resp.body)
        except (TypeError, ValueError):
            return 500, {"error": {"message": "The server had an error processing your request.",
                                   "type": "server_error"}}

    def add_usage(b: dict, kind: str, u: dict) -> None:
        inp, out = ("input_tokens", "output_tokens") if kind == "responses" else ("prompt_tokens", "completion_tokens")
        tot = b["usage"]
        tot["input_tokens"] += u.get(inp, 0)
        tot["output_tokens"] += u.get(out, 0)
        tot["total_tokens"] += u.get(inp, 0) + u.get(out, 0)
        tot["input_tokens_details"]["cached_tokens"] += (u.get(inp + "_details") or {}).get("cached_tokens", 0)
        tot["output_tokens_details"]["reasoning_tokens"] += (u.get(out + "_details") or {}).get("reasoning_tokens", 0)

    async def job(bid: str, lines: list[dict], auth: str) -> None:
        b = state.batches[bid]
        await asyncio.sleep(f.batch_delay / 2)
        models = [ln["body"].get("model") for ln in lines]
        odd = next((i for i, m in enumerate(models) if m != models[0]), None)
        if odd is not None:  # the service runs one model per batch
            b.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [{
                "code": "mismatched_model", "line": odd + 1, "param": "body.model",
                "message": "The provided model does not match the other requests in this batch: a batch runs "
                           "requests for a single model."}]})
            return
        if b["status"] == "cancelling":
            b.update(status="cancelled", cancelled_at=int(time.time()))
            return
        b.update(status="in_progress", in_progress_at=int(time.time()))
        await asyncio.sleep(f.batch_delay / 2)
        limit = len(lines) if f.batch_expire_after < 0 else min(len(lines), f.batch_expire_after)
        results: list = [None] * len(lines)
        sem = asyncio.Semaphore(16)
        kind = "responses" if b["endpoint"] == "/v1/responses" else "chat"

        async def one(i: int) -> None:
            async with sem:
                if b["status"] == "cancelling":
                    return
                status, body = await run_line(lines[i], auth)
                results[i] = (status, body)
                if status == 200:
                    b["request_counts"]["completed"] += 1
                    add_usage(b, kind, body.get("usage") or {})
                else:
                    b["request_counts"]["failed"] += 1

        await asyncio.gather(*(one(i) for i in range(limit)))
        b.update(status="finalizing" if b["status"] != "cancelling" else "cancelling", finalizing_at=int(time.time()))
        out, errs = [], []
        for i, ln in enumerate(lines):
            rec = {"id": _oid("batch_req_"), "custom_id": ln["custom_id"], "response": None, "error": None}
            if results[i] is not None:
                status, body = results[i]
                rec["response"] = {"status_code": status, "request_id": _oid("req_"), "body": body}
                (out if status == 200 else errs).append(rec)
                continue
            if b["status"] == "cancelling":
                rec["error"] = {"code": "batch_cancelled",
                                "message": "This request was not executed because the batch was cancelled."}
            else:
                rec["error"] = {"code": "batch_expired",
                                "message": "This request could not be executed before the completion window expired."}
            b["request_counts"]["failed"] += 1
            errs.append(rec)

        def jsonl(recs: list) -> bytes:
            return "".join(json.dumps(r) + "\n" for r in recs).encode()

        if out:
            b["output_file_id"] = new_file(jsonl(out), f"{bid}_output.jsonl", "batch_output")["id"]
        if errs:
            b["error_file_id"] = new_file(jsonl(errs), f"{bid}_error.jsonl", "batch_output")["id"]
        now = int(time.time())
        if b["status"] == "cancelling":
            b.update(status="cancelled", cancelled_at=now)
        elif limit < len(lines):
            b.update(status="expired", expired_at=now)
        else:
            b.update(status="completed", completed_at=now)

    async def create(request: web.Request):
        count("POST /v1/batches")
        try:
            body = await request.json()
        except Exception:
            return _err("invalid JSON body")
        if not isinstance(body, dict):
            return _err("invalid JSON body")
        for k in body:
            if k not in ("input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"):
                return _err(f"Unrecognized request argument supplied: {k}", param=k, code="unknown_parameter")
        for k in ("input_file_id", "endpoint", "completion_window"):
            if k not in body:
                return _err(f"Missing required parameter: '{k}'.", param=k, code="missing_required_parameter")
        if body["completion_window"] != "24h":
            return _err(f"Invalid value for 'completion_window': {body['completion_window']!r}. Supported values are: "
                        "'24h'.", param="completion_window", code="invalid_value")
        if body["endpoint"] not in BATCH_ENDPOINTS:
            return _err(f"Invalid value for 'endpoint': {body['endpoint']!r}. Supported values are: "
                        f"{', '.join(BATCH_ENDPOINTS)}.", param="endpoint", code="invalid_value")
        md = body.get("metadata")
        if md is not None:
            if (not isinstance(md, dict) or len(md) > 16
                    or any(not isinstance(k, str) or len(k) > 64 or not isinstance(v, str) or len(v) > 512
                           for k, v in md.items())):
                return _err("Invalid 'metadata': at most 16 string keys (up to 64 characters) with string values (up "
                            "to 512 characters).", param="metadata", code="invalid_value")
        rec = state.files.get(body["input_file_id"])
        if rec is None:
            return _err(f"No such File object: {body['input_file_id']}", status=404, param="input_file_id")
        if rec["object"]["purpose"] != "batch":
            return _err("The input file must be uploaded with purpose 'batch'.", param="input_file_id",
                        code="invalid_file")
        lines, bad = parse_batch_input(rec["content"])
        if bad is not None:
            return _err(bad[0], param="input_file_id", code=bad[1], line=bad[2])
        for n, ln in enumerate(lines, 1):
            if ln["url"] != body["endpoint"]:
                state.rejected["batch url does not match endpoint"] += 1
                return _err(f"Line {n}: The URL provided for this request does not match the batch endpoint "
                            f"{body['endpoint']!r}.", param="input_file_id", code="invalid_url", line=n)
        now = int(time.time())
        bid = _oid("batch_")
        b = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
             "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
             "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
             "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
             "expired_at": None, "cancelling_at": None, "cancelled_at": None,
             "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
             "metadata": md, "model": lines[0]["body"].get("model"),
             "usage": {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                       "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}}
        state.batches[bid] = b
        state.batch_creates += 1
        task = asyncio.get_running_loop().create_task(job(bid, lines, request.headers.get("Authorization", "")))
        state.batch_tasks.add(task)
        task.add_done_callback(state.batch_tasks.discard)
        return web.json_response(b)

    def no_batch(bid: str):
        return _err(f"No batch found with id '{bid}'.", status=404, param="batch_id")

    async def retrieve(request: web.Request):
        count("GET /v1/batches/{id}")
        b = state.batches.get(request.match_info["batch_id"])
        return web.json_response(b) if b is not None else no_batch(request.match_info["batch_id"])

    async def list_batches(request: web.Request):
        count("GET /v1/batches")
        q = request.query
        try:
            limit = int(q.get("limit", 20))
        except ValueError:
            limit = -1
        if not 1 <= limit <= 100:
            return _err("Invalid 'limit': expected an integer between 1 and 100.", param="limit", code="invalid_value")
        items = list(reversed(state.batches.values()))  # newest first
        if "after" in q:
            ids = [b["id"] for b in items]
            if q["after"] not in ids:
                return no_batch(q["after"])
            items = items[ids.index(q["after"]) + 1:]
        page = items[:limit]
        return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})

    async def cancel(request: web.Request):
        count("POST /v1/batches/{id}/cancel")
        b = state.batches.get(request.match_info["batch_id"])
        if b is None:
            return no_batch(request.match_info["batch_id"])
        if b["status"] not in ("validating", "in_progress"):
            return _err(f"Cannot cancel a batch with status '{b['status']}'.", status=409)
        b.update(status="cancelling", cancelling_at=int(time.time()))
        return web.json_response(b)

    app.router.add_post("/v1/files", upload)
    app.router.add_get("/v1/files/{file_id}", file_retrieve)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/batches", create)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", retrieve)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m trace_inversion.local_services.toy_server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--summary-every", type=int, default=2)
    ap.add_argument("--flavor", choices=["openai", "vllm"], default="openai",
                    help="validation and payloads: OpenAI's services (default) or a vLLM server with a reasoning parser")
    for name, val in Faults().__dict__.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(val), default=val)
    a = ap.parse_args(argv)
    faults = Faults(**{k: getattr(a, k) for k in Faults().__dict__})
    state = ServerState(ToyWorld(seed=a.world_seed, summary_every=a.summary_every), faults, rng=random.Random(faults.seed),
                        flavor=a.flavor)

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
