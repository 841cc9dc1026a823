"""Tiny models built in code: vLLM-compatible shapes, chat template with generation markers."""

import json

import pytest

from trace_inversion.toy.tiny_models import build_tiny_lm, cached_tiny_lm


def test_tiny_model_loads_and_generates(tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = json.loads((tiny_lm_dir / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] >= 32  # vLLM CPU head sizes
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    msgs = [{"role": "user", "content": "Evaluate left to right modulo 10: 3 + 4"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert torch.isfinite(model(**enc).logits).all()


def test_chat_template_marks_assistant_tokens(tiny_lm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    msgs = [{"role": "user", "content": "Evaluate left to right modulo 10: 3 + 4"},
            {"role": "assistant", "content": "<think>\n3+4=7\n</think>\n\nThe answer is \\boxed{7}."}]
    enc = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assistant = tok.decode([i for i, m in zip(ids, mask) if m])
    assert assistant == "<think>\n3+4=7\n</think>\n\nThe answer is \\boxed{7}.<|im_end|>"
    assert "<think>" in tok.get_vocab()  # structural tokens are single ids
    # byte-level BPE round-trips arbitrary text, including characters it never saw
    assert tok.decode(tok.encode("héllo ∑ 漢字"), skip_special_tokens=True) == "héllo ∑ 漢字"


def test_content_addressed_cache(tmp_path):
    corpus = ["a b c", "1+2=3"] * 20
    a = cached_tiny_lm(tmp_path, corpus=corpus, vocab_size=300, num_layers=1)
    mtime = (a / "config.json").stat().st_mtime
    b = cached_tiny_lm(tmp_path, corpus=corpus, vocab_size=300, num_layers=1)
    assert a == b and (b / "config.json").stat().st_mtime == mtime
    c = cached_tiny_lm(tmp_path, corpus=corpus, vocab_size=300, num_layers=2)
    assert c != a


def test_head_dim_below_32_rejected(tmp_path):
    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_lm(tmp_path / "m", corpus=["x"], hidden_size=64, num_heads=4)
