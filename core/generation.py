"""One generation interface over every backend (API clients and local engines)."""

from __future__ import annotations

from typing import Optional

from .cache import RequestCache
from .clients import Budget, CallResult, make_client
from .config import ModelConfig
from .toy_world import ToyWorld

LOCAL = ("vllm", "transformers")


class Generator:
    """``generate(conversations, seeds=None) -> [CallResult]`` for any ModelConfig.

    toy / openai-responses / openai-chat go through the async clients (concurrency,
    retries, budget); vllm / transformers through the local engines (batched). All
    through the same request cache.
    """

    def __init__(self, cfg: ModelConfig, cache: RequestCache, world: Optional[ToyWorld] = None,
                 budget: Optional[Budget] = None, **engine_kw):
        self.cfg = cfg
        if cfg.backend in LOCAL:
            from .engines import make_engine

            self.engine = make_engine(cfg, cache, **engine_kw)
            self.client = None
        else:
            self.client = make_client(cfg, cache, world=world, budget=budget)
            self.engine = None

    @property
    def usage(self):
        return (self.engine or self.client).usage

    @property
    def load_seconds(self) -> float:
        return getattr(self.engine, "load_seconds", 0.0) if self.engine is not None else 0.0

    def generate(self, batch: list[list[dict]], seeds: Optional[list[Optional[int]]] = None,
                 retries: Optional[list[int]] = None) -> list[CallResult]:
        if self.engine is not None:
            return self.engine.generate(batch, seeds, retries)
        return self.client.query_many_sync(batch, seeds, retries)

    def latest_retries(self, batch: list[list[dict]], seeds: Optional[list[Optional[int]]] = None) -> list[int]:
        """Per request, the newest retry number the cache holds (0: the original). A
        plain rerun replays that one, so a row fixed by ``--retry-failed`` stays fixed."""
        seeds = seeds or [None if self.engine is None else self.cfg.sampling.seed] * len(batch)
        src = self.engine or self.client
        out = []
        for m, sd in zip(batch, seeds):
            k = 0
            while src.key(m, sd, k + 1) in src.cache:
                k += 1
            out.append(k)
        return out

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def model_generator(model: dict, cache_path: str, toy_world: Optional[dict] = None, budget_usd: Optional[float] = None,
                    budget_scope: Optional[str] = None, max_model_len: Optional[int] = None) -> "Generator":
    """The Generator a step (or a verifier) runs one model role with: the run's request
    cache (secret values of the role's key kept out of it), the run's one budget ledger
    (``budget_scope``: every process and replica of the run draws on the same cap), the
    toy world's settings for the toy backend, and vLLM in-process (inside a distilabel
    worker, which may not have children)."""
    from .config import ToyWorldConfig

    cfg = ModelConfig.model_validate(model)
    world = ToyWorld.from_config(ToyWorldConfig.model_validate(toy_world or {}))
    kw: dict = {}
    if cfg.backend == "vllm":
        kw["in_process"] = True
        if max_model_len:
            kw["max_model_len"] = max_model_len
    return Generator(cfg, RequestCache(cache_path, secret_env=(cfg.api_key_env,)), world=world,
                     budget=Budget.shared(cache_path, budget_usd, budget_scope), **kw)
