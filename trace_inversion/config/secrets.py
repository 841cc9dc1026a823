"""Keep API keys and tokens out of everything the project writes.

Secrets are read only from environment variables named in the config
(``api_key_env``); they are never stored on a config object. ``scrub`` removes them
from data bound for a card, a log, a cache row, a dataset or a saved config, in two
ways:

- the *values* of the secrets in use (the environment variables a config names and
  the well-known ones below) are replaced wherever they occur: that is the only change
  ever made to model responses and datasets (``patterns=False``);
- for configs, cards and logs, strings *shaped* like a credential are replaced too,
  matched only as whole tokens with a real provider prefix and length, containing
  digits: "a task-oriented-dialogue system" or ``hf_tokenizer_path`` are ordinary text
  and stay byte-identical.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable

# A token starts and ends at a character that cannot be part of a key.
_B, _E = r"(?<![A-Za-z0-9_\-])", r"(?![A-Za-z0-9_\-])"
_HAS_DIGIT = r"(?=[A-Za-z0-9_\-]*[0-9])"
SECRET_PATTERNS = [
    # OpenAI (sk-..., sk-proj-..., sk-svcacct-..., sk-admin-...) and Anthropic (sk-ant-api03-...)
    # (random base62/base64url: a digit, and a run of 20+ letters/digits no hyphenated phrase has)
    re.compile(_B + r"sk-" + _HAS_DIGIT + r"(?=[A-Za-z0-9_\-]*[A-Za-z0-9]{20})"
               r"(?:proj-|svcacct-|admin-|ant-(?:api|admin)\d\d-)?[A-Za-z0-9_\-]{32,}" + _E),
    # Hugging Face user access tokens: hf_ + 34 letters/digits, mixed case
    re.compile(r"(?<![A-Za-z0-9_])hf_(?=[A-Za-z0-9]*[A-Z])(?=[A-Za-z0-9]*[a-z])[A-Za-z0-9]{30,}(?![A-Za-z0-9_])"),
    # GitHub tokens
    re.compile(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,}(?![A-Za-z0-9_])"),
    re.compile(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{60,}(?![A-Za-z0-9_])"),
    # AWS access key ids, Google API keys
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
    re.compile(r"(?<![A-Za-z0-9_\-])AIza[A-Za-z0-9_\-]{35}(?![A-Za-z0-9_\-])"),
    # An Authorization header's bearer credential (a long token with digits)
    re.compile(r"(?i:\bbearer)\s+(?=[A-Za-z0-9._~+/\-]*[0-9])[A-Za-z0-9._~+/\-]{20,}=*"),
]
DEFAULT_SECRET_ENV = (
    "OPENAI_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "ARGILLA_API_KEY",
    "ANTHROPIC_API_KEY",
    "TRACE_INVERSION_API_KEY",
)
REDACTED = "***REDACTED***"


def looks_like_secret(value: str) -> bool:
    """True when ``value`` contains something shaped like an API key or token."""
    return any(p.search(value) for p in SECRET_PATTERNS)


def secret_values(extra_env: Iterable[str] = ()) -> list[str]:
    """Values of the secret environment variables that are set (longest first)."""
    names = set(DEFAULT_SECRET_ENV) | {n for n in extra_env if n}
    values = [os.environ[n] for n in names if os.environ.get(n)]
    # Very short values would redact ordinary words; real keys are long.
    return sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)


def scrub(obj: Any, extra_env: Iterable[str] = (), patterns: bool = True) -> Any:
    """Return a copy of ``obj`` (str / list / dict / scalars) with secrets redacted.

    ``patterns=False``: only the values of secrets in use (for model responses and
    datasets, which are otherwise kept exactly as received)."""
    values = secret_values(extra_env)
    if not values and not patterns:
        return obj

    def _s(x: Any) -> Any:
        if isinstance(x, str):
            for v in values:
                if v in x:
                    x = x.replace(v, REDACTED)
            if patterns:
                for p in SECRET_PATTERNS:
                    x = p.sub(REDACTED, x)
            return x
        if isinstance(x, dict):
            return {k: _s(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(_s(v) for v in x)
        return x

    return _s(obj)
