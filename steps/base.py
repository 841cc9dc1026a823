"""Shared machinery for steps that call a model (one place for load, progress, errors)."""

from typing import Any, Optional

from distilabel.models.llms.base import LLM
from distilabel.steps import Step
from pydantic import Field, PrivateAttr, model_validator


class ModelStep(Step):
    """A distilabel Step holding one model role: any distilabel ``LLM``.

    Every call goes through the request cache (``trace_inversion.models.CachedModel``):
    a rerun replays finished requests and pays for none, whatever the LLM.

    Attributes:
        llm: any distilabel LLM: the project's (``OpenAIResponsesLLM``, ``OpenAIChatLLM``,
            ``VLLM``, ``TransformersLLM``, ``ToyLLM``) or distilabel's own
            (``OpenAILLM``, ``TransformersLLM``, ``InferenceEndpointsLLM``, ...).
        model: instead of ``llm``, a YAML ``ModelConfig`` as a dict (resolved by the
            registry, ``trace_inversion.models.llm_from_config``).
        cache_path: the request cache (SQLite file) every call goes through.
        budget_usd: cap on new spending by this step (the project's API backends).
        total_rows: rows expected, for the progress bar.
        max_model_len: context length for a vLLM engine built from ``model``.
        retry_failed: send a fresh request for each result the step judges a content
            failure (refusal, empty or truncated output, ...). Without it such results
            are replayed from the cache like any other (a plain rerun pays nothing).
    """

    llm: Optional[LLM] = Field(None, description="The model: any distilabel LLM.")
    model: Optional[dict] = Field(None, description="A ModelConfig dict, instead of llm.")
    cache_path: str
    budget_usd: Optional[float] = Field(None, description="Cap on new spending by this step.")
    total_rows: Optional[int] = Field(None, description="For the progress bar.")
    max_model_len: Optional[int] = None
    retry_failed: bool = Field(False, description="Re-request the rows whose cached result is a content failure.")
    progress_dir: Optional[str] = Field(None, description="Where the step reports its progress for the console.")

    @model_validator(mode="after")
    def _resolve_llm(self):
        if self.llm is None:
            if self.model is None:
                raise ValueError(f"step {self.name}: give llm (any distilabel LLM) or model (a ModelConfig dict)")
            from trace_inversion.models import llm_from_config

            self.llm = llm_from_config(self.model, max_model_len=self.max_model_len)
            self.model = None
        elif self.max_model_len and getattr(self.llm, "backend", None) == "vllm":
            engine = dict(self.llm.extra_kwargs or {})
            if "max_model_len" not in engine:  # the model's own setting wins over the stage's
                engine["max_model_len"] = self.max_model_len
                self.llm = self.llm.model_copy(update={"extra_kwargs": engine})  # never the caller's object
        return self

    _gen: Any = PrivateAttr(None)
    _bar: Any = PrivateAttr(None)
    _seconds: float = PrivateAttr(0.0)
    _retried: int = PrivateAttr(0)
    _done: int = PrivateAttr(0)
    _failed: int = PrivateAttr(0)
    _recovered: int = PrivateAttr(0)
    progress_label: str = "generate"

    def load(self) -> None:
        super().load()
        from trace_inversion.models import model_for_step

        self._gen = model_for_step(self.llm, self.cache_path, self.budget_usd, getattr(self, "budget_scope", None))
        self._gen.load()

    def unload(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._gen is not None:
            self.write_timings()
            self._gen.close()
        super().unload()

    def timings_path(self):
        from pathlib import Path

        return Path(self.cache_path).parent / "timings" / f"{self.name}.json"

    def write_timings(self) -> None:
        """Where this step's time went (engine load vs generation), for stage stats and
        benchmarks: the step runs in a distilabel worker process."""
        import json
        import os

        u = self._gen.usage
        data = {"step": self.name, "backend": self._gen.backend, "seconds_in_model_calls": round(self._seconds, 3),
                "engine_load_seconds": round(self._gen.load_seconds, 3), "requests": u.requests,
                "cached_requests": u.cached_requests, "output_tokens": u.output_tokens, "cost_usd": u.cost_usd,
                "retried_requests": self._retried, "retried_recovered": self._recovered,
                # where the engine ran: distilabel's placement sets CUDA_VISIBLE_DEVICES per step
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "cuda_devices": getattr(self.llm, "cuda_devices", None)}
        gen_s = self._seconds  # the engine is loaded in load(), outside the model calls timed here
        data["generation_seconds"] = round(gen_s, 3)
        data["output_tokens_per_s"] = round(self._gen.paid_output_tokens / gen_s, 1) if gen_s > 0 else None
        p = self.timings_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=2))

    @property
    def model_name(self) -> str:
        return self._gen.model_name

    def call_model(self, conversations: list, seeds: Optional[list] = None, failure=None) -> list:
        """Results in order; an internal failure becomes a failed result per row (never
        an exception, which distilabel would turn into a batch of None rows).

        ``failure(index, result) -> reason | None`` says which successful responses are
        content failures. Each request replays the newest retry the cache holds; with
        ``retry_failed``, a content failure is requested again as the next retry
        number (a new cache key): exactly the failed rows are re-requested."""
        from trace_inversion.models.clients import CallResult
        from trace_inversion.console import verbose, write_progress

        if self._bar is None and verbose():  # else the console draws one line per stage
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_rows, desc=self.progress_label, unit="row", dynamic_ncols=True)
        import time

        t0 = time.monotonic()
        try:
            retries = self._gen.latest_retries(conversations, seeds)
            results = self._gen.generate(conversations, seeds, retries)
            if self.retry_failed and failure is not None:
                redo = [i for i, r in enumerate(results) if r.ok and failure(i, r)]
                if redo:
                    again = self._gen.generate([conversations[i] for i in redo],
                                               [seeds[i] for i in redo] if seeds else None,
                                               [retries[i] + 1 for i in redo])
                    for i, r in zip(redo, again):
                        results[i] = r
                        self._retried += 1
                        self._recovered += int(r.ok and not failure(i, r))
        except Exception as e:
            results = [CallResult(False, error=f"internal error: {type(e).__name__}: {e}")] * len(conversations)
        self._seconds += time.monotonic() - t0
        u = self._gen.usage
        self._done += len(conversations)
        self._failed += sum(1 for r in results if not r.ok)
        write_progress(self.progress_dir, self.name, self.progress_label, self._done, self.total_rows, self._failed,
                       u.cost_usd)
        if self._bar is not None:
            self._bar.update(len(conversations))
            self._bar.set_postfix(cost=f"${u.cost_usd:.4f}", cached=u.cached_requests)
        return results
