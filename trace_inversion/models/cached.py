"""``CachedModel``: the one path from any distilabel LLM to the request cache.

In the spirit of lm-eval's ``CachingLM``: whatever the LLM (the project's classes or any
other distilabel ``LLM``: ``OpenAILLM``, ``TransformersLLM``, ``InferenceEndpointsLLM``,
...), a request is looked up by its key; a hit is replayed; a miss is generated once and
committed (its own SQLite transaction, secret values scrubbed) before it is returned, so
a crash or SIGKILL loses at most the requests in flight and a rerun pays for none.

Request identity:
- the project's LLMs say what identifies a request (``backend``, ``model_key``,
  ``key_payload``: messages, sampling, server, declared revision, toy world);
- any other LLM: its class, ``model_name``, its ``base_url`` when it has one, its
  generation kwargs, the messages and the request's seed.
A retry number (``--retry-failed``) and a resampling seed are part of every key.

Misses of an async LLM are requested concurrently and committed one by one as each
returns; a synchronous (local) LLM generates misses in chunks, each committed as soon
as it finishes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from trace_inversion.models.cache import RequestCache, model_signature, request_key
from trace_inversion.models.clients import Budget, CallResult, Usage, retry_seed, with_retry
from trace_inversion.models.project import ProjectLLM

Messages = list[dict]


def local_chunk_size(llm) -> int:
    """Requests per call of a local LLM (the cache commits after each): 64, or for vLLM
    256 and at least the sequences its engine runs at once (``max_num_seqs``), so that
    a wider engine is fed wide enough."""
    if getattr(llm, "backend", "") != "vllm":
        return 64
    return max(256, int((getattr(llm, "extra_kwargs", None) or {}).get("max_num_seqs") or 0))


class CachedModel:
    """``generate(conversations, seeds, retries) -> [CallResult]`` for any LLM."""

    def __init__(self, llm, cache: RequestCache, budget: Optional[Budget] = None, concurrency: int = 16,
                 chunk_size: Optional[int] = None):
        from distilabel.models.llms.base import AsyncLLM

        self.llm = llm
        self.cache = cache
        self.project = isinstance(llm, ProjectLLM)
        self.is_async = isinstance(llm, AsyncLLM)
        self.concurrency = getattr(getattr(llm, "cfg", None), "concurrency", concurrency)
        self.chunk_size = chunk_size or local_chunk_size(llm)
        self.hits = Usage()  # cache hits
        self.misses = Usage()  # generations, for LLMs that do not count what they paid themselves
        self._own_usage = self.project and hasattr(type(llm), "usage")  # the API/toy clients count theirs
        if self.project and hasattr(llm, "bind_budget"):
            llm.bind_budget(budget)
        elif not self.project and budget is not None and budget.cap is not None:
            raise ValueError(f"budget_usd applies to the project's API backends; {type(llm).__name__} has no "
                             "price; fix: remove the budget or use openai-responses / openai-chat")
        self._loaded = False
        self._sem: Optional[asyncio.Semaphore] = None
        self._sem_loop = None
        if not self.project:
            self._foreign_model = _foreign_model_key(llm)

    # ------------------------------------------------------------------ identity
    @property
    def backend(self) -> str:
        return self.llm.backend if self.project else f"distilabel:{type(self.llm).__name__}"

    @property
    def model_name(self) -> str:
        return self.llm.model_name

    @property
    def cfg(self):
        return getattr(self.llm, "cfg", None)

    @property
    def default_seed(self) -> Optional[int]:
        return self.llm.default_seed if self.project else None

    def payload(self, messages: Messages, seed: Optional[int] = None, retry: int = 0) -> dict:
        if self.project:
            return with_retry(self.llm.key_payload(messages, seed), retry)
        kwargs = dict(getattr(self.llm, "generation_kwargs", None) or {})
        return with_retry({"messages": messages, "params": kwargs, "n": 1, "attempt_seed": seed,
                           "server": getattr(self.llm, "base_url", None)}, retry)

    @property
    def model_key(self) -> str:
        """The model's id in request keys (a local folder's includes its files' signature)."""
        return self.llm.model_key if self.project else self._foreign_model

    def key_of(self, payload: dict) -> str:
        return request_key(self.backend, self.model_key, payload)

    def key(self, messages: Messages, seed: Optional[int] = None, retry: int = 0) -> str:
        return self.key_of(self.payload(messages, seed, retry))

    # ------------------------------------------------------------------ accounting
    @property
    def usage(self) -> Usage:
        paid = self.llm.usage if self._own_usage else self.misses
        u = Usage()
        for src in (self.hits, paid or Usage()):
            for f in vars(u):
                setattr(u, f, getattr(u, f) + getattr(src, f))
        return u

    @property
    def paid_output_tokens(self) -> int:
        """Output tokens generated in this run (cache hits excluded)."""
        return self.usage.output_tokens - self.hits.output_tokens

    @property
    def load_seconds(self) -> float:
        return float(getattr(self.llm, "load_seconds", 0.0) or 0.0)

    def load(self) -> None:
        if not self._loaded:
            self.llm.load()
            self._loaded = True

    def close(self) -> None:
        if self._loaded:
            self.llm.unload()
            self._loaded = False

    def _present(self, response: dict) -> dict:
        return self.llm.present(response) if self.project else response

    def _hit(self, key: str) -> Optional[CallResult]:
        hit = self.cache.get(key)
        if hit is None:
            return None
        self.cache.hits += 1
        self.hits.add(hit.get("usage", {}), 0.0, True)
        return CallResult(True, response=self._present(hit), cached=True)

    def _commit(self, key: str, payload: dict, response: dict) -> dict:
        self.cache.misses += 1
        response = self.cache.clean(response)
        self.cache.put(key, self.backend, self.model_key, payload, response)
        if not self._own_usage:
            self.misses.add(response.get("usage", {}), 0.0, False)
        return response

    # ------------------------------------------------------------------ generation
    def latest_retries(self, batch: list[Messages], seeds: Optional[list[Optional[int]]] = None) -> list[int]:
        """Per request, the newest retry number the cache holds (0: the original). A
        plain rerun replays that one, so a row fixed by ``--retry-failed`` stays fixed."""
        seeds = seeds or [self.default_seed] * len(batch)
        out = []
        for m, sd in zip(batch, seeds):
            k = 0
            while self.key(m, sd, k + 1) in self.cache:
                k += 1
            out.append(k)
        return out

    def generate(self, batch: list[Messages], seeds: Optional[list[Optional[int]]] = None,
                 retries: Optional[list[int]] = None) -> list[CallResult]:
        """One result per conversation, in order; a failure is a result with its reason."""
        self.load()
        if self.is_async:
            if self.project:
                return self.query_many_sync(batch, seeds, retries)
            return self.llm.event_loop.run_until_complete(self.query_many(batch, seeds, retries))
        return self._generate_local(batch, seeds, retries)

    # async LLMs -------------------------------------------------------------
    async def query(self, messages: Messages, seed: Optional[int] = None, retry: int = 0) -> CallResult:
        payload = self.payload(messages, seed, retry)
        key = self.key_of(payload)
        hit = self._hit(key)
        if hit is not None:
            return hit
        if self.project:
            res = await self.llm.call(messages, seed)
        else:
            res = await self._foreign_call(messages, seed)
        if res.ok:
            res.response = self._present(self._commit(key, payload, res.response))
        return res

    async def _foreign_call(self, messages: Messages, seed: Optional[int]) -> CallResult:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            self._sem, self._sem_loop = asyncio.Semaphore(self.concurrency), loop
        t0 = time.monotonic()
        async with self._sem:
            try:
                kw = dict(getattr(self.llm, "generation_kwargs", None) or {})
                if getattr(self.llm, "_num_generations_param_supported", True):
                    kw["num_generations"] = 1  # (Anthropic, Mistral, Groq, ... take no such argument)
                out = await self.llm.agenerate(input=messages, **kw)
            except Exception as e:
                return CallResult(False, error=f"{type(self.llm).__name__}: {type(e).__name__}: {str(e)[:300]}",
                                  attempts=1, latency_s=time.monotonic() - t0)
        response = response_of(out, 0)
        if response is None:
            return CallResult(False, error=f"{type(self.llm).__name__} returned no generation", attempts=1)
        return CallResult(True, response=response, attempts=1, latency_s=time.monotonic() - t0)

    async def query_many(self, batch: list[Messages], seeds: Optional[list[Optional[int]]] = None,
                         retries: Optional[list[int]] = None) -> list[CallResult]:
        seeds = seeds or [None] * len(batch)
        retries = retries or [0] * len(batch)
        done = await asyncio.gather(*(self.query(m, sd, rt) for m, sd, rt in zip(batch, seeds, retries)),
                                    return_exceptions=True)
        # one request's unexpected error is that row's reason, never the batch's
        return [r if isinstance(r, CallResult) else
                CallResult(False, error=f"internal error: {type(r).__name__}: {str(r)[:300]}") for r in done]

    def query_many_sync(self, batch: list[Messages], seeds: Optional[list[Optional[int]]] = None,
                        retries: Optional[list[int]] = None) -> list[CallResult]:
        async def go():
            try:
                return await self.query_many(batch, seeds, retries)
            finally:
                if self.project:
                    await self.llm.aclose()
        return asyncio.run(go())

    async def aclose(self) -> None:
        if self.project and hasattr(self.llm, "aclose"):
            await self.llm.aclose()

    # local (synchronous) LLMs ------------------------------------------------
    def _generate_local(self, batch: list[Messages], seeds: Optional[list[Optional[int]]],
                        retries: Optional[list[int]]) -> list[CallResult]:
        """Seeds (per request) are part of the key, so resampling with a new seed is a
        new request; so is a retry number, which also moves the sampling seed so that a
        retried request can come out differently."""
        seeds = seeds or [self.default_seed] * len(batch)
        retries = retries or [0] * len(batch)
        payloads = [self.payload(m, sd, rt) for m, sd, rt in zip(batch, seeds, retries)]
        keys = [self.key_of(p) for p in payloads]
        results: list[Optional[CallResult]] = [None] * len(batch)
        misses = []
        for i, k in enumerate(keys):
            results[i] = self._hit(k)
            if results[i] is None:
                misses.append(i)
        for start in range(0, len(misses), self.chunk_size):
            idx = misses[start:start + self.chunk_size]
            t0 = time.monotonic()
            try:
                outs = self._local_chunk([batch[i] for i in idx], [retry_seed(seeds[i], retries[i]) for i in idx])
            except Exception as e:  # engine failure: every row of the chunk keeps its reason
                for i in idx:
                    results[i] = CallResult(False, error=f"engine error: {type(e).__name__}: {str(e)[:200]}",
                                            attempts=1)
                continue
            dt = time.monotonic() - t0
            for i, out in zip(idx, outs):
                if out is None:
                    results[i] = CallResult(False, error=f"{type(self.llm).__name__} returned no generation",
                                            attempts=1)
                    continue
                out = self._commit(keys[i], payloads[i], out)
                results[i] = CallResult(True, response=self._present(out), attempts=1,
                                        latency_s=dt / max(1, len(idx)))
        return results  # type: ignore[return-value]

    def _local_chunk(self, batch: list[Messages], seeds: list[Optional[int]]) -> list[Optional[dict]]:
        if self.project:
            return self.llm.generate_responses(batch, seeds)
        outs = self.llm.generate(inputs=batch, num_generations=1,
                                 **(getattr(self.llm, "generation_kwargs", None) or {}))
        return [response_of(o, 0) for o in outs]


