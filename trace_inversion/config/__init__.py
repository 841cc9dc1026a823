"""Typed run configuration, validated before any model call.

A run is described by one YAML file (see ``trace_inversion/configs/default.yaml``, the embedded
default). ``load_config`` parses and validates it; every problem is reported at once
as a ``ConfigError`` whose lines name the field (dotted path), what is wrong and the
fix. Secrets are never fields: a model names the environment variable that holds its
key (``api_key_env``) and the key is read at call time.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trace_inversion.config.secrets import looks_like_secret, scrub
from trace_inversion.errors import UserError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_TAG = re.compile(r"^v[0-9]+(\.[0-9]+)*$")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
TOY_MODELS = ("toy-target", "toy-surrogate", "toy-compressor", "toy-inverter")


class ConfigError(UserError, ValueError):
    """A config that cannot run; ``problems`` holds one line per field."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration{where} ({len(problems)} problem(s)):\n{lines}")


class TemplateError(ConfigError):
    """A prompt or format template (a file a config names) that cannot be used: missing,
    unreadable, empty, or without a placeholder it needs."""


def _template_file(path: Optional[str], required: tuple[str, ...] = ()) -> Optional[str]:
    """A template file a config names, checked before any model call (see ``prompts``)."""
    if path is None:
        return path
    from trace_inversion.prompts import read_template

    _, problem = read_template(path, required)
    if problem:
        raise ValueError(problem)
    return path


class _Strict(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_secrets_in_values(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for k, v in data.items():
                if isinstance(v, str) and looks_like_secret(v):
                    raise ValueError(
                        f"field '{k}' holds what looks like an API key or token; "
                        "fix: remove it and put the key in an environment variable named by api_key_env"
                    )
        return data


# The paper's inversion decoding: the preset of every local role (toy, vllm, transformers)
# unless its role has its own below.
PAPER_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.05, "max_new_tokens": 8192}
# Per-role presets for local engines (vllm, transformers), filled in where `sampling` leaves
# a field unset: the surrogate decodes as DeepSeek-R1-Distill models are meant to (the
# paper's surrogate; long traces, no repetition penalty), the compressor with
# Qwen2.5-Instruct's own generation defaults (the paper's zero-shot compressor; recap
# summaries run to ~900 tokens), the judge greedily, the inverter with the paper's decoding.
ROLE_SAMPLING = {
    "surrogate": {"temperature": 0.6, "top_p": 0.95, "top_k": -1, "repetition_penalty": 1.0, "max_new_tokens": 32768},
    "compressor": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "max_new_tokens": 2048},
    "judge": {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "max_new_tokens": 8192},
    "inverter": PAPER_SAMPLING,
}
LOCAL_BACKENDS = ("toy", "vllm", "transformers")
API_BACKENDS = ("openai-responses", "openai-chat")
# What a reasoning target may write before it answers: the Responses API output cap when
# max_new_tokens is unset (8192 truncated medium-effort reasoning; unset = the model's maximum).
DEFAULT_REASONING_MAX_OUTPUT = 32768
# OpenAI's hosted reasoning models (o-series, gpt-5*) accept no sampling parameters.
_OPENAI_REASONING = re.compile(r"^(?:ft:)?(?:openai/)?(?:o[1-9](?:-|$)|gpt-5(?!-chat))")
# Request fields the OpenAI services accept (the SDK's create() parameters); anything else is a 400
# "Unrecognized request argument". The client manages the ones in _MANAGED itself.
OPENAI_RESPONSES_FIELDS = frozenset((
    "access_programs", "background", "background_options", "context_management", "image", "moderation",
    "prompt_cache_options", "conversation", "include", "input", "instructions", "max_output_tokens",
    "max_tool_calls", "metadata", "model", "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key",
    "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream", "stream_options",
    "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user"))
OPENAI_CHAT_FIELDS = frozenset((
    "messages", "model", "moderation", "prompt_cache_options", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "prompt_cache_retention", "reasoning_effort", "response_format",
    "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
    "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options"))
_MANAGED = {"model": "model", "messages": "the problem", "input": "the problem", "temperature": "sampling.temperature",
            "top_p": "sampling.top_p", "max_tokens": "sampling.max_new_tokens",
            "max_completion_tokens": "sampling.max_new_tokens", "max_output_tokens": "sampling.max_new_tokens",
            "n": "sampling.n", "seed": "sampling.seed", "store": "store", "reasoning": "reasoning_effort/reasoning_summary",
            "stream": "(streaming is not supported)"}


def is_openai_reasoning_model(model: str) -> bool:
    """o-series and gpt-5* (not gpt-5-chat): OpenAI's reasoning models, which reject sampling parameters."""
    return bool(_OPENAI_REASONING.match(model.strip().lower()))


def is_openai_url(url: Optional[str]) -> bool:
    """None (the SDK's default) or a URL on api.openai.com."""
    if url is None:
        return True
    host = re.sub(r"^https?://", "", url).split("/", 1)[0].split(":", 1)[0].lower()
    return host == "api.openai.com"


