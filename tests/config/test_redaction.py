"""Redaction never corrupts data: ordinary text round-trips byte-identical through the
request cache, the datasets, cards' scrubbing and config validation, while real
credentials (the values in use, and key-shaped whole tokens) never do."""

import random
import string

import pytest
import yaml

from trace_inversion.models.cache import RequestCache
from trace_inversion.config import ConfigError, load_config
from trace_inversion.data.io import read_split, write_split
from trace_inversion.config.secrets import REDACTED, looks_like_secret, scrub

HANDWRITTEN = [
    "Design a task-oriented-dialogue system that books a flight; how many turns does the happy path need?",
    "A risk-sensitive agent maximises E[U(X)] - λ Var(X). For λ = 0.5 and X ~ N(2, 1), find the certainty-equivalent.",
    "The disk-based index (a B-tree of order 64) holds 10,000,000 keys. What is its worst-case height?",
    "We ask-then-verify: the model answers, then a second pass checks. Is the ask-then-verify loop guaranteed to halt?",
    "Using sk-learn-style APIs, `fit` then `predict`; explain why scikit-learn's `fit_transform` can leak information.",
    "Compute $\\int_0^1 x^2\\,dx$ and express the answer as a fraction: $\\frac{1}{3}$.",
    "Let $f(x) = \\sqrt{x^2 - 4x + 4}$. For which $x$ is $f(x) = x - 2$? Answer: $x \\ge 2$.",
    "**Answer:** $\\boxed{\\dfrac{3}{4}}$",
    "```python\nfrom huggingface_hub import hf_hub_download\npath = hf_hub_download(repo_id='org/model', filename='config.json')\n```",
    "```python\nhf_tokenizer_configuration_path = os.path.join(root, 'tokenizer_config.json')\n```",
    "See https://example.com/search?q=sk-tree-structured-kernels&page=2#results for the survey.",
    "The bearer of the bond receives $1,000 at maturity; the bearer-bond market was 3-4% of GDP in 1980.",
    "Authorization is checked with the bearer token scheme described in RFC 6750 (section 2.1).",
    "A desk-top study of mask-RCNN and whisk-and-fold techniques; tsk-tsk, said the reviewer.",
    "<think>\nOkay, so the problem asks for the number of ordered pairs. Wait, let me re-check: 3 + 4 = 7, not 8.\n"
    "Hmm, so the total is 7. Actually, re-reading, the pairs are unordered, so 7.\n</think>\nThe answer is $\\boxed{7}$.",
    "Solve for $x$: $2x + 3 = 11$.\n\n1. Subtract 3: $2x = 8$.\n2. Divide by 2: $x = 4$.\n\n**Final answer:** $x = 4$",
    "| n | n^2 |\n|---|-----|\n| 1 | 1 |\n| 2 | 4 |\n| 3 | 9 |",
    "The well-known sk-8-ball trick is a pun, not a key.",
    "In JEE 2023 Paper-1, Q.14: the value of $\\lim_{x \\to 0} \\frac{\\sin 3x}{x}$ is (A) 1 (B) 3 (C) 0 (D) ∞",
    "AIME 2024 I Problem 5: Rectangles $ABCD$ and $EFGH$ are drawn such that $D,E,C,F$ are collinear.",
    "Use `git log --oneline -n 20` and `git rev-parse HEAD` to find commit 4b61ff8a9c2d.",
    "SHA-256 of the file: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "UUID 123e4567-e89b-12d3-a456-426614174000 identifies the run.",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
    "The hyper-parameter grid: lr ∈ {1e-4, 3e-4}, warm-up 10%, cosine-with-restarts schedule, weight-decay 0.01.",
    "A self-correcting, step-by-step, first-principles derivation of the Navier–Stokes equations.",
    "Water's specific heat is 4.18 J/(g·K); heat 250 g from 20 °C to 80 °C. Answer: 62.7 kJ.",
    "The angle is $30^\\circ$, so $\\sin 30^\\circ = \\tfrac12$.",
    "Matrix: $\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}$ has determinant $-2$.",
    "Interval answer: $(-\\infty, -1) \\cup [2, \\infty)$",
    "Set answer: $\\{1, 5, 9\\}$ — there are 3 solutions (1, 5, 9).",
    "Percentages: a 12.5% discount on $80 is $10.",
    "The word 'ask-sk-task-mask-risk-disk-whisk-brisk-frisk' is a tongue-twister, not a credential.",
    "export PATH=$HOME/.local/bin:$PATH  # then run `trace-inversion demo`",
    "Cite as: Zhang, Morris, Shmatikov. How to Steal Reasoning Without Reasoning Traces. arXiv:2603.07267.",
    "The gh-pages branch hosts docs; ghp_ is a prefix GitHub uses for personal tokens (never paste one here).",
    "hf_transfer speeds up downloads; set HF_HUB_ENABLE_HF_TRANSFER=1.",
    "Emoji and scripts: ∑ ∫ √ π ≈ 3.14159, 数学, математика, رياضيات, 🙂.",
    "Tabs\tand\ttrailing spaces   \nand a final newline\n",
    "Windows line endings\r\nsecond line\r\n",
    "A long token that is not a key: sk_live_is_not_a_prefix_we_use_and_neither_is_pk_test_or_rk_prod.",
    "Mixed-case-hyphenated-Title-Case-Phrase-With-Many-Words-In-It-2024-Edition",
    "JSON: {\"answer\": \"42\", \"summary\": \"**Bold** reasoning about sk-style keys\"}",
    "YAML-like text: \n  key: value\n  list:\n    - one\n    - two",
    "Regex: ^sk-[A-Za-z0-9]{48}$ matches legacy OpenAI key formats (documented, not a key).",
    "Bearer-based auth is common; 'Bearer' followed by short ids like abc123 is not a token.",
    "R1-style: <think>Let me think. 2+2=5? No wait, 2+2=4. Let me double-check... yes, 4.</think> **4**",
    "GPT-style: The answer is \\(\\frac{\\sqrt{3}}{2}\\). This follows from the unit-circle definition.",
    "Display math:\n\\[\n\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}\n\\]\nso for $n=100$ the sum is $5050$.",
    "Equation answer: $y = 2x + 1$ passes through $(0, 1)$ and $(1, 3)$.",
    "Units: the car travels 150 km in 2.5 h, an average speed of 60 km/h.",
    "Integer with separators: 1,234,567 and 1\\,234\\,567 and 1 234 567 are the same number.",
    "Text answer: the chemical symbol is **Na** (sodium).",
    "Multiple choice: **(C)** $\\frac{\\pi}{4}$",
    "A path: /home/alice/projects/task-oriented-dialogue-system-2024/runs/demo/seed0/inversion",
    "Shell: curl -H 'Content-Type: application/json' https://api.example.com/v1/items?limit=10",
    "Chemistry: CH3-CH2-OH (ethanol) and the SN2 mechanism; E1cb-elimination for β-hydroxy ketones.",
    "Biology: the BRCA1-associated-RING-domain protein (BARD1) binds BRCA1.",
    "Physics: the Klein-Gordon-Fock equation; Bose-Einstein condensate at 170 nK.",
    "Logic: if P-implies-Q and Q-implies-R then P-implies-R (hypothetical syllogism).",
]

