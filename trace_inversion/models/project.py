"""The project's API and toy backends as distilabel LLMs.

Each class takes the fields of a ``ModelConfig`` (``model``, ``base_url``,
``api_key_env``, ``sampling``, prices, ...) as keyword arguments, validated at
construction with the same messages as a YAML config. They work in any distilabel Task
(``generate`` returns distilabel's ``GenerateOutput``); the project's steps call them
through ``CachedModel`` (``call`` / ``key_payload``), which caches every request.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from distilabel.models.llms.base import AsyncLLM
from pydantic import BaseModel, Field, PrivateAttr

from trace_inversion.models.clients import Budget, CallResult, present, request_client
from trace_inversion.config import ModelConfig, ToyWorldConfig

Messages = list[dict]


class ProjectLLM(BaseModel):
    """What the project's LLM classes add to distilabel's contract (mixed into an LLM).

    ``cfg``: the validated ``ModelConfig``; ``key_payload(messages, seed)``: what
    identifies a request in the cache (with ``backend`` and ``model_key``);
    ``present(response)``: the stored response as the steps read it;
    ``default_seed``: the seed of a request that names none."""

    backend: ClassVar[str] = ""
    _cfg: Optional[ModelConfig] = PrivateAttr(None)
    _cfg_key: Optional[str] = PrivateAttr(None)
    _n: Optional[int] = PrivateAttr(None)  # a sample count asked for by distilabel's num_generations

    def __init__(self, **data: Any) -> None:
        # ModelConfig fields given as keyword arguments are kept in ``spec`` (not a
        # "before" validator: with validate_assignment it would also run on every
        # assignment, over the instance's __dict__)
        extra = {k: data.pop(k) for k in list(data) if k not in type(self).model_fields}
        if extra:
            data["spec"] = {**(data.get("spec") or {}), **extra}
        super().__init__(**data)

    # Validated once at construction (model_post_init, not an "after" validator: with
    # distilabel's validate_assignment, an after validator re-validates the whole model on
    # every assignment, and then fails on distilabel's cached properties).
    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        _ = self.cfg

    @property
    def cfg(self) -> ModelConfig:
        """The validated ModelConfig: ``spec``, with ``generation_kwargs`` over its sampling."""
        import json

        key = json.dumps([self.spec, self.generation_kwargs, self._n], sort_keys=True, default=str)
        if self._cfg is None or self._cfg_key != key:
            sampling = {**(self.spec.get("sampling") or {}), **(self.generation_kwargs or {})}
            if self._n is not None:
                sampling["n"] = self._n
            self._cfg = ModelConfig.model_validate({**self.spec, "backend": self.backend, "model": self.model,
                                                    "sampling": sampling})
            self._cfg_key = key
        return self._cfg

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def model_key(self) -> str:
        return self.model

    @property
    def default_seed(self) -> Optional[int]:
        return None

    def present(self, response: dict) -> dict:
        return response

    @classmethod
    def from_config(cls, cfg: ModelConfig, **kw):
        d = cfg.model_dump(mode="json", exclude_unset=True, exclude={"backend"})
        d["model"] = cfg.model
        if cfg.sampling is not None:
            d["sampling"] = cfg.sampling.model_dump(mode="json")
        return cls(**{**d, **kw})


class _RequestLLM(ProjectLLM, AsyncLLM):
    """An API or toy backend: one request at a time (``call``), retries, budget."""

    model: str = Field(description="Model id (the API's name for it), or a toy-* role for the toy backend.")
    spec: dict[str, Any] = Field(default_factory=dict, description="The other ModelConfig fields (base_url, "
                                 "api_key_env, sampling, prices, concurrency, ...).")
    _client: Any = PrivateAttr(None)
    _budget: Optional[Budget] = PrivateAttr(None)

    def client(self):
        if self._client is None:
            self._client = request_client(self.cfg, budget=self._budget, **self._client_kwargs())
        return self._client

    def _client_kwargs(self) -> dict:
        return {}

    def bind_budget(self, budget: Optional[Budget]) -> None:
        self._budget = budget
        self._client = None

    @property
    def usage(self):
        return self.client().usage

    def key_payload(self, messages: Messages, seed: Optional[int] = None) -> dict:
        return self.client().payload(messages, seed)

    async def call(self, messages: Messages, seed: Optional[int] = None) -> CallResult:
        """One paid request (not cached)."""
        return await self.client().call(messages, seed)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def agenerate(self, input: Messages, num_generations: int = 1, seed: Optional[int] = None,
                        temperature: Optional[float] = None, top_p: Optional[float] = None,
                        top_k: Optional[int] = None, max_new_tokens: Optional[int] = None,
                        repetition_penalty: Optional[float] = None) -> dict:
        """distilabel's contract: ``{"generations": [...], "statistics": {...}}``, plus
        ``responses`` (the normalised responses: answer, summary/trace, usage).

        Args:
            input: the conversation.
            num_generations: requests sent (each one sample).
            seed: the request's sampling seed (where the backend takes one).
            temperature: sampling temperature (as ``generation_kwargs``, which a distilabel
                Task also passes here: they are already part of the model's config).
            top_p: nucleus sampling (likewise).
            top_k: top-k sampling (likewise).
            max_new_tokens: the output cap (likewise).
            repetition_penalty: the repetition penalty (likewise)."""
        outs = []
        for _ in range(num_generations):
            r = await self.call(input, seed)
            outs.append(self.present(r.response) if r.ok else None)
        return generate_output(outs)


def generate_output(responses: list[Optional[dict]]) -> dict:
    return {"generations": [r["answer"] if r else None for r in responses],
            "statistics": {"input_tokens": [(r or {}).get("usage", {}).get("input_tokens", 0) for r in responses],
                           "output_tokens": [(r or {}).get("usage", {}).get("output_tokens", 0) for r in responses]},
            "responses": responses}


class OpenAIResponsesLLM(_RequestLLM):
    """OpenAI's Responses API, with reasoning summaries (``reasoning_summary``) kept as
    the response's summary. distilabel has no Responses API LLM."""

    backend: ClassVar[str] = "openai-responses"

    def present(self, response: dict) -> dict:
        return present(response, self.cfg.reasoning_kind)


class OpenAIChatLLM(_RequestLLM):
    """Any OpenAI-compatible chat server (vLLM, SGLang, DeepSeek, OpenAI's chat API); a
    ``reasoning_content`` field is kept apart from the answer (a trace by default)."""

    backend: ClassVar[str] = "openai-chat"

    def present(self, response: dict) -> dict:
        return present(response, self.cfg.reasoning_kind)


class ToyLLM(_RequestLLM):
    """The toy world's roles (``toy-target``, ``toy-surrogate``, ``toy-compressor``,
    ``toy-inverter``): offline, free, deterministic. ``world`` holds the toy world's
    settings, part of every request key (changing them never replays old responses)."""

    backend: ClassVar[str] = "toy"
    world: dict[str, Any] = Field(default_factory=dict, description="ToyWorldConfig fields.")

    def _client_kwargs(self) -> dict:
        from trace_inversion.toy.world import ToyWorld

        return {"world": ToyWorld.from_config(ToyWorldConfig.model_validate(self.world))}

    def key_payload(self, messages: Messages, seed: Optional[int] = None) -> dict:
        world = ToyWorldConfig.model_validate(self.world).model_dump(mode="json", exclude={"n_train", "n_test"})
        return dict(super().key_payload(messages, seed), world=world)  # dataset sizes change no response
