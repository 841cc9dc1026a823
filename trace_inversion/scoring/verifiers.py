"""Verifiers of inverted traces: answer consistency, then step-level checks.

Verified synthesis (``steps/inversion.py``) runs the configured verifiers
(``invert.verifiers``, default ``[answer]``) on every sample that passed the filters
(empty, truncated, degenerate repetition):

- ``answer``: answer consistency (``answer_matching.consistency_verdict``), always first;
- ``steps``: the toy world's exact step checker (``toy_world.check_steps``); "cannot
  verify" for a problem that is not a toy-world problem;
- ``judge``: an LLM judge on any backend, through the request cache, asked with
  ProcessBench's protocol for the index of the earliest wrong paragraph, or -1, in
  ``\\boxed{}`` (``JUDGE_TEMPLATE``, ``parse_judge_index``);
- ``prm``: a process reward model in the Qwen2.5-Math-PRM format (``PRMVerifier``), run
  with transformers or with vLLM's reward pooling (``prm_vllm``).

Contract. A verifier has a ``name`` and three methods:

- ``applies(sample) -> None | str``: None when it can ever judge this row, else the
  reason it never can ("cannot verify: ..."). A row some verifier can never judge gets
  one sample and is not resampled: no sample can verify it.
- ``verify(samples) -> list[Verdict]``: one ``Verdict`` per ``Sample``, in order,
  batched (a judge sends all of a round's requests at once).
- ``close()``: free what it loaded.

A ``Verdict`` is ``verifier``, ``verdict`` (True: the trace passes; False: it is wrong;
None: cannot verify, never silently a False), ``reason`` and ``first_wrong_step``: the
index, into ``split_steps(trace)``, of the first wrong step (None unless the verdict is
False and the verifier can point at a step). Verdicts are stored as plain dicts
(``Verdict.as_dict``) in the ``verification`` column.

Steps (``split_steps``): the paragraphs of a trace, split on blank lines (the format
ProcessBench and Qwen2.5-Math-PRM use); a trace with no blank line but several lines
(the toy world's one step per line) is split on lines.

Verifiers are pure functions over their inputs except ``judge`` (model calls, cached)
and ``prm`` (a transformers model or a vLLM engine, loaded lazily in the process that
verifies: a distilabel step's worker, never the process that forks it).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

VERIFIERS = ("answer", "steps", "judge", "prm")
STEP_VERIFIERS = ("steps", "judge", "prm")


@dataclass
class Sample:
    """One trace to verify, with its row: problem, the target's answer text and, when
    already extracted, the target's ``(answer, method)``."""

    problem: str
    trace: Optional[str]
    given_answer: Optional[str] = None
    target: Optional[tuple] = None


@dataclass
class Verdict:
    verifier: str
    verdict: Optional[bool]
    reason: str
    first_wrong_step: Optional[int] = None

    def as_dict(self) -> dict:
        return asdict(self)


def verdict_reason(v: dict | Verdict) -> str:
    """A verdict's reason as the row's ``inversion_reason`` gives it: answer reasons as
    they are ("consistent", "inconsistent: ...", "cannot verify: ..."), step-level ones
    prefixed with the verifier ("steps: step 3 wrong: ...")."""
    d = v.as_dict() if isinstance(v, Verdict) else v
    return d["reason"] if d["verifier"] == "answer" else f"{d['verifier']}: {d['reason']}"


def combine(verification: list[dict]) -> tuple[Optional[bool], str]:
    """A sample's verdict from its verifiers' (in run order): False if any says wrong
    (the first such reason), else None if any cannot verify, else True."""
    for v in verification:
        if v["verdict"] is False:
            return False, verdict_reason(v)
    for v in verification:
        if v["verdict"] is None:
            return None, verdict_reason(v)
    return True, "; ".join(verdict_reason(v) for v in verification) or "consistent"


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def reason_kind(reason: Optional[str]) -> str:
    """A reason with its values blanked, for counting: ``inconsistent: trace reaches
    '3', target answered '7'`` -> ``inconsistent: trace reaches …, target answered …``;
    ``step 4 wrong: '2*3->5'`` -> ``step N wrong: …``."""
    return _NUMBER.sub("N", _QUOTED.sub("…", reason or ""))


