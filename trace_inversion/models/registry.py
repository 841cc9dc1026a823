"""One registry: a YAML ``ModelConfig``'s ``backend`` names a distilabel LLM class."""

from __future__ import annotations

from typing import Any, Optional

from trace_inversion.config import ModelConfig

BACKENDS = {
    "toy": "trace_inversion.models.project:ToyLLM",
    "openai-responses": "trace_inversion.models.project:OpenAIResponsesLLM",
    "openai-chat": "trace_inversion.models.project:OpenAIChatLLM",
    "vllm": "trace_inversion.models.vllm:VLLM",
    "transformers": "trace_inversion.models.transformers:TransformersLLM",
}


def llm_class(backend: str):
    import importlib

    try:
        module, name = BACKENDS[backend].split(":")
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; fix: one of {sorted(BACKENDS)}") from None
    return getattr(importlib.import_module(module), name)


def llm_from_config(cfg: ModelConfig | dict, toy_world: Any = None, max_model_len: Optional[int] = None):
    """The distilabel LLM for a model role. ``toy_world`` (a ``ToyWorld``,
    ``ToyWorldConfig`` or dict) goes to the toy backend only; ``max_model_len`` (a stage
    setting) to vLLM unless the model sets its own."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.model_validate(cfg)
    cls = llm_class(cfg.backend)
    if cfg.backend == "toy":
        return cls.from_config(cfg, world=_world_dict(toy_world))
    if cfg.backend == "vllm":
        engine: dict = {"tensor_parallel_size": cfg.tensor_parallel_size}
        if cfg.gpu_memory_utilization is not None:
            engine["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        mml = cfg.max_model_len or max_model_len
        if mml:
            engine["max_model_len"] = mml
        engine.update(cfg.engine_kwargs or {})
        kw: dict = {"extra_kwargs": engine}
        if cfg.dtype:
            kw["dtype"] = cfg.dtype
        if cfg.cuda_devices is not None:
            kw["cuda_devices"] = cfg.cuda_devices
        return cls.from_config(cfg, **kw)
    if cfg.backend == "transformers":
        kw = {} if cfg.cuda_devices is None else {"cuda_devices": cfg.cuda_devices}
        return cls.from_config(cfg, **kw)
    return cls.from_config(cfg)


def _world_dict(world: Any) -> dict:
    if world is None:
        return {}
    if isinstance(world, dict):
        return world
    if hasattr(world, "model_dump"):  # a ToyWorldConfig
        return world.model_dump(mode="json")
    import dataclasses

    return {f.name: getattr(world, f.name) for f in dataclasses.fields(world) if not f.name.startswith("_")}