class SamplingConfig(_Strict):
    """Decoding parameters. Unset (null) fields: local roles (toy, vllm, transformers) get the
    paper's inversion decoding (temperature 0.7, top_p 0.9, top_k 50, repetition_penalty 1.05,
    max_new_tokens 8192); API targets (openai-responses, openai-chat) are sent only the fields
    you set, and only those their API accepts."""

    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy. "
                                         "Local roles: 0.7 when unset; API targets: not sent unless set (OpenAI "
                                         "reasoning models accept none).")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass. Local roles: 0.9 "
                                   "when unset; API targets: not sent unless set.")
    top_k: Optional[int] = Field(None, description="Top-k sampling; -1 disables it. Local roles: 50 when unset. "
                                 "Not an OpenAI API parameter: for a vLLM/SGLang server use extra_body.")
    repetition_penalty: Optional[float] = Field(None, gt=0.0, le=2.0, description="vLLM/transformers repetition "
                                                "penalty; local roles: 1.05 when unset. Not an OpenAI API "
                                                "parameter: for a vLLM/SGLang server use extra_body.")
    max_new_tokens: Optional[int] = Field(None, ge=1, le=262144, description="Generation length cap in tokens. "
                                          "Local roles: 8192 when unset; openai-responses: max_output_tokens, "
                                          "32768 when unset (room for reasoning); openai-chat: not sent unless set "
                                          "(OpenAI reasoning models: max_completion_tokens, 32768 when unset).")
    n: int = Field(1, ge=1, le=64, description="Samples per request.")
    seed: Optional[int] = Field(None, ge=0, description="Sampling seed (part of the cache key).")

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and (v == 0 or v < -1):
            raise ValueError(f"top_k must be -1 (disabled) or >= 1, got {v}; fix: use -1 or a positive integer")
        return v


