"""The transformers LLM (through the one request cache): every EOS id of the generation config stops a sequence
("stop", not "length"), each row samples from its own seed (its output is the same
alone and in any batch), and the model is placed on the GPU when there is one.

Torch runs only in subprocesses (the test process stays torch-free)."""

import json
import subprocess
import sys

import pytest

from trace_inversion.models.transformers import row_seed

SCRIPT = r"""
import json, shutil, sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from trace_inversion.models.cache import RequestCache
from trace_inversion.config import ModelConfig
from trace_inversion.models import CachedModel
from trace_inversion.models.transformers import TransformersLLM, load_kwargs

src, tmp = Path(sys.argv[1]), Path(sys.argv[2])
out = {}
n_cache = [0]


def engine(model, batch_size=32, **sampling):
    n_cache[0] += 1
    cfg = ModelConfig(backend="transformers", model=str(model), sampling=sampling)
    return CachedModel(TransformersLLM.from_config(cfg, batch_size=batch_size),
                       RequestCache(tmp / f"cache{n_cache[0]}.sqlite"))


def run(model, convs, seeds=None, batch_size=32, **sampling):
    e = engine(model, batch_size, **sampling)
    res = e.generate(convs, seeds)
    assert all(r.ok for r in res), [r.error for r in res]
    return [r.response for r in res], e


prompt = [{"role": "user", "content": "Evaluate left to right modulo 10: 3 + 4 * 7 - 2"}]

# --- two EOS ids: the tokenizer's <|im_end|> and a second one (as Llama-3.1 has several)
tok = AutoTokenizer.from_pretrained(src)
model = AutoModelForCausalLM.from_pretrained(src)
enc = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
greedy = model.generate(**enc, max_new_tokens=16, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
special = set(tok.all_special_ids)
k = next(i for i in range(3, len(greedy)) if greedy[i] not in greedy[:i] and greedy[i] not in special)
second = greedy[k]
two = tmp / "two-eos"
shutil.copytree(src, two)
gc = GenerationConfig.from_pretrained(two)
gc.eos_token_id = [tok.eos_token_id, second]
gc.save_pretrained(two)

greedy_cfg = dict(temperature=0.0, repetition_penalty=1.0, max_new_tokens=16)
one_res, _ = run(src, [prompt], **greedy_cfg)
two_res, e2 = run(two, [prompt], **greedy_cfg)
out["eos"] = {"greedy_has_im_end": tok.eos_token_id in greedy, "one": one_res[0], "two": two_res[0],
              "eos_ids": e2.llm.eos_ids, "expected_ids": sorted({tok.eos_token_id, second}),
              "expected_text": tok.decode(greedy[:k], skip_special_tokens=True),
              "full_text": tok.decode(greedy, skip_special_tokens=True), "k": k}

# --- per-row seeding: alone == in a batch == in another batch
convs = [[{"role": "user", "content": "Evaluate left to right modulo 10: " + " + ".join(str(d) for d in range(i + 2))}]
         for i in range(6)]
samp = dict(temperature=0.9, top_p=0.95, top_k=50, repetition_penalty=1.05, max_new_tokens=12)
rows = {}
for name, seeds in (("unseeded", None), ("seeded", [7, 8, 9, 7, 8, 9])):
    batch, _ = run(src, convs, seeds, **samp)
    small, _ = run(src, convs[::-1], seeds[::-1] if seeds else None, batch_size=2, **samp)
    alone = [run(src, [c], [seeds[i]] if seeds else None, **samp)[0][0] for i, c in enumerate(convs)]
    rows[name] = {"batch": [r["answer"] for r in batch], "reordered": [r["answer"] for r in small[::-1]],
                  "alone": [r["answer"] for r in alone]}
diff_seeds = [run(src, [convs[0]], [s], **samp)[0][0]["answer"] for s in (1, 2, 3)]
nres, _ = run(src, convs[:2], [5, 6], **dict(samp, n=3))
nalone, _ = run(src, convs[1:2], [6], **dict(samp, n=3))
out["seeding"] = rows
out["diff_seeds"] = diff_seeds
out["n"] = {"batch": [s["answer"] for s in nres[1]["samples"]], "alone": [s["answer"] for s in nalone[0]["samples"]]}

# --- placement
torch_cuda = torch.cuda.is_available
kw_here, place_here = load_kwargs()
torch.cuda.is_available = lambda: True
kw_gpu, place_gpu = load_kwargs()
torch.cuda.is_available = torch_cuda
out["placement"] = {"here": {k: str(v) for k, v in kw_here.items()}, "gpu": {k: str(v) for k, v in kw_gpu.items()},
                    "gpu_place": place_gpu, "cuda": torch_cuda()}
print("RESULT " + json.dumps(out))
"""


def test_row_seed_comes_from_the_request():
    m = [{"role": "user", "content": "2 + 2"}]
    assert row_seed(m, 5) == 5 and row_seed(m, None) == row_seed([dict(m[0])], None)
    assert row_seed(m, None) != row_seed([{"role": "user", "content": "2 + 3"}], None)
    assert row_seed(m, 5, 1) != 5 and row_seed(m, 5, 1) != row_seed(m, 5, 2)


@pytest.mark.slow
def test_transformers_engine_eos_ids_seeding_and_placement(tiny_lm_dir, tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_lm_dir), str(tmp_path)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])

    eos = out["eos"]
    assert not eos["greedy_has_im_end"]  # with one EOS id, the sequence runs to the cap
    assert eos["one"]["finish_reason"] == "length" and eos["one"]["answer"] == eos["full_text"]
    # the generation config's second EOS id ends it: "stop", the text before it
    assert eos["eos_ids"] == eos["expected_ids"] and len(eos["eos_ids"]) == 2
    assert eos["two"]["finish_reason"] == "stop", eos
    assert eos["two"]["answer"] == eos["expected_text"] and eos["two"]["usage"]["output_tokens"] == eos["k"]

    for name, rows in out["seeding"].items():
        assert rows["batch"] == rows["alone"] == rows["reordered"], name
        assert len(set(rows["batch"])) > 1  # sampled, not a constant
    assert len(set(out["diff_seeds"])) > 1  # the seed is used
    assert out["n"]["batch"] == out["n"]["alone"] and len(set(out["n"]["batch"])) > 1  # samples differ

    pl = out["placement"]
    assert pl["gpu"] == {"dtype": "auto", "device_map": "auto"} and pl["gpu_place"] is None
    if not pl["cuda"]:
        assert pl["here"] == {"dtype": "torch.float32"}
