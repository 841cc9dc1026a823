"""The PRM verifier's vLLM engine (trace_inversion/scoring/prm_vllm.py): vLLM's STEP pooling on a tiny
Qwen2ForProcessRewardModel built in code gives the transformers engine's per-step rewards.

torch and vLLM run in a subprocess (the test process stays torch-free), and there in a daemonic forked
process, as in a distilabel step's worker: the engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROBLEM = "Evaluate left to right modulo 10: 3 + 4 * 7 - 2"
RIGHT = "3+4->7\n7*7->9\n9-2->7"
R1_WRONG_MIDDLE = """Okay, let me work through this left to right, keeping everything modulo 10.

First, 3+4=7. That's the running value.

Next, multiply: 7*7=8. Hmm, 49 mod 10... let me keep going with 8.

Then 8-2=6. Wait, the target says 7, so the final value must be 7.

So the answer is \\boxed{7}."""

ENGINES_SCRIPT = textwrap.dedent(r"""
    import json, multiprocessing as mp, sys, traceback

    def work(q, qwen_dir, llama_dir, texts):
        try:
            import os
            from trace_inversion.scoring.prm_vllm import VLLMStepRewards, build_tiny_qwen2_prm
            from trace_inversion.scoring.verifiers import (PRMVerifier, Sample, build_tiny_prm, make_verifiers,
                                                       split_steps)

            problem, r1, right = texts
            path = str(build_tiny_qwen2_prm(qwen_dir))
            out = {}
            samples = [Sample(problem, r1), Sample(problem, right), Sample(problem, r1)]
            items = [(s.problem, split_steps(s.trace)) for s in samples]
            hf = PRMVerifier(path, trust_remote_code=True, batch_size=2)
            vl = make_verifiers(["prm"], prm={"model": path, "trust_remote_code": True, "engine": "vllm"})[0]
            out["transformers"], out["vllm"] = hf.step_rewards(items), vl.step_rewards(items)
            out["classes"] = [type(hf._model).__name__, type(vl._model).__name__]
            out["verdicts"] = {}
            for t in (0.1, 0.5, 0.9):
                hf.threshold = vl.threshold = t
                out["verdicts"][str(t)] = [[d.as_dict() for d in v.verify(samples)] for v in (hf, vl)]
            out["in_process"] = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
            out["max_length"] = vl.max_length
            vl.max_length = 20
            out["too_long"] = vl.verify(samples[:1])[0].as_dict()
            vl.close()
            out["closed"] = vl._model is None
            llama = str(build_tiny_prm(llama_dir))
            try:
                VLLMStepRewards(llama, hf._sep).load()
            except ValueError as e:
                out["not_qwen2_prm"] = str(e)
            q.put(out)
        except BaseException:
            q.put({"error": traceback.format_exc()})

    if __name__ == "__main__":
        ctx = mp.get_context("fork")  # no torch in this parent: forking it is safe
        q = ctx.Queue()
        p = ctx.Process(target=work, args=(q, sys.argv[1], sys.argv[2], json.loads(sys.argv[3])), daemon=True)
        p.start()
        out = q.get(timeout=900)
        p.join(60)
        print("RESULT " + json.dumps(out))
""")


def model_dirs() -> tuple[Path, Path]:
    from conftest import MODEL_CACHE

    return MODEL_CACHE / "tiny-qwen2-prm-v1", MODEL_CACHE / "tiny-prm-v1"


def first_below(rewards: list[float], threshold: float):
    return next((k for k, x in enumerate(rewards) if x < threshold), None)


def test_prm_engine_choice(tmp_path):
    from trace_inversion.config import ConfigError, load_config
    from trace_inversion.scoring.verifiers import PRMVerifier

    assert load_config(None, {}).invert.prm_engine == "transformers"
    with pytest.raises(ValueError, match="unknown PRM engine"):
        PRMVerifier("some/prm", engine="sglang")
    folders = {}
    for name, arch in (("qwen", "Qwen2ForProcessRewardModel"), ("llama", "LlamaForTokenClassification")):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "config.json").write_text(json.dumps({"architectures": [arch]}))
    cfg = load_config(None, {"invert": {"verifiers": ["answer", "prm"], "prm_model": str(folders["qwen"]),
                                        "prm_engine": "vllm"}})
    assert cfg.invert.prm_engine == "vllm"
    # vLLM pools only its own PRM architecture: a token classifier fails at config time, naming the fix
    with pytest.raises(ConfigError, match="prm_engine: transformers"):
        load_config(None, {"invert": {"prm_model": str(folders["llama"]), "prm_engine": "vllm"}})
    assert load_config(None, {"invert": {"prm_model": str(folders["llama"])}}).invert.prm_engine == "transformers"
    with pytest.raises(ConfigError, match="prm_engine"):
        load_config(None, {"invert": {"prm_engine": "sglang"}})


@pytest.mark.slow
def test_both_prm_engines_agree_on_a_tiny_qwen2_prm():
    qwen_dir, llama_dir = model_dirs()
    r = subprocess.run([sys.executable, "-c", ENGINES_SCRIPT, str(qwen_dir), str(llama_dir),
                        json.dumps([PROBLEM, R1_WRONG_MIDDLE, RIGHT])],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "RESULT " in r.stdout, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert "error" not in out, out.get("error")
    hf, vl = out["transformers"], out["vllm"]
    # transformers runs the model's own code (as Qwen2.5-Math-PRM ships it); vLLM its STEP pooling
    assert out["classes"] == ["Qwen2ForProcessRewardModel", "VLLMStepRewards"]
    assert [len(x) for x in hf] == [len(x) for x in vl] == [5, 3, 5]
    assert max(abs(a - b) for h, v in zip(hf, vl) for a, b in zip(h, v)) < 1e-4
    assert vl[0] == vl[2]  # batching changes nothing
    assert max(max(x) for x in hf) - min(min(x) for x in hf) > 0.5  # the tiny PRM's rewards are spread
    firsts = set()
    for t, (by_hf, by_vl) in out["verdicts"].items():  # the same verdicts and first wrong steps
        assert [(d["verdict"], d["first_wrong_step"]) for d in by_hf] == \
            [(d["verdict"], d["first_wrong_step"]) for d in by_vl], t
        assert all(d["verifier"] == "prm" for d in by_vl)
        firsts.add(by_vl[0]["first_wrong_step"])
    assert len(firsts) > 1  # the thresholds put the first wrong step at different places
    assert out["in_process"] == "0" and out["max_length"] == 2048  # capped at the model's positions
    assert out["too_long"]["verdict"] is None and "longer than 20 PRM tokens" in out["too_long"]["reason"]
    assert out["closed"]
    assert "Qwen2ForProcessRewardModel" in out["not_qwen2_prm"]
    assert "LlamaForTokenClassification" in out["not_qwen2_prm"]