# ----------------------------------------------------------------------------- steps
_PARA_BREAK = re.compile(r"\n[ \t]*\n\s*")


def _trimmed(text: str, a: int, b: int) -> Optional[tuple[int, int]]:
    seg = text[a:b]
    if not seg.strip():
        return None
    return a + (len(seg) - len(seg.lstrip())), b - (len(seg) - len(seg.rstrip()))


def step_spans(trace: Optional[str]) -> list[tuple[int, int]]:
    """Character spans of ``split_steps(trace)``."""
    text = trace or ""
    spans, pos = [], 0
    for m in _PARA_BREAK.finditer(text):
        s = _trimmed(text, pos, m.start())
        if s:
            spans.append(s)
        pos = m.end()
    s = _trimmed(text, pos, len(text))
    if s:
        spans.append(s)
    if len(spans) == 1 and "\n" in text[spans[0][0]:spans[0][1]]:  # one step per line
        a0, b0 = spans[0]
        spans, pos = [], a0
        for line in text[a0:b0].split("\n"):
            s = _trimmed(text, pos, pos + len(line))
            if s:
                spans.append(s)
            pos += len(line) + 1
    return spans


def split_steps(trace: Optional[str]) -> list[str]:
    """The steps of a trace: paragraphs split on blank lines, or lines when the trace
    has no blank line (see the module doc)."""
    return [(trace or "")[a:b] for a, b in step_spans(trace)]


def steps_to_check(verifier: str, samples: list) -> tuple[list[list[str]], list[int], list]:
    """For a step-level verifier: each sample's steps, the indices of those with any, and
    the verdicts to fill in (a trace with no steps cannot be verified)."""
    steps = [split_steps(s.trace) for s in samples]
    todo = [i for i, st in enumerate(steps) if st]
    return steps, todo, [Verdict(verifier, None, "cannot verify: no steps in the trace") for _ in samples]


def step_at(trace: Optional[str], offset: int) -> int:
    """Index of the step that holds character ``offset`` of ``trace``."""
    spans = step_spans(trace)
    for i, (a, b) in enumerate(spans):
        if offset < b:
            return i
    return max(len(spans) - 1, 0)


