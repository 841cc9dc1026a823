"""Verifiers of inverted traces (trace_inversion/scoring/verifiers.py): steps, answer, LLM judge, PRM."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trace_inversion.scoring.verifiers import (AnswerVerifier, JudgeVerifier, Sample, ToyStepsVerifier, combine,
                                       judge_messages, make_verifiers, parse_judge_index, reason_kind,
                                       split_steps, step_at, verdict_reason)

PROBLEM = "Evaluate left to right modulo 10: 3 + 4 * 7 - 2"  # 3+4=7, 7*7=9, 9-2=7
RIGHT = "3+4->7\n7*7->9\n9-2->7"
WRONG_MIDDLE = "3+4->7\n7*7->8\n8-2->6"
# An R1-style trace: prose paragraphs, a wrong middle step, then it argues to the target's answer.
R1_WRONG_MIDDLE = """Okay, let me work through this left to right, keeping everything modulo 10.

First, 3+4=7. That's the running value.

Next, multiply: 7*7=8. Hmm, 49 mod 10... let me keep going with 8.

Then 8-2=6. Wait, the target says 7, so the final value must be 7.

So the answer is \\boxed{7}."""
R1_RIGHT = """Okay, left to right modulo 10.

First, 3+4=7.

Wait, let me double check the product: 7*7=9, since 49 mod 10 is 9.

Then 9-2=7.

