#!/usr/bin/env bash
# GPU smoke check, a few minutes on a GPU node: generation with the transformers engine
# (placement on the GPU, per-row seeding, every EOS id) and with vLLM (when installed),
# and short `trl sft` trainings through `trace-inversion`'s launcher (one process; ZeRO-3
# from recipes/accelerate/deepspeed_zero3.yaml when DeepSpeed is installed; 2 processes
# when there are 2+ GPUs), all on a tiny model built in code (nothing is downloaded).
# On a machine without a GPU it runs the CPU path of the same checks and prints SKIP,
# with the reason, for every GPU-only part.
#
#   bash scripts/gpu_check.sh [WORKDIR]      # default WORKDIR: a new temp folder
#   VENV=/path/to/venv bash scripts/gpu_check.sh
#
# One line per check (PASS / FAIL / SKIP), details in WORKDIR/<check>.log; exit 1 if
# any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-.venv}/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
WORK="${1:-$(mktemp -d -t ti-gpu-check-XXXXXX)}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"

cat > "$WORK/gpu_check.py" <<'PY'
"""One check per run (its name in argv[1]); prints 'SKIP: reason' and exits 0 to skip.
Everything runs under the __main__ guard: vLLM starts processes that re-import this file."""
import json
import sys
import time
from pathlib import Path

PROMPTS = [[{"role": "user", "content": "Evaluate left to right modulo 10: " + " + ".join(str(d % 10) for d in range(i + 2))}]
           for i in range(12)]


def info(work: Path) -> dict:
    return json.loads((work / "env.json").read_text())


def skip(reason: str):
    print(f"SKIP: {reason}")
    sys.exit(0)


def tiny_model(work: Path) -> Path:
    return Path((work / "model.txt").read_text().strip())


def engine(work: Path, backend: str, model, cache: str, sampling: dict, **kw):
    """The role's LLM from the registry (engine settings as config fields) behind the one
    request cache, loaded (placement, weights)."""
    from trace_inversion.models import CachedModel, llm_from_config
    from trace_inversion.models.cache import RequestCache

    fields = {k: kw.pop(k) for k in ("max_model_len", "dtype", "gpu_memory_utilization") if k in kw}
    if kw:
        fields["engine_kwargs"] = kw
    m = CachedModel(llm_from_config({"backend": backend, "model": str(model), "sampling": sampling, **fields}),
                    RequestCache(work / cache))
    m.load()
    return m


def check_env(work: Path) -> None:
    import importlib.util

    import torch

    out = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
           "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
           "vllm": importlib.util.find_spec("vllm") is not None,
           "deepspeed": importlib.util.find_spec("deepspeed") is not None,
           "accelerate": importlib.util.find_spec("accelerate") is not None}
    if out["cuda"]:
        out["bf16"] = torch.cuda.is_bf16_supported()
    (work / "env.json").write_text(json.dumps(out))
    print(json.dumps(out))


def check_model(work: Path) -> None:
    from trace_inversion.toy.tiny_models import cached_tiny_lm

    path = cached_tiny_lm(work / "models", num_layers=2)
    (work / "model.txt").write_text(str(path))
    print(f"tiny model: {path}")


def check_transformers(work: Path) -> None:
    import shutil

    from transformers import GenerationConfig

    gpu = info(work)["cuda"]
    model = tiny_model(work)
    sampling = dict(temperature=0.8, top_p=0.95, top_k=50, repetition_penalty=1.05, max_new_tokens=32)
    t0 = time.time()
    e = engine(work, "transformers", model, "tf-batch.sqlite", sampling)
    batch = e.generate(PROMPTS)
    seconds = time.time() - t0
    assert all(r.ok for r in batch), [r.error for r in batch if not r.ok]
    m, tok = e.llm._model, e.llm._tok
    device, placed = str(m.device), getattr(m, "hf_device_map", None)
    alone = [engine(work, "transformers", model, f"tf-alone{i}.sqlite", sampling).generate([p])[0]
             for i, p in enumerate(PROMPTS[:4])]
    assert [r.response["answer"] for r in alone] == [r.response["answer"] for r in batch[:4]], "batch-dependent"
    # a second EOS id in the generation config (as Llama-3.1 has) ends a sequence as "stop"
    enc = tok.apply_chat_template(PROMPTS[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    enc = enc.to(m.device)
    ids = m.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)[0]
    ids = ids[enc["input_ids"].shape[1]:].tolist()
    k = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i] and ids[i] not in tok.all_special_ids)
    two = work / "two-eos"
    shutil.rmtree(two, ignore_errors=True)
    shutil.copytree(model, two)
    gc = GenerationConfig.from_pretrained(two)
    gc.eos_token_id = [tok.eos_token_id, ids[k]]
    gc.save_pretrained(two)
    greedy = dict(sampling, temperature=0.0, repetition_penalty=1.0, max_new_tokens=16)
    stopped = engine(work, "transformers", two, "tf-two.sqlite", greedy).generate(PROMPTS[:1])[0].response
    assert stopped["finish_reason"] == "stop" and stopped["usage"]["output_tokens"] == k, stopped
    print(f"transformers: {len(batch)} rows in {seconds:.1f}s on {device} (device_map: {placed}); "
          "rows identical alone and batched; a second EOS id -> stop")
    if gpu:
        assert device.startswith("cuda"), f"model on {device}, not the GPU"
    else:
        print("GPU placement: SKIPPED (no GPU: ran on the CPU in float32)")