# ----------------------------------------------------------------------------- answer
class AnswerVerifier:
    """Answer consistency: does the trace arrive at the target's answer?"""

    name = "answer"

    def applies(self, s: Sample) -> Optional[str]:
        from trace_inversion.scoring.answer_matching import extract_final_answer

        target = s.target if s.target is not None else extract_final_answer(s.given_answer)
        return None if target[0] is not None else "cannot verify: no answer in the target's response"

    def verify(self, samples: list[Sample]) -> list[Verdict]:
        from trace_inversion.scoring.answer_matching import consistency_verdict

        return [Verdict(self.name, *consistency_verdict(s.given_answer, s.trace, target=s.target)) for s in samples]

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- toy steps
class ToyStepsVerifier:
    """The toy world's exact step checker: every step applies the problem's operation
    to the running value and computes it right, and no step is missing. The first
    wrong step is the paragraph (line) holding the first wrong ``a op b = c``."""

    name = "steps"
    NOT_TOY = "cannot verify: not a toy-world problem"

    def applies(self, s: Sample) -> Optional[str]:
        from trace_inversion.toy.world import parse_problem

        return None if parse_problem(s.problem or "") is not None else self.NOT_TOY

    def verify(self, samples: list[Sample]) -> list[Verdict]:
        return [self.verify_one(s.problem, s.trace) for s in samples]

    def verify_one(self, problem: str, trace: Optional[str]) -> Verdict:
        from trace_inversion.toy.world import _SURROGATE_STEP, _TARGET_STEP, check_steps, parse_problem

        p = parse_problem(problem or "")
        if p is None:
            return Verdict(self.name, None, self.NOT_TOY)
        text = trace or ""
        r = check_steps(p, text)
        if r["all_correct"]:
            return Verdict(self.name, True, f"all {r['steps']} steps right")
        if r["steps"] == 0:
            return Verdict(self.name, False, "no steps in the trace", 0)
        if r["first_error"] is None:  # every written step right, some missing
            return Verdict(self.name, False, f"incomplete: {r['steps']} of {len(p.steps)} steps written",
                           max(len(step_spans(text)) - 1, 0))
        pat = _TARGET_STEP if _TARGET_STEP.search(text) else _SURROGATE_STEP
        m = list(pat.finditer(text))[r["first_error"]]
        return Verdict(self.name, False, f"step {r['first_error'] + 1} wrong: {m.group(0)!r}", step_at(text, m.start()))

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- LLM judge
# ProcessBench's critique template (Zheng et al. 2024), verbatim but for the wording of
# the tags line.
JUDGE_TEMPLATE = """The following is a math problem and a solution (split into paragraphs, enclosed with tags and indexed from 0):

[Math Problem]

{problem}

[Solution]

{tagged_response}

Your task is to review and critique the solution paragraph by paragraph. Once you identify an error in a paragraph, return the index of the paragraph where the earliest error occurs. Otherwise, return the index of -1 (which typically denotes "not found").

Please put your final answer (i.e., the index) in \\boxed{{}}."""


def judge_messages(problem: str, steps: list[str]) -> list[dict]:
    """The judge's conversation for one trace (ProcessBench's protocol)."""
    tagged = "\n\n".join(f"<paragraph_{i}>\n{s}\n</paragraph_{i}>" for i, s in enumerate(steps))
    return [{"role": "user", "content": JUDGE_TEMPLATE.format(problem=problem, tagged_response=tagged)}]


_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\uff0d": "-"})
_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_NONE_WORDS = re.compile(r"^(?:none|no\s+errors?|not\s+found|no\s+wrong\s+paragraphs?|n/?a|null|nil)$", re.I)
_INDEX = re.compile(r"^(?:(?:paragraph|para|step|index)[\s_#:]*)?\(?([-+]?\d+)\)?$", re.I)
_INDEX_PHRASE = re.compile(
    r"(?:final\s+answer|earliest\s+error|index)[^\n\d-]{0,40}?(?:is|:|=|in)\s*(?:\*\*)?\s*(?:paragraph[\s_]*)?"
    r"\$?\s*([-\u2212]?\d+)", re.I)


def _clean_index(s: str) -> str:
    s = s.translate(_MINUS)
    while True:
        t = _WRAPPERS.sub(r"\1", s)
        if t == s:
            break
        s = t
    s = re.sub(r"<\/?paragraph_?", "paragraph ", s)
    s = s.replace("$", "").replace("**", "").replace("\\", "").replace(">", "").strip(" .{}")
    return re.sub(r"\s+", " ", s).strip()


def parse_judge_index(text: Optional[str], n_steps: Optional[int] = None) -> tuple[Optional[int], str]:
    """``(index or None, why)`` from a judge's output: the content of the last
    ``\\boxed{}`` (after ``</think>`` for a reasoning judge), read as an integer
    (``-1``, ``\\text{-1}``, ``$2$``, ``paragraph_3``, a unicode minus; "none" /
    "not found" are -1); with no box, the last "final answer is N" / "earliest error is
    in paragraph N". An index outside ``-1 .. n_steps-1`` is None ("cannot verify")."""
    from trace_inversion.scoring.answer_matching import last_boxed

    if not text or not text.strip():
        return None, "empty judge output"
    if "<think>" in text and "</think>" not in text:
        return None, "judge output truncated (no closing </think>)"
    body = text.rsplit("</think>", 1)[-1]
    raw = last_boxed(body)
    if raw is None:
        hits = _INDEX_PHRASE.findall(body)
        if not hits:
            return None, "no \\boxed{} index in the judge's output"
        raw = hits[-1]
    s = _clean_index(raw)
    if _NONE_WORDS.match(s):
        idx = -1
    else:
        m = _INDEX.match(s)
        if not m:
            return None, f"judge's answer {raw[:40]!r} is not an index"
        idx = int(m.group(1))
    if idx < -1 or (n_steps is not None and idx >= n_steps):
        return None, f"judge's index {idx} is outside -1..{(n_steps or 0) - 1}"
    return idx, "ok"


