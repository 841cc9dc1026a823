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

from trace_inversion.models.cached import CachedModel, model_for_step
from trace_inversion.models.registry import BACKENDS, llm_from_config

__all__ = ["BACKENDS", "CachedModel", "llm_from_config", "model_for_step"]
