"""The PRM verifier's vLLM engine: Qwen2.5-Math-PRM step rewards through vLLM's pooling.

vLLM (0.32) runs a process reward model in the Qwen2.5-Math-PRM format as a pooling
model: the architecture ``Qwen2ForProcessRewardModel`` (``vllm/model_executor/models/
qwen2_rm.py``: a Qwen2 body and a ``Linear-ReLU-Linear`` 2-class ``score`` head) with
the ``STEP`` token pooling (``vllm/model_executor/layers/pooler/tokwise/methods.py``,
``StepPool``): of a prompt's per-token logits it returns only the rows at the tokens
equal to ``step_tag_id``. ``LLM(..., runner="pooling", pooler_config=PoolerConfig(
tok_pooling_type="STEP", step_tag_id=...))`` and ``LLM.encode(prompts,
pooling_task="token_classify", pooling_params=PoolingParams(step_tag_id=...,
use_activation=False))`` give one ``(n_steps, 2)`` logit matrix per prompt; the reward
of step k is ``softmax(row k)[1]``, exactly the transformers path's reward
(``PRMVerifier``). The step tag must be set: vLLM's default (151651) is the real
Qwen2.5-Math-PRM's ``<extra_0>`` id, which is wrong for any other tokenizer.

vLLM only pools the architectures it registers: a Llama (or Qwen2) *token classifier*
such as ``verifiers.build_tiny_prm``'s is not one of them, so the vLLM engine needs a
``Qwen2ForProcessRewardModel`` (a real Qwen2.5-Math-PRM, or ``build_tiny_qwen2_prm``'s
tiny one, which transformers loads through its shipped model code,
``trust_remote_code``, as it loads the real one).

Prompts are tokenized here with the model's own tokenizer (``PRMVerifier.prompt``) and
passed to vLLM as token ids, so both engines read the same tokens. CPU defaults as in
``trace_inversion.models.vllm``: float32, eager, no chunked prefill, and the engine
in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) inside a daemonic process.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

PRM_STEP_TOKEN = "<extra_0>"


class VLLMStepRewards:
    """vLLM's STEP pooling on a ``Qwen2ForProcessRewardModel``: per-step rewards of
    tokenized prompts. ``max_length`` caps the engine's ``max_model_len`` (an input
    over ``self.max_length`` gets None); ``extra_kwargs`` go to ``vllm.LLM``."""

    def __init__(self, model: str, step_token_id: int, max_length: int = 4096, trust_remote_code: bool = False,
                 extra_kwargs: Optional[dict[str, Any]] = None):
        self.model_path, self.step_token_id = model, int(step_token_id)
        self.max_length, self.trust_remote_code = max_length, trust_remote_code
        self.extra_kwargs = dict(extra_kwargs or {})
        self._llm = None

    def load(self) -> None:
        if self._llm is not None:
            return
        arch = _architectures(self.model_path)
        if arch and "Qwen2ForProcessRewardModel" not in arch:
            raise ValueError(f"vLLM's PRM engine needs a Qwen2ForProcessRewardModel (the Qwen2.5-Math-PRM "
                             f"architecture); {self.model_path} is {arch}; fix: set invert.prm_engine: transformers")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if mp.parent_process() is not None:  # a daemonic process may not have children
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import torch
        from vllm import LLM
        from vllm.config import PoolerConfig

        kw: dict[str, Any] = dict(runner="pooling", trust_remote_code=self.trust_remote_code, seed=0,
                                  pooler_config=PoolerConfig(tok_pooling_type="STEP", step_tag_id=self.step_token_id))
        native = _max_positions(self.model_path)
        kw["max_model_len"] = min(self.max_length, native) if native else self.max_length
        if not torch.cuda.is_available():
            kw.update(dtype="float32", enforce_eager=True, enable_chunked_prefill=False)
        kw.update(self.extra_kwargs)
        self._llm = LLM(self.model_path, **kw)
        self.max_length = min(self.max_length, int(self._llm.model_config.max_model_len))

    def step_rewards(self, encoded: list[list[int]], max_length: Optional[int] = None) -> list[Optional[list[float]]]:
        """The reward of each step token of each token-id list (None: over ``max_length``,
        and never over the engine's ``max_model_len``)."""
        from vllm import PoolingParams

        self.load()
        limit = min(self.max_length, max_length) if max_length else self.max_length
        out: list[Optional[list[float]]] = [None] * len(encoded)
        fits = [i for i, ids in enumerate(encoded) if len(ids) <= limit]
        if not fits:
            return out
        params = PoolingParams(step_tag_id=self.step_token_id, use_activation=False)
        res = self._llm.encode([{"prompt_token_ids": list(encoded[i])} for i in fits], pooling_params=params,
                               pooling_task="token_classify", use_tqdm=False)
        for i, r in zip(fits, res):
            out[i] = rewards_from_logits(r.outputs.data)
        return out

    def close(self) -> None:
        if self._llm is not None:
            try:  # stop the engine core explicitly, so no engine process outlives the verifier
                self._llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            self._llm = None
            import gc

            gc.collect()


def rewards_from_logits(logits) -> list[float]:
    """Per-step rewards from the step tokens' logits ``(n_steps, n_labels)``: softmax
    class 1 (a 1-logit head: its sigmoid), rounded as ``PRMVerifier`` rounds."""
    x = logits.float().reshape(-1, logits.shape[-1] if logits.ndim else 1)
    probs = x.softmax(-1)[:, 1] if x.shape[-1] >= 2 else x[:, 0].sigmoid()
    return [round(float(p), 6) for p in probs]


def _config(path: str) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _architectures(path: str) -> list[str]:
    return list(_config(path).get("architectures") or [])


def _max_positions(path: str) -> Optional[int]:
    n = _config(path).get("max_position_embeddings")
    return int(n) if n else None


# ----------------------------------------------------------------------------- a tiny Qwen2 PRM
# The model code shipped with the tiny PRM (as Qwen2.5-Math-PRM ships its own): transformers
# loads it with trust_remote_code; vLLM uses its own Qwen2ForProcessRewardModel for the same weights.
MODELING_FILE = "modeling_qwen2_prm.py"
MODELING_SRC = '''"""Qwen2ForProcessRewardModel (the Qwen2.5-Math-PRM layout): Qwen2 + Linear-ReLU-Linear score head."""
from torch import nn
from transformers import Qwen2Config, Qwen2Model, Qwen2PreTrainedModel
from transformers.modeling_outputs import TokenClassifierOutput


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    config_class = Qwen2Config

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Qwen2Model(config)
        self.score = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(),
                                   nn.Linear(config.hidden_size, config.num_labels))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            inputs_embeds=inputs_embeds).last_hidden_state
        return TokenClassifierOutput(logits=self.score(hidden))
'''


def build_tiny_qwen2_prm(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 1) -> Path:
    """A tiny ``Qwen2ForProcessRewardModel`` built in code (offline; for tests): the
    Qwen2.5-Math-PRM layout (Qwen2 body, ``Linear-ReLU-Linear`` 2-class head, its own
    model code in ``modeling_qwen2_prm.py`` behind ``auto_map``), a BPE tokenizer
    trained on toy-world text with ``<extra_0>`` as one special token, and a ChatML
    template. head_dim 32 (vLLM's CPU attention needs >= 32). Random weights, initialised
    wide enough that step rewards spread over (0, 1): arbitrary but deterministic.
    Written atomically; reused when present."""
    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import Qwen2Config

    from trace_inversion.scoring.verifiers import QWEN_PRM_SYSTEM
    from trace_inversion.toy.tiny_models import default_corpus, train_tokenizer

    tok = train_tokenizer(default_corpus(100) + [QWEN_PRM_SYSTEM], vocab_size=384)
    tok.add_tokens([PRM_STEP_TOKEN], special_tokens=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-qwen2-prm-", dir=out.parent))
    try:
        (tmp / MODELING_FILE).write_text(MODELING_SRC)
        spec = importlib.util.spec_from_file_location("_tiny_qwen2_prm_modeling", tmp / MODELING_FILE)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=num_layers, num_attention_heads=hidden_size // 32,
                          num_key_value_heads=hidden_size // 32, max_position_embeddings=2048, num_labels=2,
                          tie_word_embeddings=False, use_sliding_window=False, rms_norm_eps=1e-6,
                          initializer_range=0.1,  # wider than 0.02: step rewards differ between steps
                          pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=None,
                          torch_dtype="float32")
        model = mod.Qwen2ForProcessRewardModel(cfg).float().eval()
        with torch.no_grad():  # larger head weights: rewards spread over (0, 1)
            for layer in (model.score[0], model.score[2]):
                layer.weight.normal_(0.0, 1.0 / hidden_size ** 0.5 * 4)
                layer.bias.normal_(0.0, 0.5)
        model.save_pretrained(tmp, safe_serialization=True)
        conf = json.loads((tmp / "config.json").read_text())
        conf["architectures"] = ["Qwen2ForProcessRewardModel"]
        conf["auto_map"] = {"AutoModel": "modeling_qwen2_prm.Qwen2ForProcessRewardModel"}
        (tmp / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # built meanwhile by another process
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