class JudgeVerifier:
    """An LLM judge (any backend of ``ModelConfig``, or any distilabel LLM) through the request cache.

    Each sample's steps go to the judge as ProcessBench paragraphs; -1 passes, k is
    wrong at step k, an unreadable answer or a failed call cannot verify."""

    name = "judge"

    def __init__(self, model: Optional[dict], cache_path: str, toy_world: Optional[dict] = None,
                 budget_usd: Optional[float] = None, max_model_len: Optional[int] = None,
                 budget_scope: Optional[str] = None, llm=None):
        self.model, self.cache_path, self.toy_world, self.llm = model, cache_path, toy_world, llm
        self.budget_usd, self.max_model_len, self.budget_scope = budget_usd, max_model_len, budget_scope
        self._gen = None

    def load(self):
        if self._gen is None:
            from trace_inversion.models.generation import model_generator

            # the run's budget: the judge's spending draws on the same cap as the inverter's
            if self.llm is not None:  # any distilabel LLM, through the same request cache
                from trace_inversion.models import model_for_step

                self._gen = model_for_step(self.llm, self.cache_path, self.budget_usd, self.budget_scope)
            else:
                self._gen = model_generator(self.model, self.cache_path, self.toy_world, self.budget_usd,
                                            self.budget_scope, self.max_model_len)
            self._gen.load()
        return self._gen

    @property
    def usage(self):
        return self._gen.usage if self._gen is not None else None

    def applies(self, s: Sample) -> Optional[str]:
        return None

    def verify(self, samples: list[Sample]) -> list[Verdict]:
        steps, todo, out = steps_to_check(self.name, samples)
        if not todo:
            return out
        err = ""
        try:
            results = self.load().generate([judge_messages(samples[i].problem, steps[i]) for i in todo])
        except Exception as e:  # noqa: BLE001 - a judge outage is "cannot verify", never a crash
            results = [None] * len(todo)
            err = f"{type(e).__name__}: {e}"
        for i, res in zip(todo, results):
            if res is None or not res.ok:
                out[i] = Verdict(self.name, None, f"cannot verify: judge call failed: {res.error if res else err}"[:300])
                continue
            idx, why = parse_judge_index(res.response.get("answer"), len(steps[i]))
            if res.response.get("finish_reason") == "length" and idx is None:
                why = "judge output hit the length cap"
            if idx is None:
                out[i] = Verdict(self.name, None, f"cannot verify: {why}")
            elif idx == -1:
                out[i] = Verdict(self.name, True, "judge found no wrong paragraph")
            else:
                out[i] = Verdict(self.name, False, f"judge: earliest wrong paragraph {idx}", idx)
        return out

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None


# ----------------------------------------------------------------------------- PRM
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
PRM_ENGINES = ("transformers", "vllm")