class ModelConfig(_Strict):
    """One model role (target, surrogate, compressor or inverter)."""

    backend: Literal["toy", "openai-responses", "openai-chat", "vllm", "transformers"] = Field(
        description="How the model is called: toy (programmatic, offline), openai-responses "
        "(OpenAI Responses API), openai-chat (any OpenAI-compatible chat server), vllm "
        "(offline engine), transformers (local generate)."
    )
    model: str = Field(description="Model id, local folder, or toy-* name for the toy backend.")
    base_url: Optional[str] = Field(None, description="Server URL for openai-* backends.")
    api_key_env: Optional[str] = Field(None, description="Name of the environment variable holding the API key.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Decoding parameters.")
    reasoning_effort: Optional[Literal["minimal", "low", "medium", "high"]] = Field(
        None, description="Responses API reasoning effort."
    )
    reasoning_summary: Optional[Literal["auto", "detailed", "concise"]] = Field(
        None, description="Responses API reasoning summary mode."
    )
    concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="Per-request timeout in seconds.")
    max_retries: int = Field(6, ge=0, le=50, description="Retries on 429/5xx/timeouts.")
    price_input_per_mtok: float = Field(0.0, ge=0, description="USD per million input tokens.")
    price_output_per_mtok: float = Field(0.0, ge=0, description="USD per million output (incl. reasoning) tokens.")
    price_cached_input_per_mtok: Optional[float] = Field(
        None, ge=0, description="USD per million cached input tokens (usage input_tokens_details.cached_tokens / "
        "prompt_tokens_details.cached_tokens); unset: the input price.")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="vLLM tensor parallelism; also the number of "
                                      "GPUs the role's step is placed on.")
    gpu_memory_utilization: Optional[float] = Field(
        None, gt=0, le=1, description="vllm: share of each GPU's memory the engine may take (vLLM's default: 0.9). "
        "Two local roles on one GPU need shares that sum to <= 1.")
    max_model_len: Optional[int] = Field(None, ge=64, description="vllm: context length (prompt + output); unset: "
                                         "the stage's max_model_len, else the model's.")
    dtype: Optional[str] = Field(None, description="Local backends: weights dtype (auto, float16, bfloat16, "
                                 "float32); unset: the checkpoint's on a GPU, float32 on a CPU.")
    engine_kwargs: Optional[dict[str, Any]] = Field(
        None, description="Local backends: further keyword arguments, as given, to vllm.LLM (e.g. enable_prefix_"
        "caching, quantization) or to transformers' from_pretrained (e.g. attn_implementation).")
    cuda_devices: Optional[list[int]] = Field(
        None, description="Local backends: the CUDA devices of this role; unset: distilabel's placement gives each "
        "local role its own free device(s) (tensor_parallel_size of them).")
    model_revision: Optional[str] = Field(
        None, description="A revision you declare for the model (a snapshot date, a checkpoint hash): part of every "
        "request key, so a retrained checkpoint served under the same name never replays the old one's outputs.")
    reasoning_field: Optional[Literal["summary", "trace", "none"]] = Field(
        None, description="What the API's reasoning field holds: summary (target_summary; the default for "
        "openai-responses, whose reasoning summary parts are summaries), trace (target_trace: a full chain of "
        "thought, the default for openai-chat, whose reasoning_content from DeepSeek or a vLLM/SGLang reasoning "
        "parser is the whole reasoning), none (ignore it).")
    store: Optional[bool] = Field(None, description="openai-responses: let OpenAI store the response (sent; default "
                                  "false). openai-chat: sent only when set.")
    extra_body: Optional[dict[str, Any]] = Field(
        None, description="Extra request fields for an OpenAI-compatible server that accepts them (vLLM/SGLang: "
        "top_k, min_p, repetition_penalty, chat_template_kwargs, ...), sent as given. api.openai.com rejects fields "
        "it does not know, so there only fields of its API are allowed.")
    max_retry_wait_s: float = Field(600.0, ge=0, le=86400, description="Longest wait a server's Retry-After "
                                    "(seconds, HTTP date or retry-after-ms) is honoured for; a request asked to "
                                    "wait longer fails with the reason (a plain rerun sends it again).")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}; fix: e.g. http://127.0.0.1:8000/v1")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError(
                f"api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), got {v!r}; "
                "fix: export the key and put the variable's name here"
            )
        return v

    @model_validator(mode="after")
    def _backend_rules(self) -> "ModelConfig":
        if self.backend == "openai-chat" and not self.base_url:
            raise ValueError("backend openai-chat needs base_url; fix: set base_url, e.g. http://127.0.0.1:8000/v1")
        if self.backend == "toy" and self.model not in TOY_MODELS:
            raise ValueError(f"toy backend model must be one of {list(TOY_MODELS)}, got {self.model!r}; fix: pick one")
        if self.backend in ("vllm", "transformers") and _looks_local(self.model) and not Path(self.model).exists():
            raise ValueError(f"model folder {self.model!r} does not exist; fix: point model at a saved model folder or a Hub id")
        if self.backend not in ("openai-responses",) and (self.reasoning_effort or self.reasoning_summary):
            raise ValueError("reasoning_effort/reasoning_summary apply only to backend openai-responses; fix: remove them")
        if self.backend not in ("vllm", "transformers"):
            for name in ("gpu_memory_utilization", "max_model_len", "dtype", "engine_kwargs", "cuda_devices"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies only to the local backends (vllm, transformers); fix: remove it")
        elif self.backend == "transformers" and (self.gpu_memory_utilization is not None or self.max_model_len):
            raise ValueError("gpu_memory_utilization/max_model_len apply only to backend vllm; fix: remove them")
        if self.backend not in API_BACKENDS:
            for name in ("reasoning_field", "store", "extra_body"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies only to the openai-responses and openai-chat backends; "
                                     "fix: remove it")
        else:
            problems = api_sampling_problems(self)
            if problems:
                raise ValueError("\n".join(problems))  # one line per problem (format_validation_error)
        return self

    @model_validator(mode="before")
    @classmethod
    def _local_presets(cls, data: Any) -> Any:
        """Local roles decode with the paper's presets wherever a field is unset; API targets
        keep unset fields unset (None: not sent)."""
        if not isinstance(data, dict) or data.get("backend") not in LOCAL_BACKENDS:
            return data
        s = data.get("sampling")
        if isinstance(s, SamplingConfig):
            s = s.model_dump(exclude_none=True)
        if s is None:
            s = {}
        if not isinstance(s, dict):
            return data  # a type error pydantic reports
        return {**data, "sampling": {**PAPER_SAMPLING, **{k: v for k, v in s.items() if v is not None}}}

    def api_key(self) -> Optional[str]:
        """The key, read from the environment at call time (never stored)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    @property
    def reasoning_kind(self) -> str:
        """What the API's reasoning field holds (``reasoning_field`` or the backend's default)."""
        if self.reasoning_field:
            return self.reasoning_field
        return "trace" if self.backend == "openai-chat" else "summary"

    @property
    def is_reasoning_model(self) -> bool:
        return self.backend in API_BACKENDS and is_openai_reasoning_model(self.model)

    def max_output_tokens(self) -> Optional[int]:
        """The output-token cap sent with each request (None: none sent, the server's own).
        Local roles: sampling.max_new_tokens. openai-responses, and OpenAI reasoning models over
        chat: max_new_tokens, else DEFAULT_REASONING_MAX_OUTPUT. openai-chat: max_new_tokens."""
        if self.sampling.max_new_tokens is not None:
            return self.sampling.max_new_tokens
        if self.backend == "openai-responses" or self.is_reasoning_model:
            return DEFAULT_REASONING_MAX_OUTPUT
        return None


def api_sampling_problems(m: "ModelConfig") -> list[str]:
    """Why an API target's request would be rejected (400) by its service: every problem,
    naming the field and the fix, found before any call is paid."""
    s, out = m.sampling, []
    api = "Responses API" if m.backend == "openai-responses" else "OpenAI chat API"
    for name, neutral in (("top_k", -1), ("repetition_penalty", 1.0)):
        v = getattr(s, name)
        if v is not None and v != neutral:
            fix = ("remove it" if m.backend == "openai-responses" else
                   f"remove it, or for a vLLM/SGLang server that accepts it put it in extra_body: {{{name}: {v}}}")
            out.append(f"sampling.{name} is not a parameter of the {api} (it answers 400 'Unrecognized request "
                       f"argument'); fix: {fix}")
    if m.backend == "openai-responses":
        if s.seed is not None:
            out.append("sampling.seed is not a parameter of the Responses API; fix: remove it")
        if s.n != 1:
            out.append(f"sampling.n={s.n}: the Responses API returns one sample per request; fix: remove it (n: 1)")
        if s.max_new_tokens is not None and s.max_new_tokens < 16:
            out.append(f"sampling.max_new_tokens={s.max_new_tokens}: the Responses API's max_output_tokens must be "
                       ">= 16; fix: raise it")
    if is_openai_reasoning_model(m.model):
        for name in ("temperature", "top_p"):
            if getattr(s, name) is not None:
                out.append(f"sampling.{name}: {m.model} is an OpenAI reasoning model, which rejects {name} (400 "
                           "'Unsupported parameter'); fix: remove it (reasoning_effort steers these models)")
    if m.extra_body:
        allowed = OPENAI_RESPONSES_FIELDS if m.backend == "openai-responses" else OPENAI_CHAT_FIELDS
        for k in m.extra_body:
            if k in _MANAGED:
                out.append(f"extra_body.{k} is set by the client; fix: use {_MANAGED[k]} instead")
            elif is_openai_url(m.base_url) and k not in allowed:
                out.append(f"extra_body.{k}: api.openai.com rejects fields it does not know (400 'Unrecognized "
                           f"request argument'); fix: remove it (extra fields are for vLLM/SGLang servers)")
    return out


class ToyWorldConfig(_Strict):
    """The embedded default's world: chained arithmetic evaluated left to right."""

    seed: int = Field(0, ge=0, description="World seed: problems, target and surrogate are deterministic in it.")
    n_train: int = Field(2000, ge=1, le=10_000_000, description="Problems for training data.")
    n_test: int = Field(500, ge=0, le=10_000_000, description="Held-out problems for evaluation.")
    n_ops: int = Field(6, ge=1, le=64, description="Operations per problem.")
    modulus: int = Field(10, ge=2, le=1000, description="Arithmetic modulus.")
    ops: str = Field("+-*", description="Operators to draw from, a subset of '+-*'.")
    summary_every: int = Field(2, ge=0, description="The target's summary policy: it reveals the running value of "
                               "every step i with i % summary_every == summary_offset (0: no summary at all; 1: "
                               "every step).")
    summary_offset: int = Field(0, ge=0, description="The target's summary policy: which step of every "
                                "summary_every-th it reveals (see summary_every).")
    summary_style: Literal["gives", "is"] = Field(
        "gives", description="How the target's summary phrases a value: 'gives' ('step 2 gives 7') or 'is' ('after "
                             "step 2 the value is 7').")
    compressor_every: Optional[int] = Field(
        None, ge=0, description="The attacker's compressor reveals every k-th step (null: the target's summary_every). "
                                "A compressor that differs from the target's summariser is the simulated-vs-real gap.")
    compressor_offset: Optional[int] = Field(None, ge=0, description="The compressor's offset (null: the target's "
                                             "summary_offset).")
    compressor_style: Optional[Literal["gives", "is"]] = Field(
        None, description="The compressor's phrasing (null: the target's summary_style).")
    compressor_drop: float = Field(0.0, ge=0.0, le=1.0, description="The compressor leaves each value it would reveal "
                                   "out with this probability (deterministic per trace): a lossier summariser.")
    surrogate_reliable_steps: int = Field(
        3, ge=0, description="The surrogate is right on its first k steps and errs after them (systematic weakness); "
                             "0: its errors can fall on any step, the steps no summary reveals included."
    )
    surrogate_error_rate: float = Field(0.3, ge=0.0, le=1.0, description="Per-step error rate past the reliable steps.")
    surrogate_errors: Literal["random", "systematic"] = Field(
        "random", description="'random': each late step is wrong with that probability; 'systematic': that share of "
                              "facts (a op b) is always wrong the same way late in a chain (errors a student inherits).")
    inverter_error_rate: float = Field(0.1, ge=0.0, le=1.0, description="toy-inverter: per-step error rate on steps "
                                       "the summary does not reveal.")
    inverter_forces_answer: float = Field(0.5, ge=0.0, le=1.0, description="toy-inverter: probability that a trace "
                                          "whose steps miss the answer writes the given answer anyway.")

    @field_validator("ops")
    @classmethod
    def _ops(cls, v: str) -> str:
        if not v or any(c not in "+-*" for c in v) or len(set(v)) != len(v):
            raise ValueError(f"ops must be distinct characters from '+-*', got {v!r}; fix: e.g. '+-*' or '+*'")
        return v


class DataConfig(_Strict):
    """Where problems come from."""

    source: str = Field("toy", description="'toy', a local .parquet/.jsonl/.json/.csv file, or a Hub dataset id.")
    split: str = Field("train", description="Split to read for Hub datasets (toy: train, test or attacker); the "
                       "commands' --split overrides it only when given.")
    subset: Optional[str] = Field(None, min_length=1, description="Hub dataset subset (config name), e.g. 'main' "
                                  "for openai/gsm8k; passed to datasets.load_dataset.")
    problem_column: str = Field("problem", min_length=1, description="Column holding the problem text.")
    id_column: Optional[str] = Field("id", description="Column with a unique row id (None: row index).")
    limit: Optional[int] = Field(None, ge=1, description="Use only the first N rows.")
    toy: ToyWorldConfig = Field(default_factory=ToyWorldConfig, description="Toy-world settings (source: toy).")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v == "toy":
            return v
        p = Path(v)
        if _HUB_ID.match(v) and p.suffix not in DATA_SUFFIXES and not p.exists():
            return v
        if not p.suffix or p.suffix not in DATA_SUFFIXES:
            raise ValueError(
                f"source {v!r} is neither 'toy', a Hub id (owner/name), nor a data file; "
                f"fix: use a file ending in one of {', '.join(DATA_SUFFIXES)}"
            )
        if not p.exists():
            raise ValueError(f"source file {v!r} does not exist; fix: check the path (relative paths start at the working directory)")
        return v

    @model_validator(mode="after")
    def _subset_is_for_hub(self) -> "DataConfig":
        if self.subset is not None and (self.source == "toy" or Path(self.source).suffix in DATA_SUFFIXES):
            raise ValueError(f"subset {self.subset!r} applies only to Hub datasets, and source is {self.source!r}; "
                             "fix: remove data.subset, or set data.source to a Hub id such as openai/gsm8k")
        return self


class OutputConfig(_Strict):
    """Where results go."""

    dir: str = Field("runs/default", description="Output folder for this run.")
    release_repo: Optional[str] = Field(None, description="Local git release repository (default: <dir>/release).")
    hub_repo_id: Optional[str] = Field(None, description="Hub dataset repo (owner/name) to publish to.")
    private: bool = Field(True, description="Create Hub repos private.")
    version: Optional[str] = Field(None, description="Release tag, e.g. v1 (default: next free).")

    @field_validator("hub_repo_id")
    @classmethod
    def _hub(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not _HUB_ID.match(v):
            raise ValueError(f"hub_repo_id must look like owner/name, got {v!r}; fix: e.g. my-org/inverted-traces")
        return v

    @field_validator("version")
    @classmethod
    def _tag(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not _TAG.match(v):
            raise ValueError(f"version must be a tag like v1 or v2.1, got {v!r}; fix: use v<number>")
        return v


DEFAULT_REFUSALS = [r"^\s*(I'm sorry|I am sorry|Sorry)[,.]? (but )?I (can't|cannot|won't)",
                    r"^\s*I (can't|cannot|won't|am unable to) (help|assist|comply|provide)"]


class QueryConfig(_Strict):
    """How the target is queried (the query-target stage)."""

    system_prompt: Optional[str] = Field(None, description="System message sent before each problem.")
    require_summary: bool = Field(False, description="Treat a response without a reasoning summary as a failure.")
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS),
                                        description="Regexes (case-insensitive) that mark an answer as a refusal.")
    dry_run_sample: int = Field(20, ge=1, le=10_000, description="Rows queried by --dry-run --sample to measure "
                                "the expected cost (plain --dry-run makes no call).")
    summarize_traces_with: Optional[Literal["compressor"]] = Field(
        None, description="For a target whose reasoning is a full trace (reasoning_field: trace, e.g. a vLLM server "
        "with a reasoning parser): write target_summary with models.compressor (inverter_data.summary_style or "
        "prompt_file), as in the paper's open-target experiments; the trace stays in target_trace.")
    batch_api: bool = Field(False, description="Send the target's requests through OpenAI's Batch API first (half "
                            "the price, results within 24 h): submitted once, resumable across runs (a rerun "
                            "collects a batch an earlier run submitted), results stored in the request cache; "
                            "whatever the batch could not answer is then requested directly. openai-* targets only.")
    batch_poll_s: float = Field(30.0, gt=0, le=3600, description="Seconds between batch status checks.")
    batch_wait_s: Optional[float] = Field(None, gt=0, description="How long a run waits for its batches (unset: "
                                          "until they finish); past it the run stops, and the next run collects "
                                          "them (nothing is submitted twice).")

    @field_validator("refusal_patterns")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for pat in v:
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"refusal pattern {pat!r} is not a valid regex ({e}); fix: escape special characters")
        return v