So the answer is \\boxed{7}."""
NOT_TOY = "What is the sum of the interior angles of a hexagon?"


def test_split_steps_paragraphs_then_lines():
    assert split_steps("a\nb\n\n  c  \n\n\n d") == ["a\nb", "c", "d"]
    assert split_steps("3+4->7\n7*7->9\n") == ["3+4->7", "7*7->9"]  # one step per line
    assert split_steps("one line") == ["one line"] and split_steps("") == [] and split_steps(None) == []
    assert len(split_steps(R1_WRONG_MIDDLE)) == 5
    assert step_at(R1_WRONG_MIDDLE, R1_WRONG_MIDDLE.index("7*7=8")) == 2
    assert step_at(RIGHT, RIGHT.index("9-2")) == 2


def test_toy_steps_verifier():
    v = ToyStepsVerifier()
    assert v.verify_one(PROBLEM, RIGHT).verdict is True
    assert v.verify_one(PROBLEM, "3+4=7\n7*7=9\n9-2=7").verdict is True  # the target's notation
    bad = v.verify_one(PROBLEM, WRONG_MIDDLE)
    assert (bad.verdict, bad.first_wrong_step) == (False, 1) and bad.reason == "step 2 wrong: '7*7->8'"
    r1 = v.verify_one(PROBLEM, R1_WRONG_MIDDLE)
    assert (r1.verdict, r1.first_wrong_step) == (False, 2)  # the paragraph holding the wrong step
    assert v.verify_one(PROBLEM, R1_RIGHT).verdict is True
    short = v.verify_one(PROBLEM, "3+4->7\n7*7->9")
    assert (short.verdict, short.first_wrong_step) == (False, 1) and short.reason.startswith("incomplete: 2 of 3")
    assert v.verify_one(PROBLEM, "I think it is 7.").as_dict() == {
        "verifier": "steps", "verdict": False, "reason": "no steps in the trace", "first_wrong_step": 0}
    assert v.verify_one(NOT_TOY, "720 degrees").verdict is None
    assert v.applies(Sample(NOT_TOY, None)) == "cannot verify: not a toy-world problem"
    assert v.applies(Sample(PROBLEM, None)) is None


def test_answer_verifier_passes_the_r1_trace_the_step_checker_rejects():
    from trace_inversion.scoring.answer_matching import extract_final_answer

    v = AnswerVerifier()
    target = extract_final_answer("The answer is \\boxed{7}.")
    s = Sample(PROBLEM, R1_WRONG_MIDDLE, "The answer is \\boxed{7}.", target)
    assert v.verify([s])[0].as_dict() == {"verifier": "answer", "verdict": True, "reason": "consistent",
                                          "first_wrong_step": None}
    assert ToyStepsVerifier().verify([s])[0].verdict is False  # what answer checking cannot see
    assert v.verify([Sample(PROBLEM, WRONG_MIDDLE, "\\boxed{7}")])[0].verdict is False
    assert v.applies(Sample(PROBLEM, None, "I am not sure.", (None, "none"))) == \
        "cannot verify: no answer in the target's response"
    assert v.applies(Sample(PROBLEM, None, "\\boxed{7}")) is None


def test_combine_and_reasons():
    ok = {"verifier": "answer", "verdict": True, "reason": "consistent", "first_wrong_step": None}
    steps_bad = {"verifier": "steps", "verdict": False, "reason": "step 2 wrong: '7*7->8'", "first_wrong_step": 1}
    judge_none = {"verifier": "judge", "verdict": None, "reason": "cannot verify: empty judge output",
                  "first_wrong_step": None}
    assert combine([ok]) == (True, "consistent")
    assert combine([ok, judge_none, steps_bad]) == (False, "steps: step 2 wrong: '7*7->8'")
    assert combine([ok, judge_none]) == (None, "judge: cannot verify: empty judge output")
    assert verdict_reason(ok) == "consistent"
    assert reason_kind("inconsistent: trace reaches '3', target answered '7'") == \
        "inconsistent: trace reaches …, target answered …"
    assert reason_kind("step 12 wrong: '7*7->8'") == "step N wrong: …"


@pytest.mark.parametrize("text,n,expected", [
    ("The earliest error is in paragraph 2.\n\n\\boxed{2}", 5, 2),
    ("All paragraphs are correct.\n\\boxed{-1}", 5, -1),
    ("\\boxed{\\text{-1}}", 5, -1),
    ("$\\boxed{3}$", 5, 3),
    ("\\boxed{ 1 }.", 5, 1),
    ("\\boxed{\u22121}", 5, -1),  # a unicode minus
    ("\\boxed{paragraph_4}", 5, 4),
    ("\\boxed{<paragraph_0>}", 5, 0),
    ("\\boxed{\\textbf{2}}", 5, 2),
    ("\\boxed{None}", 5, -1),
    ("\\boxed{not found}", 5, -1),
    ("Early guess \\boxed{1}. On reflection paragraph 1 is fine; \\boxed{3}", 5, 3),  # the last box wins
    ("<think>maybe \\boxed{0}</think>The earliest error is in paragraph 4. \\boxed{4}", 5, 4),
    ("<think>paragraph 2 looks off", 5, None),  # a reasoning judge cut off
    ("The final answer is 2.", 5, 2),  # no box: a final-answer phrase
    ("**Final answer:** -1", 5, -1),
    ("The earliest error is in paragraph 3", 5, 3),
    ("\\boxed{7}", 5, None),  # outside the trace
    ("\\boxed{-2}", 5, None),
    ("\\boxed{2, 3}", 5, None),
    ("\\boxed{B}", 5, None),
    ("I cannot tell.", 5, None),
    ("", 5, None),
    (None, 5, None),
])
def test_parse_judge_index(text, n, expected):
    idx, why = parse_judge_index(text, n)
    assert idx == expected, why
    assert (why == "ok") == (expected is not None)


def test_judge_prompt_is_processbench():
    m = judge_messages(PROBLEM, split_steps(R1_WRONG_MIDDLE))
    assert len(m) == 1 and m[0]["role"] == "user"
    c = m[0]["content"]
    assert "[Math Problem]\n\n" + PROBLEM in c and "<paragraph_4>\nSo the answer is \\boxed{7}.\n</paragraph_4>" in c
    assert c.endswith("Please put your final answer (i.e., the index) in \\boxed{}.")
    assert "return the index of -1" in c


def test_judge_verifier_on_the_toy_server_through_the_cache(toy_server, tmp_path):
    srv = toy_server()
    model = {"backend": "openai-chat", "model": "toy-judge", "base_url": srv.base_url, "max_retries": 0}
    v = JudgeVerifier(model, str(tmp_path / "c.sqlite"))
    samples = [Sample(PROBLEM, R1_WRONG_MIDDLE), Sample(PROBLEM, R1_RIGHT), Sample(PROBLEM, WRONG_MIDDLE),
               Sample(NOT_TOY, "The sum is 720 degrees.")]
    out = [d.as_dict() for d in v.verify(samples)]
    assert out[0] == {"verifier": "judge", "verdict": False, "reason": "judge: earliest wrong paragraph 2",
                      "first_wrong_step": 2}
    assert out[1]["verdict"] is True and out[1]["first_wrong_step"] is None
    assert (out[2]["verdict"], out[2]["first_wrong_step"]) == (False, 1)
    assert out[3]["verdict"] is None and out[3]["reason"].startswith("cannot verify: no \\boxed{} index")
    paid = srv.stats()["total"]
    assert paid == 4
    again = JudgeVerifier(model, str(tmp_path / "c.sqlite"))  # a rerun replays from the request cache
    assert [d.as_dict() for d in again.verify(samples)] == out and srv.stats()["total"] == paid
    assert again.usage.cached_requests == 4
    v.close()
    again.close()


def test_judge_failure_cannot_verify(toy_server, tmp_path):
    srv = toy_server(p500=1.0)
    v = JudgeVerifier({"backend": "openai-chat", "model": "j", "base_url": srv.base_url, "max_retries": 0},
                      str(tmp_path / "c.sqlite"))
    d = v.verify([Sample(PROBLEM, RIGHT)])[0]
    assert d.verdict is None and d.reason.startswith("cannot verify: judge call failed")
    assert v.verify([Sample(PROBLEM, "")])[0].reason == "cannot verify: no steps in the trace"


def test_make_verifiers_errors():
    assert [v.name for v in make_verifiers(["answer", "steps"])] == ["answer", "steps"]
    with pytest.raises(ValueError, match="models.judge"):
        make_verifiers(["answer", "judge"])
    with pytest.raises(ValueError, match="prm_model"):
        make_verifiers(["answer", "prm"])
    with pytest.raises(ValueError, match="unknown verifier"):
        make_verifiers(["answer", "vibes"])


def test_invert_config_verifier_fields(tmp_path):
    from trace_inversion.config import ConfigError, load_config

    cfg = load_config(None, {"invert": {"verifiers": ["answer", "steps", "judge"]}})
    assert cfg.invert.verifiers == ["answer", "steps", "judge"] and cfg.invert.unverifiable_to_students is False
    assert load_config(None, {}).invert.verifiers == ["answer"]
    for bad, match in (({"verifiers": ["steps"]}, "must start with answer"),
                       ({"verifiers": ["answer", "steps", "steps"]}, "twice"),
                       ({"verifiers": ["answer", "vibes"]}, "verifiers"),
                       ({"verifiers": ["answer", "prm"]}, "prm_model"),
                       ({"prm_model": str(tmp_path / "nope")}, "does not exist")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, {"invert": bad})
    # the judge verifier without a judge model fails before any call, naming the field
    from trace_inversion.pipelines.invert import build_pipeline

    cfg = load_config(None, {"models": {"inverter": {"backend": "toy", "model": "toy-inverter"}},
                             "invert": {"verifiers": ["answer", "judge"]}, "output": {"dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="models.judge"):
        build_pipeline(cfg, [])


# ----------------------------------------------------------------------------- PRM (torch in a subprocess)
PRM_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import torch
    from trace_inversion.scoring.verifiers import PRMVerifier, Sample, build_tiny_prm, split_steps, QWEN_PRM_SYSTEM
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    path = build_tiny_prm(sys.argv[1])
    problem, r1, right = json.loads(sys.argv[2])
    out = {}
    v = PRMVerifier(str(path), threshold=0.0, batch_size=2)
    samples = [Sample(problem, r1), Sample(problem, right), Sample(problem, r1)]
    rewards = v.step_rewards([(s.problem, split_steps(s.trace)) for s in samples])
    out["n_rewards"] = [len(r) for r in rewards]
    out["same_in_batch"] = rewards[0] == rewards[2]
    # reference: Qwen2.5-Math-PRM's own recipe, one input at a time
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(path).eval()
    steps = split_steps(r1)
    msgs = [{"role": "system", "content": QWEN_PRM_SYSTEM}, {"role": "user", "content": problem},
            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    ids = tok.encode(tok.apply_chat_template(msgs, tokenize=False), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    sep = tok.encode("<extra_0>", add_special_tokens=False)[0]
    ref = logits.softmax(-1)[0][ids[0] == sep][:, 1].tolist()
    out["max_diff_to_reference"] = max(abs(a - b) for a, b in zip(ref, rewards[0]))
    out["all_pass_at_0"] = [d.as_dict() for d in v.verify(samples[:2])]
    v.threshold = 1.0
    out["all_fail_at_1"] = [d.as_dict() for d in v.verify(samples[:1])]
    # a head with a fixed output: every step good, then every step bad
    head = v._model.score
    with torch.no_grad():
        head.weight.zero_(); head.bias.copy_(torch.tensor([0.0, 5.0]))
    v.threshold = 0.5
    out["good_head"] = v.verify(samples[:1])[0].as_dict()
    with torch.no_grad():
        head.bias.copy_(torch.tensor([5.0, 0.0]))
    out["bad_head"] = v.verify(samples[:1])[0].as_dict()
    v.max_length = 20
    out["too_long"] = v.verify(samples[:1])[0].as_dict()
    try:
        PRMVerifier(str(path), step_token="<no such step token>").load()
    except ValueError as e:
        out["bad_token"] = str(e)
    print("RESULT " + json.dumps(out))
""")


def tiny_prm_dir() -> Path:
    from conftest import MODEL_CACHE

    return MODEL_CACHE / "tiny-prm-v1"


@pytest.mark.slow
def test_prm_verifier_on_a_tiny_prm_shaped_model():
    r = subprocess.run([sys.executable, "-c", PRM_SCRIPT, str(tiny_prm_dir()),
                        json.dumps([PROBLEM, R1_WRONG_MIDDLE, RIGHT])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert out["n_rewards"] == [5, 3, 5] and out["same_in_batch"]
    assert out["max_diff_to_reference"] < 1e-4  # padding and batching change nothing
    assert [d["verdict"] for d in out["all_pass_at_0"]] == [True, True]
    assert out["all_fail_at_1"][0]["verdict"] is False and out["all_fail_at_1"][0]["first_wrong_step"] == 0
    assert out["good_head"]["verdict"] is True and out["good_head"]["reason"].startswith("every step reward >= 0.5")
    assert out["bad_head"] == {"verifier": "prm", "verdict": False, "reason": "step 0 reward 0.007 < 0.5",
                               "first_wrong_step": 0}
    assert out["too_long"]["verdict"] is None and "longer than 20" in out["too_long"]["reason"]
    assert "prm_step_token" in out["bad_token"]
