"""Typed run configuration, validated before any model call.

A run is described by one YAML file (see ``core/configs/default.yaml``, the embedded
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

from .secrets import looks_like_secret, scrub
from .errors import UserError

DEFAULT_CONFIG_PATH = Path(__file__).parent / "configs" / "default.yaml"

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


class SamplingConfig(_Strict):
    """Decoding parameters. Defaults are the paper's inversion decoding."""

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(50, description="Top-k sampling; -1 disables it.")
    repetition_penalty: float = Field(1.05, gt=0.0, le=2.0, description="vLLM/transformers repetition penalty.")
    max_new_tokens: int = Field(8192, ge=1, le=262144, description="Generation length cap in tokens.")
    n: int = Field(1, ge=1, le=64, description="Samples per request.")
    seed: Optional[int] = Field(None, ge=0, description="Sampling seed (part of the cache key).")

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v == 0 or v < -1:
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
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="vLLM tensor parallelism.")

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
        return self

    def api_key(self) -> Optional[str]:
        """The key, read from the environment at call time (never stored)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ToyWorldConfig(_Strict):
    """The embedded default's world: chained arithmetic evaluated left to right."""

    seed: int = Field(0, ge=0, description="World seed: problems, target and surrogate are deterministic in it.")
    n_train: int = Field(2000, ge=1, le=10_000_000, description="Problems for training data.")
    n_test: int = Field(500, ge=0, le=10_000_000, description="Held-out problems for evaluation.")
    n_ops: int = Field(6, ge=1, le=64, description="Operations per problem.")
    modulus: int = Field(10, ge=2, le=1000, description="Arithmetic modulus.")
    ops: str = Field("+-*", description="Operators to draw from, a subset of '+-*'.")
    summary_every: int = Field(2, ge=1, description="The target's summary reveals every k-th intermediate value.")
    surrogate_reliable_steps: int = Field(
        3, ge=0, description="The surrogate is right on its first k steps and errs after them (systematic weakness)."
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
    split: str = Field("train", description="Split to read for Hub/local datasets.")
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
    dry_run_sample: int = Field(20, ge=1, le=10_000, description="Rows queried by --dry-run to estimate cost.")

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


class InvertConfig(_Strict):
    """Inversion with verified synthesis (the invert stage)."""

    source: Optional[str] = Field(None, description="A query-target output folder, or a .parquet/.jsonl file with "
                                  "problem/answer/summary columns (default: <output.dir>/target_query).")
    with_summary: bool = Field(True, description="Give the inverter the target's summary (the paper's main setting).")
    samples_per_round: int = Field(1, ge=1, le=64, description="Samples per row per round.")
    max_attempts: int = Field(4, ge=1, le=64, description="Rounds of sampling before a row is rejected "
                              "(1 = no resampling, the paper's unverified setting).")
    unverifiable: Literal["keep", "reject"] = Field("keep", description="What to do with traces whose consistency "
                                                     "cannot be verified.")
    answer_column: str = Field("target_answer", description="Column with the target's answer.")
    summary_column: str = Field("target_summary", description="Column with the target's summary.")
    ground_truth_column: Optional[str] = Field("target_trace", description="Column with ground-truth traces for "
                                               "overlap metrics (open targets, toy world); skipped when absent.")
    max_model_len: Optional[int] = Field(None, ge=64, description="vLLM context length for local engines.")

    @field_validator("source")
    @classmethod
    def _exists(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not Path(v).exists():
            raise ValueError(f"{v!r} does not exist; fix: point invert.source at a query-target output folder or a file")
        return v


class ModelsConfig(_Strict):
    target: Optional[ModelConfig] = Field(None, description="The black-box model whose reasoning is hidden.")
    surrogate: Optional[ModelConfig] = Field(None, description="Open reasoning model with visible traces.")
    compressor: Optional[ModelConfig] = Field(None, description="Turns traces into summaries.")
    inverter: Optional[ModelConfig] = Field(None, description="Writes a trace from problem, answer, summary.")


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
        if self.budget_usd is not None and t is not None and t.backend != "toy" and \
                t.price_input_per_mtok == 0 and t.price_output_per_mtok == 0:
            raise ValueError("budget_usd is set but models.target has no prices, so spending cannot be measured; "
                             "fix: set models.target.price_input_per_mtok and price_output_per_mtok")
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