class InverterDataConfig(_Strict):
    """How the inverter's training data is built (the build-inverter-data stage)."""

    summary_style: Literal["bubbles", "recap"] = Field(
        "bubbles", description="Compressor preset: bubbles (v1, numbered short steps) or recap (v2, first-person "
        "bold-header sections).")
    prompt_file: Optional[str] = Field(None, description="A compressor system prompt file (overrides summary_style).")
    target_release: Optional[str] = Field(
        None, description="A query-target output folder whose real summaries the style report compares against.")
    max_model_len: Optional[int] = Field(None, ge=64, description="vLLM context length for local engines.")

    @field_validator("prompt_file", "target_release")
    @classmethod
    def _exists(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not Path(v).exists():
            raise ValueError(f"{v!r} does not exist; fix: check the path")
        return v

    @field_validator("prompt_file")
    @classmethod
    def _prompt(cls, v: Optional[str]) -> Optional[str]:
        return _template_file(v)


class InvertConfig(_Strict):
    """Inversion with verified synthesis (the invert stage)."""

    source: Optional[str] = Field(None, description="A query-target output folder, or a .parquet/.jsonl file with "
                                  "problem/answer/summary columns (default: <output.dir>/target_query).")
    with_summary: bool = Field(True, description="Give the inverter the target's summary (the paper's main setting).")
    samples_per_round: int = Field(1, ge=1, le=64, description="Samples per row per round.")
    max_attempts: int = Field(4, ge=1, le=64, description="Rounds of sampling before a row is rejected "
                              "(1 = no resampling, the paper's unverified setting).")
    unverifiable: Literal["keep", "reject"] = Field("keep", description="Rows whose best trace cannot be verified "
                                                     "(no extractable target answer, answers that cannot be compared, "
                                                     "a verifier that cannot judge): keep them, with their reason, in "
                                                     "their own config `unverifiable` (never in `inverted`), or reject "
                                                     "them to `rejected`. To train students on them too, set "
                                                     "invert.unverifiable_to_students.")
    unverifiable_to_students: bool = Field(False, description="student-data also builds the condition "
                                           "`inverted_with_unverifiable` (verified + unverifiable traces); "
                                           "`inverted_verified` always holds verified traces only.")
    verifiers: list[Literal["answer", "steps", "judge", "prm"]] = Field(
        default_factory=lambda: ["answer"], description="Verifiers every sample must pass, in order: `answer` "
        "(answer consistency, always first), then step-level ones: `steps` (the toy world's exact step checker), "
        "`judge` (an LLM judge, models.judge, asked for the earliest wrong paragraph as in ProcessBench), `prm` (a "
        "process reward model in the Qwen2.5-Math-PRM format, invert.prm_model). A sample a step verifier rejects "
        "is resampled like an inconsistent one.")
    prm_model: Optional[str] = Field(None, description="The `prm` verifier's model (folder or Hub id), e.g. "
                                     "Qwen/Qwen2.5-Math-PRM-7B (with prm_trust_remote_code: true).")
    prm_threshold: float = Field(0.5, ge=0.0, le=1.0, description="A step whose PRM reward is below this is wrong.")
    prm_step_token: str = Field("<extra_0>", min_length=1, description="The token the PRM reads after each step.")
    prm_max_length: int = Field(4096, ge=16, description="Longest PRM input in tokens; longer traces cannot be verified.")
    prm_batch_size: int = Field(8, ge=1, le=1024, description="Traces per PRM forward pass.")
    prm_trust_remote_code: bool = Field(False, description="Load the PRM's own model class from its folder (needed "
                                        "by Qwen2.5-Math-PRM); runs code shipped with the model.")
    prm_engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="How the `prm` verifier runs its model: `transformers` (a token-classification "
        "PRM, or with prm_trust_remote_code the model's own class), or `vllm` (vLLM's reward pooling: STEP pooling "
        "at prm_step_token; needs a Qwen2ForProcessRewardModel, the Qwen2.5-Math-PRM architecture; on CPU float32 "
        "and eager). Both read the same tokens and give the same per-step rewards.")
    answer_column: str = Field("target_answer", description="Column with the target's answer.")
    summary_column: str = Field("target_summary", description="Column with the target's summary.")
    ground_truth_column: Optional[str] = Field("target_trace", description="Column with ground-truth traces for "
                                               "overlap metrics (open targets, toy world); skipped when absent.")
    max_length_ratio: Optional[float] = Field(
        None, gt=0, description="Length filter (off by default): reject a sampled trace longer than this multiple of "
        "its reference length, with the reason (\"too long: N tokens > k x reference M\"), and resample it like any "
        "rejection. The reference is the row's true trace (ground_truth_column) when it has one, else the median "
        "surrogate trace of <output.dir>/inverter_data; lengths are in the inverter's own tokens when its tokenizer "
        "loads offline, else in word tokens. E.g. 2.0; the paper's pipeline has no such filter.")
    max_model_len: Optional[int] = Field(None, ge=64, description="vLLM context length for local engines.")
    user_template_file: Optional[str] = Field(
        None, description="A file replacing the inverter's user message template (used by build-inverter-data for "
        "the SFT examples and by invert, so the inverter is queried as it was trained). Placeholders {problem}, "
        "{answer} and {summary} are required; without a summary the paragraph (text between blank lines) holding "
        "{summary} is left out. Other braces are literal. Default: prompts.INVERTER_USER_TEMPLATE.")
    system_prompt_file: Optional[str] = Field(
        None, description="A file whose text is sent as the inverter's system message (in the SFT examples and in "
        "invert). Default: no system message.")

    @field_validator("source")
    @classmethod
    def _exists(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not Path(v).exists():
            raise ValueError(f"{v!r} does not exist; fix: point invert.source at a query-target output folder or a file")
        return v

    @field_validator("user_template_file")
    @classmethod
    def _user_template(cls, v: Optional[str]) -> Optional[str]:
        return _template_file(v, ("problem", "answer", "summary"))

    @field_validator("system_prompt_file")
    @classmethod
    def _system_prompt(cls, v: Optional[str]) -> Optional[str]:
        return _template_file(v)

    @field_validator("verifiers")
    @classmethod
    def _verifiers(cls, v: list[str]) -> list[str]:
        if not v or v[0] != "answer":
            raise ValueError("invert.verifiers must start with answer (step-level verifiers run after answer "
                             f"consistency), got {v}; fix: e.g. [answer, steps]")
        if len(set(v)) != len(v):
            raise ValueError(f"invert.verifiers lists a verifier twice: {v}; fix: list each once")
        return v

    @model_validator(mode="after")
    def _prm(self) -> "InvertConfig":
        if "prm" in self.verifiers and not self.prm_model:
            raise ValueError("invert.verifiers lists prm but invert.prm_model is not set; fix: set prm_model to a PRM "
                             "folder or Hub id (e.g. Qwen/Qwen2.5-Math-PRM-7B), or drop prm")
        if self.prm_model and _looks_local(self.prm_model) and not Path(self.prm_model).exists():
            raise ValueError(f"invert.prm_model {self.prm_model!r} does not exist; fix: point it at a saved PRM folder")
        if self.prm_engine == "vllm" and self.prm_model and _looks_local(self.prm_model):
            arch = _architectures(Path(self.prm_model).expanduser())
            if arch and "Qwen2ForProcessRewardModel" not in arch:
                raise ValueError(f"invert.prm_engine vllm needs a Qwen2ForProcessRewardModel (vLLM's PRM "
                                 f"architecture); {self.prm_model} is {arch}; fix: set prm_engine: transformers")
        return self


class StudentsConfig(_Strict):
    """Student training data (the student-data stage)."""

    run_surrogate: bool = Field(False, description="Run models.surrogate on the target's problems first (writes "
                                "<output.dir>/surrogate_on_targets) so the surrogate_traces condition has its data "
                                "(CLI: student-data --run-surrogate).")
    matched: bool = Field(True, description="Also write <condition>_matched beside each condition: the rows every "
                          "non-empty condition shares, so conditions compare on the same problems.")
    user_template_file: Optional[str] = Field(
        None, description="A file replacing the students' user message template; placeholder {problem} required. "
        "Default: the bare problem (prompts.STUDENT_USER_TEMPLATE).")
    response_template_file: Optional[str] = Field(
        None, description="A file replacing the students' assistant turn for conditions with reasoning; "
        "placeholders {reasoning} and {answer} required (answer_only stays the bare answer). Default: "
        "prompts.STUDENT_RESPONSE_TEMPLATE, <think>\\n{reasoning}\\n</think>\\n\\n{answer}, which evaluation "
        "reads back.")

    @field_validator("user_template_file")
    @classmethod
    def _user_template(cls, v: Optional[str]) -> Optional[str]:
        return _template_file(v, ("problem",))

    @field_validator("response_template_file")
    @classmethod
    def _response_template(cls, v: Optional[str]) -> Optional[str]:
        return _template_file(v, ("reasoning", "answer"))


class ModelsConfig(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _role_presets(cls, data: Any) -> Any:
        """Each local-engine role starts from its own decoding preset (ROLE_SAMPLING)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for role, preset in ROLE_SAMPLING.items():
            m = out.get(role)
            if isinstance(m, dict) and m.get("backend") in ("vllm", "transformers"):
                given = m.get("sampling")
                if isinstance(given, SamplingConfig):
                    given = given.model_dump(exclude_none=True)
                if given is None or isinstance(given, dict):
                    out[role] = {**m, "sampling": {**preset, **{k: v for k, v in (given or {}).items()
                                                                if v is not None}}}
        return out

    target: Optional[ModelConfig] = Field(None, description="The black-box model whose reasoning is hidden.")
    surrogate: Optional[ModelConfig] = Field(None, description="Open reasoning model with visible traces.")
    compressor: Optional[ModelConfig] = Field(None, description="Turns traces into summaries.")
    inverter: Optional[ModelConfig] = Field(None, description="Writes a trace from problem, answer, summary.")
    judge: Optional[ModelConfig] = Field(None, description="Judges inverted traces step by step (the `judge` "
                                         "verifier of invert.verifiers).")


class RuntimeConfig(_Strict):
    """Where pipelines execute; never changes what they produce."""

    ray: bool = Field(False, description="Run pipelines on distilabel's Ray pipeline (a local cluster, or the one at "
                                         "ray_address / $RAY_ADDRESS).")
    ray_address: Optional[str] = Field(None, description="Ray cluster to join, e.g. 'auto' or 'ray://head:10001' "
                                                         "(default: $RAY_ADDRESS, else start a local cluster).")
    replicas: int = Field(1, ge=1, le=1024, description="Ray: replicas of each model step.")
    retry_failed: bool = Field(False, description="Send fresh requests for the rows whose cached result is a content "
                                                  "failure (refusal, empty answer, incomplete/length, empty summary); "
                                                  "successful rows are replayed, never paid again (CLI: --retry-failed).")


class RunConfig(_Strict):
    """A whole run. Load with ``load_config``; every field has a description."""

    name: str = Field("default", description="Run name (letters, digits, . _ -).")
    seed: int = Field(0, ge=0, description="Global seed.")
    cache_path: Optional[str] = Field(None, description="Request cache file (default: <output.dir>/requests.sqlite).")
    budget_usd: Optional[float] = Field(None, ge=0, description="Stop cleanly before spending more than this (new spending in this run; replays are free).")
    query: QueryConfig = Field(default_factory=QueryConfig, description="Target-query settings.")
    inverter_data: InverterDataConfig = Field(default_factory=InverterDataConfig,
                                              description="Inverter training-data settings.")
    invert: InvertConfig = Field(default_factory=InvertConfig, description="Inversion settings.")
    students: StudentsConfig = Field(default_factory=StudentsConfig, description="Student-data settings.")
    data: DataConfig = Field(default_factory=DataConfig, description="Input problems.")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Model roles.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Output locations.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution (local or Ray).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _SLUG.match(v) or ".." in v:
            raise ValueError(f"name must be letters, digits, '.', '_' or '-' (no '/' or '..'), got {v!r}; fix: e.g. gpt5-mini-math")
        return v

    @model_validator(mode="after")
    def _budget_needs_prices(self) -> "RunConfig":
        t = self.models.target
        if self.query.batch_api and t is not None and t.backend not in API_BACKENDS:
            raise ValueError(f"query.batch_api needs an OpenAI API target, but models.target.backend is {t.backend}; "
                             "fix: use backend openai-responses or openai-chat, or set query.batch_api: false")
        if self.budget_usd is not None and t is not None and t.backend != "toy" and \
                t.price_input_per_mtok == 0 and t.price_output_per_mtok == 0:
            raise ValueError("budget_usd is set but models.target has no prices, so spending cannot be measured; "
                             "fix: set models.target.price_input_per_mtok and price_output_per_mtok")
        if self.budget_usd is not None and t is not None and t.backend in API_BACKENDS and t.max_output_tokens() is None:
            raise ValueError("budget_usd is set but models.target.sampling.max_new_tokens is not, so a request's "
                             "worst-case cost (what the budget reserves before sending it) has no bound; fix: set "
                             "models.target.sampling.max_new_tokens (e.g. 32768)")
        if self.query.summarize_traces_with == "compressor":
            if self.models.compressor is None:
                raise ValueError("query.summarize_traces_with is compressor but models.compressor is not set; fix: add "
                                 "a compressor model (e.g. {backend: vllm, model: Qwen/Qwen2.5-7B-Instruct})")
            c = self.models.compressor
            if self.budget_usd is not None and c.backend in API_BACKENDS and c.max_output_tokens() is None:
                raise ValueError("budget_usd is set but models.compressor.sampling.max_new_tokens is not, so its "
                                 "requests' worst-case cost has no bound; fix: set models.compressor.sampling."
                                 "max_new_tokens (e.g. 2048)")
            if t is not None and t.backend in API_BACKENDS and t.reasoning_kind != "trace":
                raise ValueError(f"query.summarize_traces_with is compressor but models.target's reasoning is a "
                                 f"{t.reasoning_kind} (reasoning_field), not a full trace; fix: set "
                                 "models.target.reasoning_field: trace, or remove query.summarize_traces_with")
        return self

    @property
    def resolved_cache_path(self) -> Path:
        return Path(self.cache_path) if self.cache_path else Path(self.output.dir) / "requests.sqlite"

    def scrubbed_dict(self) -> dict:
        """The config as plain data, safe for cards and logs."""
        envs = [m.api_key_env for m in self.models.__dict__.values() if m is not None and m.api_key_env]
        return scrub(self.model_dump(mode="json"), extra_env=envs)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.scrubbed_dict(), sort_keys=False)


def _looks_local(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~"))


def _architectures(model_dir: Path) -> list[str]:
    """The ``architectures`` of a local model folder's config.json ([] when unreadable)."""
    import json

    try:
        return list(json.loads((model_dir / "config.json").read_text()).get("architectures") or [])
    except (OSError, ValueError, AttributeError):
        return []


# ----------------------------------------------------------------------------- errors

def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at ``loc`` (for 'did you mean')."""
    cls: Any = model_cls
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return []
        ann = cls.model_fields[part].annotation
        args = getattr(ann, "__args__", ()) or ()
        cls = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return []


def _fix_for(err: dict, root: type[BaseModel]) -> str:
    t, ctx, loc = err["type"], err.get("ctx") or {}, err["loc"]
    if t == "extra_forbidden":
        name = str(loc[-1])
        known = _fields_at(root, tuple(loc[:-1]))
        close = difflib.get_close_matches(name, known, n=1)
        if name in ("api_key", "token", "hf_token", "password"):
            return "fix: secrets are read only from environment variables; remove it and set api_key_env"
        return f"fix: did you mean '{close[0]}'?" if close else f"fix: remove it (known fields: {', '.join(known)})"
    if t == "missing":
        return f"fix: add '{loc[-1]}' (see `trace-inversion config schema`)"
    if t in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[t]
        key = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}[t]
        return f"fix: use a value {bound} {ctx.get(key)}"
    if t == "literal_error":
        return f"fix: use one of {ctx.get('expected')}"
    if t.endswith("_type") or t.endswith("_parsing"):
        return f"fix: use a {t.split('_')[0]} value"
    if t == "string_too_short":
        return "fix: use a non-empty string"
    return ""


def format_validation_error(e: ValidationError, root: type[BaseModel] = RunConfig) -> list[str]:
    problems = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<top level>"
        msg = err["msg"].removeprefix("Value error, ")
        fix = "" if "fix:" in msg else _fix_for(err, root)
        got = ""
        if err["type"] not in ("missing", "extra_forbidden") and "input" in err and not isinstance(err["input"], dict):
            shown = scrub(repr(err["input"]))
            got = f" (got {shown[:80]})"
        if "\n" in msg:  # a validator that found several problems at once
            problems += [f"{loc}: {line}" for line in msg.split("\n")]
            continue
        problems.append(f"{loc}: {msg}{got}" + (f"; {fix}" if fix else ""))
    return problems


def parse_config(data: Any, source: str | None = None) -> RunConfig:
    """Validate already-parsed data (a dict) into a RunConfig or raise ConfigError."""
    if data is None:
        raise ConfigError(["<top level>: the config is empty; fix: start from `trace-inversion config show`"], source)
    if not isinstance(data, dict):
        raise ConfigError(
            [f"<top level>: expected a mapping of sections (name, data, models, output), got {type(data).__name__}; "
             "fix: start from `trace-inversion config show`"], source)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e), source) from None


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> RunConfig:
    """Load a YAML run config (default: the embedded toy-world config)."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    if not path.exists():
        raise ConfigError([f"<file>: {path} does not exist; fix: check the path"], str(path))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"<file>: not UTF-8 text (byte {e.start}); fix: save the file as UTF-8"], str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError([f"<yaml>: cannot parse at {where}: {getattr(e, 'problem', e)}; fix: check indentation and quoting"],
                          str(path)) from None
    if overrides:
        data = deep_merge(data or {}, overrides)
    return parse_config(data, str(path))


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(item: str) -> dict:
    """``a.b.c=value`` (value parsed as YAML) into a nested dict."""
    if "=" not in item:
        raise ConfigError([f"--set {item!r}: expected key.path=value; fix: e.g. --set data.toy.n_train=100"])
    key, value = item.split("=", 1)
    node: dict = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = yaml.safe_load(value)
    return node


# ----------------------------------------------------------------------------- the `config` command
def add_parser(subparsers) -> None:
    """The ``config`` command."""
    p = subparsers.add_parser("config", help="tool: show, validate or print the schema of run configs",
                              description="Config tools. `show` prints the embedded default (or a file, normalised).")
    p.add_argument("action", choices=["show", "validate", "schema"])
    p.add_argument("file", nargs="?", help="config YAML (default: embedded)")
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.cli_options import print_json

    if args.action == "show":
        print(load_config(args.file).to_yaml() if args.file else DEFAULT_CONFIG_PATH.read_text(), end="")
    elif args.action == "schema":
        print_json(RunConfig.model_json_schema())
    else:
        cfg = load_config(args.file)
        print(f"OK: {args.file or 'embedded default'} is a valid config (run {cfg.name!r})")
    return 0
