"""``TransformersLLM``: local ``transformers`` generation, for machines without vLLM.

- Placement: distilabel's device placement gives each local role its own GPUs
  (``CUDA_VISIBLE_DEVICES``); within them ``device_map="auto"`` with the checkpoint's
  dtype, on a CPU float32 (bf16 matmuls are emulated on most CPUs).
- Seeding per row: every sequence samples from its own generator, seeded by its
  request's seed, or, for an unseeded request, by a hash of its conversation (sample j
  of an n-sample request by a hash of both). Decoding (repetition penalty on the row's
  own tokens, temperature, top-k, top-p, the draw) is done per row by ``_RowSampler``,
  so a row's output never depends on the rows batched with it (distilabel's
  ``TransformersLLM`` samples the batch from one generator).
- Stopping: every EOS id of the model's generation config (Llama-3.1 has three) and the
  tokenizer's ends a sequence; only the length cap is ``length``.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Optional

from distilabel.models.llms.base import LLM
from distilabel.models.mixins.cuda_device_placement import CudaDevicePlacementMixin
from pydantic import Field, PrivateAttr

from trace_inversion.models.local import LocalLLM, finish_response
from trace_inversion.models.placement import place, release

Messages = list[dict]


class TransformersLLM(LocalLLM, LLM, CudaDevicePlacementMixin):
    """A local model folder or Hub id run with ``transformers`` generate."""

    backend: ClassVar[str] = "transformers"
    model: str = Field(description="A local model folder or a Hub id.")
    spec: dict[str, Any] = Field(default_factory=dict, description="The other ModelConfig fields (sampling, ...).")
    batch_size: int = Field(32, ge=1, description="Sequences generated together.")
    _model: Any = PrivateAttr(None)
    _tok: Any = PrivateAttr(None)
    _eos: list = PrivateAttr(default_factory=list)

    def load(self) -> None:
        super().load()
        place(self)
        if self._model is not None:
            return
        import multiprocessing as mp

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if mp.parent_process() is not None:
            # A forked worker (distilabel's steps) inherits the parent's OpenMP thread
            # pool in a broken state: if the parent already ran torch ops, a
            # multi-threaded op here deadlocks. One thread avoids the pool.
            torch.set_num_threads(1)
        t0 = time.monotonic()
        self._tok = AutoTokenizer.from_pretrained(self.model)
        self._tok.padding_side = "left"
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        kw, device = load_kwargs()
        kw.update(self.cfg.engine_kwargs or {})
        if self.cfg.dtype:
            kw["dtype"] = self.cfg.dtype
        self._model = AutoModelForCausalLM.from_pretrained(self.model, **kw)
        if device is not None:
            self._model.to(device)
        self._model.eval()
        torch.set_grad_enabled(False)
        self._eos = eos_token_ids(self._model, self._tok)
        self._load_seconds = time.monotonic() - t0

    def unload(self) -> None:
        self._model = self._tok = None
        release(self)
        super().unload()

    @property
    def eos_ids(self) -> list[int]:
        return self._eos

    def generate_responses(self, batch: list[Messages], seeds: list[Optional[int]]) -> list[dict]:
        from transformers import LogitsProcessorList

        if self._model is None:
            self.load()
        model, tok, s = self._model, self._tok, self.cfg.sampling
        eos = set(self._eos)
        # one sequence per (row, sample), each with its own seed; batched by prompt length
        prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in batch]
        lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        items = sorted(((i, j) for i in range(len(batch)) for j in range(s.n)), key=lambda ij: lengths[ij[0]])
        done: dict[tuple[int, int], tuple[str, str, int]] = {}
        for start in range(0, len(items), self.batch_size):
            part = items[start:start + self.batch_size]
            enc = tok([prompts[i] for i, _ in part], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(model.device)
            sampler = _RowSampler([row_seed(batch[i], seeds[i], j) for i, j in part],
                                  (enc["attention_mask"] == 0).sum(dim=1), s.temperature, s.top_p, s.top_k,
                                  s.repetition_penalty)
            # Greedy search over the sampler's output (only the drawn token is finite); the
            # neutral values keep the model's own sampling defaults out of it.
            out = model.generate(**enc, logits_processor=LogitsProcessorList([sampler]), do_sample=False, num_beams=1,
                                 num_return_sequences=1, temperature=1.0, top_p=1.0, top_k=50,
                                 repetition_penalty=1.0, max_new_tokens=s.max_new_tokens,
                                 eos_token_id=self._eos, pad_token_id=tok.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            for k, (i, j) in enumerate(part):
                ids = new[k]
                end = next((n for n, t in enumerate(ids) if t in eos), None)
                ids = ids if end is None else ids[:end]
                done[(i, j)] = (tok.decode(ids, skip_special_tokens=True), "length" if end is None else "stop", len(ids))
        results = []
        for i in range(len(batch)):
            outs = [done[(i, j)] for j in range(s.n)]
            results.append(finish_response([o[0] for o in outs], [o[1] for o in outs], lengths[i],
                                           sum(o[2] for o in outs)))
        return results


def load_kwargs() -> tuple[dict, Optional[str]]:
    """``from_pretrained`` arguments for this machine, and a device to move the model to
    afterwards (None: already placed). GPU: dtype auto, ``device_map="auto"`` when
    accelerate is installed (else one GPU); CPU: float32."""
    import importlib.util

    import torch

    if torch.cuda.is_available():
        if importlib.util.find_spec("accelerate") is not None:
            return {"dtype": "auto", "device_map": "auto"}, None
        return {"dtype": "auto"}, "cuda"
    return {"dtype": torch.float32}, None


def eos_token_ids(model, tok) -> list[int]:
    """Every id that ends a sequence: the generation config's (an int or a list), the
    model config's and the tokenizer's EOS."""
    ids: set[int] = set()
    gen_cfg = getattr(model, "generation_config", None)
    for src in (getattr(gen_cfg, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                tok.eos_token_id):
        if src is None:
            continue
        ids.update(int(x) for x in (src if isinstance(src, (list, tuple)) else [src]) if x is not None)
    return sorted(ids)


def row_seed(messages: Messages, seed: Optional[int], sample: int = 0) -> int:
    """The sampling seed of one sequence: the request's seed, or for an unseeded request
    one derived from its conversation; sample ``j > 0`` of a request mixes in ``j``."""
    import hashlib
    import json

    if seed is None:
        text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        base = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16)
    else:
        base = int(seed)
    if sample:
        base = int(hashlib.sha256(f"{base}:{sample}".encode()).hexdigest()[:15], 16)
    return base


class _RowSampler:
    """A logits processor that decodes each row on its own: the repetition penalty over
    the row's own tokens (its left padding excluded), then temperature, top-k, top-p and
    a draw from the row's seeded generator (greedy when the temperature is 0). It returns
    scores where only the chosen token is finite, so greedy search takes it."""

    def __init__(self, seeds: list[int], pad_lens, temperature: float, top_p: float, top_k: int,
                 repetition_penalty: float):
        self.seeds, self.pad_lens = seeds, pad_lens
        self.temperature, self.top_p, self.top_k, self.penalty = temperature, top_p, top_k, repetition_penalty
        self.gens = None

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float()
        if self.penalty != 1.0:
            # pad positions point at the row's first real token (already in its set)
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
            pad = self.pad_lens.to(input_ids.device)[:, None]
            ids = torch.where(pos < pad, input_ids.gather(1, pad), input_ids)
            picked = scores.gather(1, ids)
            picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
            scores = scores.scatter(1, ids, picked)
        if self.temperature == 0:
            return scores
        scores = scores / self.temperature
        if self.top_k > 0 and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True, dim=-1)
            probs = ordered.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs > self.top_p  # mass before the token already reaches top_p
            drop[:, 0] = False
            scores = scores.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
        probs = scores.softmax(dim=-1)
        if self.gens is None:
            self.gens = [torch.Generator(device=scores.device).manual_seed(sd) for sd in self.seeds]
        chosen = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.gens)])
        return torch.full_like(scores, float("-inf")).scatter(1, chosen, 0.0)
