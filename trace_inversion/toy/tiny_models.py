"""Tiny causal LMs built in code: the offline stand-ins for every model role.

Nothing is downloaded. A byte-level BPE tokenizer is trained on a corpus in code,
wrapped as a ``PreTrainedTokenizerFast`` with a ChatML template that carries
``{% generation %}`` markers (so TRL's ``assistant_only_loss`` works), and paired with
a randomly initialised Llama whose head_dim is >= 32 (vLLM's CPU attention needs it).
Folders are content-addressed: the same parameters give the same folder, built once
and reused (by tests per session, by the demo per run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Frequent structural strings get their own ids so tiny models see them as one unit.
EXTRA_TOKENS = ["<think>", "</think>"]


def default_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Toy-world text covering every string the project's prompts and outputs use."""
    from trace_inversion.toy.world import ToyWorld

    w = ToyWorld(seed=seed)
    texts = []
    for p in w.problems(n):
        r = w.target_response(p)
        texts += [p.text, r["hidden_trace"], r["summary"], r["answer"], w.surrogate_response(p)]
    texts += ["system", "user", "assistant", "Problem:", "Answer:", "Summary:", "Reasoning summary:",
              "Write the full reasoning.", "Solve step by step."]
    return texts


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512):
    """Byte-level BPE trained on ``corpus``; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.add_tokens(EXTRA_TOKENS)
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 4096
    return fast


def _digest(params: dict, corpus: list[str]) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for t in corpus:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_tiny_lm(
    out_dir: str | os.PathLike,
    corpus: Optional[list[str]] = None,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Build a tiny Llama + tokenizer and save it to ``out_dir`` (atomically).

    ``hidden_size / num_heads`` must be >= 32 (vLLM CPU attention head sizes). An
    existing ``out_dir`` is replaced only when this project made it (or ``force``).
    """
    from trace_inversion.config.safe_paths import PathSafetyError, absolute, is_owned, mark_owned

    out = absolute(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not is_owned(out) and not force:
        raise PathSafetyError(f"{out} exists, is not empty and was not created by trace-inversion; fix: choose a "
                              "new folder, or pass --force to replace it")
    if hidden_size % num_heads or hidden_size // num_heads < 32:
        raise ValueError(
            f"head_dim = hidden_size/num_heads = {hidden_size}/{num_heads} must be an integer >= 32 for vLLM CPU; "
            "fix: raise hidden_size or lower num_heads"
        )
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    corpus = corpus if corpus is not None else default_corpus()
    tok = train_tokenizer(corpus, vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, do_sample=False
    )
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent if out.parent.exists() else None))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        mark_owned(tmp)
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        elif out.exists() or out.is_symlink():
            out.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def cached_tiny_lm(cache_root: str | os.PathLike, corpus: Optional[list[str]] = None, **params) -> Path:
    """Content-addressed ``build_tiny_lm``: reuse ``cache_root/tiny-<hash>`` if built."""
    corpus = corpus if corpus is not None else default_corpus()
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"tiny-{_digest(params, corpus)}"
    if not (target / "config.json").exists():
        build_tiny_lm(target, corpus, **params)
    return target


def add_parser(subparsers) -> None:
    """The ``tiny-model`` command."""
    from trace_inversion.cli_options import add_force

    p = subparsers.add_parser("tiny-model", help="tool: build a tiny causal LM + tokenizer in code (offline)",
                              description="Build a randomly initialised tiny Llama with a locally trained BPE "
                                          "tokenizer and a ChatML template with generation markers.")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    add_force(p)
    p.set_defaults(func=main)


def main(args) -> int:
    path = build_tiny_lm(args.output, hidden_size=args.hidden_size, num_layers=args.layers,
                         num_heads=args.heads, vocab_size=args.vocab_size, seed=args.seed, force=args.force)
    print(f"tiny model saved to {path}")
    return 0
