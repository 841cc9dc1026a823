"""A model role from its YAML config, behind the request cache (for code that is given a
``ModelConfig`` dict, such as the LLM-judge verifier; steps are given an ``llm``)."""

from __future__ import annotations

from typing import Optional


def model_generator(model: dict, cache_path: str, toy_world: Optional[dict] = None, budget_usd: Optional[float] = None,
                    budget_scope: Optional[str] = None, max_model_len: Optional[int] = None):
    """The ``CachedModel`` of one role: the LLM the registry names for its backend (the
    toy world's settings for the toy backend), the run's request cache and budget."""
    from trace_inversion.models import llm_from_config, model_for_step

    return model_for_step(llm_from_config(model, toy_world=toy_world, max_model_len=max_model_len), cache_path,
                          budget_usd, budget_scope)
