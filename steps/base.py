"""Shared machinery for steps that call a model (one place for load, progress, errors)."""

from typing import Any, Optional

from distilabel.steps import Step
from pydantic import Field, PrivateAttr


class ModelStep(Step):
    """A distilabel Step holding one model role.

    Attributes:
        model: a ``ModelConfig`` as a dict (any backend: toy, openai-responses,
            openai-chat, vllm, transformers).
        cache_path: the request cache every call goes through.
        toy_world: ``ToyWorldConfig`` fields for the toy backend.
        budget_usd: cap on new spending by this step (API backends).
        total_rows: rows expected, for the progress bar.
        max_model_len: context length for the vLLM engine (None: the model's).
    """

    model: dict
    cache_path: str
    toy_world: Optional[dict] = None
    budget_usd: Optional[float] = Field(None, description="Cap on new spending by this step.")
    total_rows: Optional[int] = Field(None, description="For the progress bar.")
    max_model_len: Optional[int] = None

    _gen: Any = PrivateAttr(None)
    _bar: Any = PrivateAttr(None)
    progress_label: str = "generate"

    def load(self) -> None:
        super().load()
        from trace_inversion.cache import RequestCache
        from trace_inversion.clients import Budget
        from trace_inversion.config import ModelConfig, ToyWorldConfig
        from trace_inversion.generation import Generator
        from trace_inversion.toy_world import ToyWorld

        cfg = ModelConfig.model_validate(self.model)
        world = ToyWorld.from_config(ToyWorldConfig.model_validate(self.toy_world or {}))
        kw = {"max_model_len": self.max_model_len} if cfg.backend == "vllm" and self.max_model_len else {}
        self._gen = Generator(cfg, RequestCache(self.cache_path), world=world, budget=Budget(self.budget_usd), **kw)

    def unload(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._gen is not None:
            self._gen.close()
        super().unload()

    @property
    def model_name(self) -> str:
        return self._gen.cfg.model

    def call_model(self, conversations: list, seeds: Optional[list] = None) -> list:
        """Results in order; an internal failure becomes a failed result per row (never
        an exception, which distilabel would turn into a batch of None rows)."""
        from tqdm.auto import tqdm

        from trace_inversion.clients import CallResult

        if self._bar is None:
            self._bar = tqdm(total=self.total_rows, desc=self.progress_label, unit="row", dynamic_ncols=True)
        try:
            results = self._gen.generate(conversations, seeds)
        except Exception as e:
            results = [CallResult(False, error=f"internal error: {type(e).__name__}: {e}")] * len(conversations)
        self._bar.update(len(conversations))
        u = self._gen.usage
        self._bar.set_postfix(cost=f"${u.cost_usd:.4f}", cached=u.cached_requests)
        return results