def check_vllm(work: Path) -> None:
    env = info(work)
    if not env["vllm"]:
        skip("vllm is not installed")
    if not env["cuda"]:
        skip("no GPU (vLLM's CPU engine is covered by tests/models/test_vllm_server.py and the demo)")
    sampling = dict(temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.05, max_new_tokens=64)
    t0 = time.time()
    e = engine(work, "vllm", tiny_model(work), "vllm.sqlite", sampling, max_model_len=512, dtype="bfloat16",
               gpu_memory_utilization=0.2, enforce_eager=True)
    try:
        batch = PROMPTS * 8
        res = e.generate(batch, list(range(len(batch))))
    finally:
        e.close()
    assert all(r.ok for r in res), [r.error for r in res if not r.ok][:3]
    finishes: dict = {}
    for r in res:
        finishes[r.response["finish_reason"]] = finishes.get(r.response["finish_reason"], 0) + 1
    print(f"vllm: {len(res)} rows in {time.time() - t0:.1f}s (load {e.load_seconds:.1f}s); finish reasons {finishes}")


def check_train(work: Path, name: str) -> None:
    from trace_inversion.data.io import write_split
    from trace_inversion.prompts import student_messages
    from trace_inversion.toy.world import ToyWorld
    from trace_inversion.training.sft import run_sft

    env = info(work)
    gpu, n_gpu = env["cuda"], len(env["gpus"])
    over: dict = {}
    if name == "train-zero3":
        if not gpu:
            skip("no GPU (DeepSpeed ZeRO-3 needs one)")
        if not env["deepspeed"]:
            skip("deepspeed is not installed (pip install deepspeed to check the 7-8B recipes' launcher)")
        over = {"accelerate_config": "recipes/accelerate/deepspeed_zero3.yaml", "num_processes": n_gpu}
    elif name == "train-multi":
        if n_gpu < 2:
            skip(f"{n_gpu} GPU(s): a 2-process launch needs 2")
        over = {"accelerate_config": "multi_gpu", "num_processes": 2}
    data = work / "student_data"
    if not (data / "data" / "target_traces").exists():
        w = ToyWorld(seed=0, n_ops=3)
        rows = []
        for p in w.problems(512):
            r = w.target_response(p)
            rows.append({"id": p.id, "messages": student_messages(p.text, r["hidden_trace"], r["answer"])})
        write_split(data, "target_traces", rows)
        from trace_inversion.hub_cards.card import card_context, write_card

        # the card's configs: block is how `load_dataset(folder, "target_traces")` finds the config
        write_card(data, card_context("gpu check", "student-data", {"name": "gpu-check"}, {}, {"target_traces": 512}))
    steps = 40 if gpu else 10
    overrides = {"model_name_or_path": str(tiny_model(work)), "dataset_name": str(data),
                 "dataset_config": "target_traces", "output_dir": str(work / name / "model"), "max_steps": steps,
                 "logging_steps": 2, "logging_first_step": True, "per_device_train_batch_size": 16,
                 "use_cpu": not gpu, "bf16": bool(gpu and env.get("bf16")), **over}
    res = run_sft("tiny/student.yaml", overrides, work / name / "run", timeout=900)
    losses = [l["loss"] for l in res["losses"] if "loss" in l]
    assert (Path(res["output_dir"]) / "config.json").exists(), "no model saved"
    assert len(losses) >= 2 and losses[-1] < losses[0], f"loss did not fall: {losses}"
    where = f"{over.get('num_processes', 1)} process(es) on GPU" if gpu else "CPU"
    print(f"{name}: {steps} steps in {res['seconds']:.1f}s on {where}; loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
          f"log {res['log']}")
    if not gpu:
        print("GPU training: SKIPPED (no GPU: the same recipe ran on the CPU)")


def main() -> None:
    check, work = sys.argv[1], Path(sys.argv[2])
    if check.startswith("train"):
        check_train(work, check)
    else:
        {"env": check_env, "model": check_model, "transformers": check_transformers, "vllm": check_vllm}[check](work)


if __name__ == "__main__":
    main()
PY

status=0
summary=()
run_check() {  # name timeout
  local name="$1" limit="$2" log="$WORK/$1.log" t0=$SECONDS rc
  timeout "$limit" "$PY" "$WORK/gpu_check.py" "$name" "$WORK" >"$log" 2>&1
  rc=$?
  local dt=$((SECONDS - t0))
  local skip_line last
  skip_line="$(grep -m1 '^SKIP: ' "$log" || true)"
  if [ $rc -eq 0 ] && [ -n "$skip_line" ]; then
    summary+=("SKIP  $name (${dt}s): ${skip_line#SKIP: }")
  elif [ $rc -eq 0 ]; then
    last="$(grep -v '^\s*$' "$log" | grep -E "^(transformers|vllm|train|tiny model|GPU|\{)" | tr '\n' ' ' | cut -c1-400)"
    summary+=("PASS  $name (${dt}s): $last")
  else
    [ $rc -eq 124 ] && last="timed out after ${limit}s" || last="$(tail -n 3 "$log" | tr '\n' ' ' | cut -c1-400)"
    summary+=("FAIL  $name (${dt}s): $last  (log: $log)")
    status=1
  fi
  echo "${summary[-1]}"
}

echo "gpu_check: work folder $WORK (python: $PY)"
run_check env 120
if [ $status -ne 0 ]; then echo "gpu_check: the environment check failed; see $WORK/env.log"; exit 1; fi
run_check model 300
if [ $status -ne 0 ]; then echo "gpu_check: could not build the tiny model; see $WORK/model.log"; exit 1; fi
run_check transformers 300
run_check vllm 600
run_check train 900
run_check train-zero3 900
run_check train-multi 900
echo
echo "gpu_check summary:"
printf '  %s\n' "${summary[@]}"
exit $status
