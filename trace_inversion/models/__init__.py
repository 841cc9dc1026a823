"""The model layer: every backend is a distilabel ``LLM``, and one cache wraps them all.

- ``project``: the project's API and toy backends as distilabel ``AsyncLLM`` classes:
  ``OpenAIResponsesLLM`` (Responses API with reasoning summaries), ``OpenAIChatLLM``
  (any OpenAI-compatible chat server; ``reasoning_content`` kept apart), ``ToyLLM`` (the
  toy world's roles: the toy world lives only here).
- ``vllm``: ``VLLM``, distilabel's ``vLLM`` fixed for vLLM 0.32 (see its docstring).
- ``transformers``: ``TransformersLLM`` (per-row seeded sampling, every EOS id).
- ``cached``: ``CachedModel``, the one path from any LLM (the project's or any other
  distilabel LLM) to the request cache: a hit is replayed, a miss is paid once and
  committed before it is returned.
- ``registry``: ``llm_from_config`` resolves a YAML ``ModelConfig`` (``backend: ...``)
  to one of these classes.
"""

# Lazy: ``trace_inversion.models.cache`` (the cache file, the `cache` command) must not
# import distilabel, so that ``trace-inversion --help`` stays fast.
_EXPORTS = {"CachedModel": "cached", "model_for_step": "cached", "BACKENDS": "registry", "llm_from_config": "registry"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
