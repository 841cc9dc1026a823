"""Keep API keys and tokens out of everything the project writes.

Secrets are read only from environment variables named in the config
(``api_key_env``); they are never stored on a config object. ``scrub`` is the one
place that removes them (and anything shaped like a key) from data bound for a card,
a log, a cache row or a saved config.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable

# Shapes of well-known credentials: OpenAI/Anthropic style keys, HF tokens, bearer
# tokens, GitHub tokens. Matching is deliberately broad: a false positive costs a
# redacted string, a false negative leaks a key.
SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"hf_[A-Za-z0-9]{20,}"),
    re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-]{16,}"),
]
# Environment variables whose values are always treated as secrets when set.
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


def scrub(obj: Any, extra_env: Iterable[str] = ()) -> Any:
    """Return a copy of ``obj`` (str / list / dict / scalars) with secrets redacted."""
    values = secret_values(extra_env)

    def _s(x: Any) -> Any:
        if isinstance(x, str):
            for v in values:
                if v in x:
                    x = x.replace(v, REDACTED)
            for p in SECRET_PATTERNS:
                x = p.sub(REDACTED, x)
            return x
        if isinstance(x, dict):
            return {k: _s(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(_s(v) for v in x)
        return x

    return _s(obj)