def response_of(out: Any, i: int) -> Optional[dict]:
    """The normalised response of generation ``i`` of a distilabel ``GenerateOutput``:
    answer, usage (from its statistics), and the project's own fields when present."""
    if not isinstance(out, dict):
        return None
    if out.get("responses"):
        return out["responses"][i]
    gens = out.get("generations") or []
    if i >= len(gens) or gens[i] is None:
        return None
    stats = out.get("statistics") or {}

    def stat(name: str) -> int:
        v = stats.get(name)
        v = v[i] if isinstance(v, list) and i < len(v) else v
        return int(v or 0) if isinstance(v, (int, float)) or v is None else 0

    return {"answer": gens[i], "summary": None, "finish_reason": None,
            "usage": {"input_tokens": stat("input_tokens"), "output_tokens": stat("output_tokens"),
                      "reasoning_tokens": 0}}


def _foreign_model_key(llm) -> str:
    name = str(llm.model_name)
    sig = model_signature(name)
    return name if sig is None else f"{name}@{request_key('files', name, {'f': sig})[:16]}"


def model_for_step(llm, cache_path: str, budget_usd: Optional[float] = None,
                   budget_scope: Optional[str] = None, secret_env: tuple = ()) -> CachedModel:
    """The CachedModel a step (or a verifier) runs its LLM through: the run's request
    cache (secret values of the role's key kept out of it) and the run's one budget
    ledger (``budget_scope``: every process and replica of the run draws on one cap)."""
    cfg = getattr(llm, "cfg", None)
    env = tuple(secret_env) + ((cfg.api_key_env,) if cfg is not None and cfg.api_key_env else ())
    budget = Budget.shared(cache_path, budget_usd, budget_scope) if budget_usd is not None else None
    return CachedModel(llm, RequestCache(cache_path, secret_env=env), budget=budget)