WORDS = ["task-oriented", "risk-adjusted", "disk-backed", "ask-first", "mask-aware", "whisk-based", "sk-like",
         "brisk-paced", "self-consistent", "step-by-step", "well-posed", "second-order", "non-negative",
         "right-angled", "zero-sum", "two-player", "long-context", "multi-hop", "chain-of-thought", "rule-based"]
TEMPLATES = [
    "A {w} model answers {a} of {b} questions correctly. What percentage is that? Answer: ${p}\\%$.",
    "In a {w} game, player A scores {a} and player B scores {b}. Compute $|{a} - {b}|$.",
    "```python\ndef {f}(x):\n    # {w} helper\n    return x * {a} + {b}\n```",
    "Let $a_n$ be a {w} sequence with $a_1 = {a}$ and $a_{{n+1}} = a_n + {b}$. Find $a_{{10}}$.",
    "**Problem.** A {w} triangle has legs {a} and {b}. Find the hypotenuse, in simplest radical form.",
    "<think>\nThe {w} approach: start with {a}. Add {b}. Hmm, wait, I should multiply instead: {a}*{b}.\n</think>\n"
    "$\\boxed{{{ab}}}$",
    "See [the {w} notes](https://notes.example.org/{f}?ref=sk-{w}&n={a}) before attempting problem {b}.",
    "Solve $\\frac{{x}}{{{a}}} + \\frac{{x}}{{{b}}} = 1$ for $x$; the {w} trick is to clear denominators.",
]