class PRMVerifier:
    """A process reward model in the Qwen2.5-Math-PRM format, run with transformers or vLLM.

    The input is the chat ``[system: QWEN_PRM_SYSTEM, user: problem, assistant: steps
    joined by the step token, with one after the last]`` (plain ``problem\\n\\n...``
    when the tokenizer has no chat template). The model returns per-token logits
    (``AutoModelForTokenClassification``, or with ``trust_remote_code`` the model's own
    ``AutoModel`` class, e.g. ``Qwen2ForProcessRewardModel``); the reward of step k is
    the softmax probability of class 1 at the k-th step token (a 1-logit head: its
    sigmoid). The first step whose reward is below ``threshold`` is the first wrong
    step; a trace longer than ``max_length`` tokens cannot be verified.

    ``engine="vllm"`` runs the same model with vLLM's reward pooling instead
    (``prm_vllm.VLLMStepRewards``: STEP pooling at the step token, on vLLM's
    ``Qwen2ForProcessRewardModel``, the Qwen2.5-Math-PRM architecture): the same prompt
    tokens (tokenized here), the same rewards. ``vllm_kwargs`` go to ``vllm.LLM``
    (e.g. ``gpu_memory_utilization`` beside another engine on the same GPU).
    """

    name = "prm"

    def __init__(self, model: str, threshold: float = 0.5, step_token: str = "<extra_0>", max_length: int = 4096,
                 batch_size: int = 8, trust_remote_code: bool = False, system_prompt: str = QWEN_PRM_SYSTEM,
                 engine: str = "transformers", vllm_kwargs: Optional[dict] = None):
        if engine not in PRM_ENGINES:
            raise ValueError(f"unknown PRM engine {engine!r}; fix: one of {list(PRM_ENGINES)}")
        self.engine, self.vllm_kwargs = engine, dict(vllm_kwargs or {})
        self.model_path, self.threshold, self.step_token = model, threshold, step_token
        self.max_length, self.batch_size, self.trust_remote_code = max_length, batch_size, trust_remote_code
        self.system_prompt = system_prompt
        self._model = self._tok = self._sep = self._device = None

    def load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, AutoTokenizer

        trc = self.trust_remote_code
        tok = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trc)
        ids = tok.encode(self.step_token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"the PRM's tokenizer splits the step token {self.step_token!r} into {len(ids)} tokens; "
                             "fix: set invert.prm_step_token to the model's step separator (Qwen2.5-Math-PRM: <extra_0>)")
        if self.engine == "vllm":
            from trace_inversion.scoring.prm_vllm import VLLMStepRewards

            engine = VLLMStepRewards(self.model_path, ids[0], max_length=self.max_length, trust_remote_code=trc,
                                     extra_kwargs=self.vllm_kwargs)
            engine.load()  # caps max_length at the engine's max_model_len
            self._model, self._tok, self._sep, self.max_length = engine, tok, ids[0], engine.max_length
            return
        import torch

        conf = AutoConfig.from_pretrained(self.model_path, trust_remote_code=trc)
        if trc and "AutoModel" in (getattr(conf, "auto_map", None) or {}):
            model = AutoModel.from_pretrained(self.model_path, trust_remote_code=True, torch_dtype="auto")
        else:
            model = AutoModelForTokenClassification.from_pretrained(self.model_path, torch_dtype="auto")
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        if self._device == "cpu":
            model = model.float()
        self._model, self._tok, self._sep = model.to(self._device).eval(), tok, ids[0]

    def prompt(self, problem: str, steps: list[str]) -> str:
        sep = self.step_token
        response = sep.join(s.replace(sep, "") for s in steps) + sep
        if self._tok.chat_template:
            msgs = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": problem},
                    {"role": "assistant", "content": response}]
            return self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        return f"{problem}\n\n{response}"

    def step_rewards(self, items: list[tuple[str, list[str]]]) -> list[Optional[list[float]]]:
        """Per-step rewards of each ``(problem, steps)``; None for an input over ``max_length``."""
        self.load()
        encoded = [self._tok(self.prompt(p, st), add_special_tokens=False)["input_ids"] for p, st in items]
        if self.engine == "vllm":
            return self._model.step_rewards(encoded, max_length=self.max_length)
        import torch

        out: list[Optional[list[float]]] = [None] * len(items)
        fits = [i for i, ids in enumerate(encoded) if len(ids) <= self.max_length]
        pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
        for b in range(0, len(fits), self.batch_size):
            chunk = fits[b:b + self.batch_size]
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, :len(encoded[i])] = torch.tensor(encoded[i])
                mask[r, :len(encoded[i])] = 1
            with torch.no_grad():
                res = self._model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device))
            logits = (res.logits if hasattr(res, "logits") else res[0]).float().cpu()
            probs = logits.softmax(-1)[..., 1] if logits.shape[-1] >= 2 else logits[..., 0].sigmoid()
            for r, i in enumerate(chunk):
                at = (ids[r] == self._sep) & (mask[r] == 1)
                out[i] = [round(float(x), 6) for x in probs[r][at]]
        return out

    def applies(self, s: Sample) -> Optional[str]:
        return None

    def verify(self, samples: list[Sample]) -> list[Verdict]:
        steps, todo, out = steps_to_check(self.name, samples)
        rewards = self.step_rewards([(samples[i].problem, steps[i]) for i in todo]) if todo else []
        for i, rw in zip(todo, rewards):
            if rw is None:
                out[i] = Verdict(self.name, None, f"cannot verify: trace longer than {self.max_length} PRM tokens")
            elif len(rw) != len(steps[i]):
                out[i] = Verdict(self.name, None, f"cannot verify: {len(rw)} step rewards for {len(steps[i])} steps")
            else:
                bad = next((k for k, x in enumerate(rw) if x < self.threshold), None)
                if bad is None:
                    out[i] = Verdict(self.name, True, f"every step reward >= {self.threshold} (min {min(rw):.3f})")
                else:
                    out[i] = Verdict(self.name, False, f"step {bad} reward {rw[bad]:.3f} < {self.threshold}", bad)
        return out

    def close(self) -> None:
        if self._model is not None and self.engine == "vllm":
            self._model.close()
        self._model = None


