"""The project's steps in a distilabel pipeline written as a user would write it (not
through the project's pipelines): load rows -> ``QueryTarget`` on distilabel's own
``OpenAILLM`` (against the local OpenAI-compatible server) -> ``InvertTraces`` on a tiny
local model -> ``KeepVerified``; once with distilabel's ``TransformersLLM`` as the
inverter and once with the project's ``VLLM``. Each run is SIGKILLed in the middle of
the inversion, then run again: it completes with 0 repeated model calls (every
generation the engines ran, and every request the server answered, happened once)."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

SCRIPT = r'''
import json, os, signal, sys
from pathlib import Path

from distilabel.models.llms import OpenAILLM, TransformersLLM
from distilabel.pipeline import Pipeline
from distilabel.steps import KeepColumns, LoadDataFromDicts

from trace_inversion.models.vllm import VLLM
from trace_inversion.steps.inversion import InvertTraces
from trace_inversion.steps.query_target import QueryTarget
from trace_inversion.steps.verified_filter import KeepVerified
from trace_inversion.toy.world import ToyWorld

base_url, model_dir, work, variant = sys.argv[1:5]
work = Path(work)
kill_at = int(os.environ.get("KILL_AT_CALL", "0"))
calls_log = work / "engine_calls.jsonl"
count = [0]


def engine_call(prompts):
    """Every generation an engine runs is logged; the kill_at-th one kills the run
    (the whole process group, like a SIGKILL from outside) before it generates."""
    count[0] += 1
    if kill_at and count[0] == kill_at:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    with calls_log.open("a") as f:
        for p in prompts:
            f.write(json.dumps(p) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Counted:
    def __init__(self, pipe):
        self.pipe = pipe

    def __call__(self, prompts, **kw):
        engine_call([[p, kw.get("temperature")] for p in prompts])
        return self.pipe(prompts, **kw)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


class CountingTransformersLLM(TransformersLLM):
    def load(self):
        super().load()
        self._pipeline = Counted(self._pipeline)


class CountingVLLM(VLLM):
    def generate_responses(self, batch, seeds):
        engine_call([[b, s] for b, s in zip(batch, seeds)])
        return super().generate_responses(batch, seeds)


rows = [{"id": p.id, "problem": p.text} for p in ToyWorld(seed=3, n_ops=3).problems(12)]
cache = str(work / "requests.sqlite")
with Pipeline(name=f"user-{variant}", cache_dir=str(work / "distilabel")) as pipeline:
    load = LoadDataFromDicts(data=rows, batch_size=12)
    target = QueryTarget(llm=OpenAILLM(model="toy-target", base_url=base_url, api_key="EMPTY",
                                       generation_kwargs={"max_new_tokens": 512}),
                         cache_path=cache, input_batch_size=12)
    if variant == "transformers":
        inverter = CountingTransformersLLM(model=model_dir, generation_kwargs={"max_new_tokens": 16})
    else:
        inverter = CountingVLLM(model=model_dir, sampling={"max_new_tokens": 16}, extra_kwargs={"max_model_len": 512})
    invert = InvertTraces(llm=inverter, cache_path=cache, with_summary=False, max_attempts=2, input_batch_size=2)
    keep = KeepVerified(name="keep_verified", excluded_path=str(work / "excluded.jsonl"))
    audit = KeepColumns(name="audit", columns=["id", "target_answer", "inverted_trace", "inversion_status", "inversion_reason",
                                             "inversion_attempts"])
    load >> target >> invert >> [keep, audit]

distiset = pipeline.run(use_cache=False)
out = {name: distiset[name]["train"].to_list() for name in distiset}
print("SUBSETS", {k: len(v) for k, v in out.items()})
(work / "result.json").write_text(json.dumps(out))
'''


def run(script, args, env_extra=None, timeout=600):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["transformers", "vllm"])
def test_a_users_distilabel_pipeline_resumes_after_sigkill_with_no_repeated_calls(variant, tiny_lm_dir, toy_server,
                                                                                  tmp_path):
    srv = toy_server()
    script = tmp_path / "user_pipeline.py"
    script.write_text(SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    args = [srv.base_url, str(tiny_lm_dir), str(work), variant]

    first = run(script, args, {"KILL_AT_CALL": "3"})
    assert first.returncode != 0 and not (work / "result.json").exists(), first.stderr[-3000:]
    done_before = Counter(work.joinpath("engine_calls.jsonl").read_text().splitlines())
    assert sum(done_before.values()) >= 2  # two inversion batches were generated before the kill
    served_before = srv.get("/stats")["total"]
    assert served_before == 12  # the whole target query ran (one batch) before the inversion

    second = run(script, args)
    assert second.returncode == 0, second.stderr[-3000:]
    engine_calls = Counter(work.joinpath("engine_calls.jsonl").read_text().splitlines())
    # each row's prompt is sampled max_attempts = 2 times (distilabel's TransformersLLM
    # takes no per-request seed: the seed is only in the cache key; the project's VLLM
    # logs it); a generation repeated after the resume would make a count exceed that
    per_request = 2 if variant == "transformers" else 1
    repeated = {k: n for k, n in engine_calls.items() if n > per_request}
    assert not repeated, f"{len(repeated)} generations ran again after the resume"
    stats = srv.get("/stats")
    assert stats["total"] == 12 and max(stats["counts"].values()) == 1  # the target was paid once per row

    out = json.loads((work / "result.json").read_text())
    # the filter's leaf wrote no row, so distilabel names the one subset that has rows "default"
    assert list(out) in (["audit", "keep_verified"], ["default"]), list(out)
    audit = out.get("audit") or out["default"]
    assert len(audit) == 12 and len({r["id"] for r in audit}) == 12
    assert all("\\boxed" in r["target_answer"] for r in audit)
    # a tiny random model states no readable answer: no row is verified; each keeps its
    # status and reason, and the filter wrote every one of them out with it
    assert all(r["inversion_status"] in ("rejected", "unverifiable") and r["inversion_reason"] for r in audit)
    assert not [r["inversion_reason"] for r in audit if "fail" in r["inversion_reason"] or "error" in r["inversion_reason"]]
    assert out.get("keep_verified", []) == []
    excluded = [json.loads(x) for x in (work / "excluded.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in excluded) == sorted(r["id"] for r in audit)
    assert all(r["inversion_reason"] for r in excluded)
    # every sample the rows record was generated exactly once, across the crash
    assert sum(engine_calls.values()) == sum(len(r["inversion_attempts"]) for r in audit)