def corpus() -> list[str]:
    rng = random.Random(0)
    out = list(HANDWRITTEN)
    for t in TEMPLATES:
        for _ in range(20):
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            f = "_".join(rng.sample(["compute", "hf", "sk", "task", "token", "key", "bearer", "value"], 3))
            out.append(t.format(w=rng.choice(WORDS), a=a, b=b, p=round(100 * a / (a + b), 1), ab=a * b, f=f))
    return out


CORPUS = corpus()
FAKE_KEY = "sk-proj-" + "".join(random.Random(1).choices(string.ascii_letters + string.digits, k=48))


def test_corpus_size():
    assert len(CORPUS) >= 200 and len(set(CORPUS)) == len(CORPUS)


@pytest.mark.parametrize("text", CORPUS[:60])
def test_ordinary_text_is_not_a_secret(text):
    assert not looks_like_secret(text)
    assert scrub(text) == text


def test_corpus_round_trips_through_cache_datasets_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TI_KEY", FAKE_KEY)
    assert not [t for t in CORPUS if looks_like_secret(t) or scrub(t) != t]
    cache = RequestCache(tmp_path / "c.sqlite", secret_env=("TI_KEY",))
    for i, text in enumerate(CORPUS):
        resp, cached = cache.call("toy", "m", {"messages": [{"role": "user", "content": text}], "i": i},
                                  lambda: {"answer": text, "summary": text})
        assert not cached and resp["answer"] == text
    replay = RequestCache(tmp_path / "c.sqlite", secret_env=("TI_KEY",))
    for i, text in enumerate(CORPUS):
        resp, cached = replay.call("toy", "m", {"messages": [{"role": "user", "content": text}], "i": i},
                                   lambda: pytest.fail("must replay"))
        assert cached and resp == {"answer": text, "summary": text}
    rows = [{"id": str(i), "problem": t, "target_answer": t} for i, t in enumerate(CORPUS)]
    write_split(tmp_path / "ds", "target", rows)
    assert read_split(tmp_path / "ds", "target") == rows
    for text in CORPUS:  # a prompt in a config is validated, never rejected or rewritten
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump({"name": "r", "query": {"system_prompt": text}}, allow_unicode=True))
        cfg = load_config(str(path))
        assert cfg.query.system_prompt == text
        assert cfg.scrubbed_dict()["query"]["system_prompt"] == text


def test_secrets_in_use_and_key_shaped_tokens_are_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("TI_KEY", "plain-value-without-shape-1234")
    cache = RequestCache(tmp_path / "c.sqlite", secret_env=("TI_KEY",))
    text = "The server echoed plain-value-without-shape-1234 and " + FAKE_KEY + " back."
    resp, _ = cache.call("toy", "m", {"p": 1}, lambda: {"answer": text})
    # a response keeps everything but the value of a secret in use
    assert resp["answer"] == f"The server echoed {REDACTED} and {FAKE_KEY} back."
    # configs, cards and logs also drop key-shaped tokens
    assert scrub(text, extra_env=["TI_KEY"]) == f"The server echoed {REDACTED} and {REDACTED} back."
    for key in (FAKE_KEY, "sk-" + "aB3" * 16, "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh",
                "ghp_" + "a1B2" * 9, "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc123",
                "AKIAIOSFODNN7EXAMPLE"):
        assert looks_like_secret(f"key: {key}") and key not in scrub(f"key: {key}")
    with pytest.raises(ConfigError, match="looks like an API key"):
        load_config(None, {"query": {"system_prompt": f"use {FAKE_KEY}"}})