def make_verifiers(names: list[str], judge: Optional[dict] = None, prm: Optional[dict] = None) -> list:
    """The verifiers ``names`` (``VERIFIERS``), in order. ``judge``: ``JudgeVerifier``
    keyword arguments (model, cache_path, ...); ``prm``: ``PRMVerifier``'s."""
    out = []
    for n in names:
        if n == "answer":
            out.append(AnswerVerifier())
        elif n == "steps":
            out.append(ToyStepsVerifier())
        elif n == "judge":
            if not judge or not (judge.get("model") or judge.get("llm") is not None):
                raise ValueError("the judge verifier needs a judge model; fix: add models.judge to the config")
            out.append(JudgeVerifier(**judge))
        elif n == "prm":
            if not prm or not prm.get("model"):
                raise ValueError("the prm verifier needs a model; fix: set invert.prm_model")
            out.append(PRMVerifier(**prm))
        else:
            raise ValueError(f"unknown verifier {n!r}; fix: one of {list(VERIFIERS)}")
    return out


# ----------------------------------------------------------------------------- a tiny PRM
PRM_STEP_TOKEN = "<extra_0>"


def build_tiny_prm(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 1) -> Path:
    """A PRM-shaped tiny model built in code (offline; for tests): a Llama token
    classifier with a 2-class head, a BPE tokenizer trained on toy-world text with
    ``<extra_0>`` as one special token, and a ChatML template. Random weights: its
    rewards are arbitrary but deterministic. Written atomically; reused when present."""
    import os
    import shutil
    import tempfile

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForTokenClassification

    from trace_inversion.toy.tiny_models import default_corpus, train_tokenizer

    tok = train_tokenizer(default_corpus(100) + [QWEN_PRM_SYSTEM], vocab_size=384)
    tok.add_tokens([PRM_STEP_TOKEN], special_tokens=True)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=2,
                      head_dim=hidden_size // 2, max_position_embeddings=2048, num_labels=2,
                      pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=None, torch_dtype="float32")
    model = LlamaForTokenClassification(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-prm-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # built meanwhile by another process
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
