"""What the project's local LLMs (vLLM, transformers) share: ModelConfig fields,
request identity (a local folder's files are part of the model's identity), and
distilabel's ``generate`` contract over ``generate_responses(batch, seeds)``."""

from __future__ import annotations

from typing import Optional

from pydantic import PrivateAttr

from trace_inversion.models.cache import model_signature, request_key
from trace_inversion.models.clients import chat_payload
from trace_inversion.models.project import ProjectLLM, generate_output

Messages = list[dict]


def finish_response(texts: list[str], finishes: list[Optional[str]], n_in: int, n_out: int) -> dict:
    """The normalised response of a local generation (``samples`` when n > 1)."""
    out = {"answer": texts[0], "summary": None, "finish_reason": finishes[0],
           "usage": {"input_tokens": n_in, "output_tokens": n_out, "reasoning_tokens": 0}}
    if len(texts) > 1:
        out["samples"] = [{"answer": t, "summary": None, "finish_reason": f} for t, f in zip(texts, finishes)]
    return out


class LocalLLM(ProjectLLM):
    _model_key: Optional[str] = PrivateAttr(None)
    _load_seconds: float = PrivateAttr(0.0)

    @property
    def load_seconds(self) -> float:
        """Seconds the last ``load`` took (engine start, weights)."""
        return self._load_seconds

    @property
    def model_key(self) -> str:
        """The model's id in request keys: a local folder's id includes its files'
        signature, so a model retrained into the same folder is a new model."""
        if self._model_key is None:
            sig = model_signature(self.model)
            self._model_key = (self.model if sig is None
                               else f"{self.model}@{request_key('files', self.model, {'f': sig})[:16]}")
        return self._model_key

    @property
    def default_seed(self) -> Optional[int]:
        return self.cfg.sampling.seed

    def key_payload(self, messages: Messages, seed: Optional[int] = None) -> dict:
        return chat_payload(self.cfg, messages, seed)

    def generate_responses(self, batch: list[Messages], seeds: list[Optional[int]]) -> list[dict]:
        raise NotImplementedError

    def generate(self, inputs: list[Messages], num_generations: int = 1,
                 seeds: Optional[list[Optional[int]]] = None, temperature: Optional[float] = None,
                 top_p: Optional[float] = None, top_k: Optional[int] = None, max_new_tokens: Optional[int] = None,
                 repetition_penalty: Optional[float] = None) -> list[dict]:
        """distilabel's contract (``generations``, ``statistics``), plus ``responses``.

        Args:
            inputs: the conversations.
            num_generations: samples per conversation (replaces the configured n).
            seeds: a sampling seed per conversation (default: the configured seed).
            temperature: sampling temperature (as ``generation_kwargs``, which a distilabel
                Task also passes here: they are already part of the model's config).
            top_p: nucleus sampling (likewise).
            top_k: top-k sampling (likewise).
            max_new_tokens: the output cap (likewise).
            repetition_penalty: the repetition penalty (likewise)."""
        seeds = seeds or [self.default_seed] * len(inputs)
        self._n = num_generations if num_generations != self.cfg.sampling.n else None
        try:
            outs = self.generate_responses(inputs, seeds)
        finally:
            self._n = None
        result = []
        for r in outs:
            samples = r.get("samples") or [r]
            # the request's usage on its first sample only (statistics are summed per sample)
            out = generate_output([dict(s, usage=r["usage"] if k == 0 else {}) for k, s in enumerate(samples)])
            result.append(out)
        return result
