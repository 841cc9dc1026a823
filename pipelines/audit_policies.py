"""Summary policies for ``trace-inversion audit``: what they are, how they are named,
and how each becomes a run config.

A **policy** is a name, a description and config overrides merged into the user's run
config; the audit runs the attack pipeline once per policy with that config. Generic:
in the toy world a policy sets ``data.toy.summary_*`` (the target's summary policy); for
a real open model it sets whatever makes the summaries differ, e.g. the summariser's
prompt (``inverter_data.prompt_file`` with ``query.summarize_traces_with: compressor``),
``models.compressor``, or the target's system prompt, given in a policies YAML file.

Two kinds:

- ``attack``: the target shows its answer and the policy's summary; the attacker trains
  an inverter on simulated summaries (its compressor follows the policy: the worst case
  for the defender, an attacker who knows the policy) and inverts the target's outputs.
- ``prior`` (the policy ``none``: no summary *and* no answer): the attacker has nothing
  from the target, only its own surrogate's traces on the same problems. Not a policy a
  provider would ship (it returns no answer) but the zero point of the curve: what the
  attacker knows without querying the target at all. Costs the surrogate's generations
  on the audited problems, no inverter.

Built-in names (toy world): ``none``, ``answer-only`` (summary_every 0: the answer alone),
``every-K`` (the running value of every K-th step), ``every-K+O`` (offset O),
``every-K-is`` / ``every-K-gives`` (the summary's phrasing). Built-ins outside the toy
world: ``none`` and ``answer-only`` (``invert.with_summary: false``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from trace_inversion.config import ConfigError, RunConfig, deep_merge, load_config

PRIOR, ATTACK = "prior", "attack"
# The toy world's default audit: the zero point, the answer alone, then every k-th step
# for decreasing k down to every step (n_ops 5: every-3 reveals step 3, every-2 steps 2
# and 4, every-1 all five).
TOY_DEFAULT_POLICIES = ["none", "answer-only", "every-3", "every-2", "every-1"]
REAL_DEFAULT_POLICIES = ["answer-only"]  # plus the policies of --policies-file
_EVERY = re.compile(r"^every-(\d+)(?:\+(\d+))?(?:-(gives|is))?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


@dataclass
class Policy:
    """One summary policy of an audit.

    Attributes:
        name: its name (a folder name under ``<audit>/policies/``).
        overrides: config fields merged into the user's run config (after ``--set``).
        description: what it shows, for the report.
        kind: ``attack`` (the pipeline: query, inverter data, inverter, invert) or
            ``prior`` (no target output: the surrogate's own traces).
    """

    name: str
    overrides: dict = field(default_factory=dict)
    description: str = ""
    kind: str = ATTACK

    @property
    def with_summary(self) -> bool:
        return ((self.overrides.get("invert") or {}).get("with_summary", True)) is not False


def builtin_policy(name: str, toy: bool) -> Optional[Policy]:
    """The built-in policy ``name`` (None when it is not one)."""
    if name == "none":
        return Policy("none", {}, "nothing from the target (no summary, no answer): the attacker's surrogate "
                                  "traces alone, the zero point", PRIOR)
    if name == "answer-only":
        over: dict = {"invert": {"with_summary": False}}
        if toy:
            over["data"] = {"toy": {"summary_every": 0}}
        return Policy("answer-only", over, "the final answer, no summary")
    m = _EVERY.match(name)
    if m and toy:
        k, off, style = int(m.group(1)), int(m.group(2) or 0), m.group(3)
        toy_over = {"summary_every": k, "summary_offset": off}
        if style:
            toy_over["summary_style"] = style
        desc = "every step's running value" if k == 1 else f"the running value of every {_ordinal(k)} step"
        if off:
            desc += f" (offset {off})"
        if style:
            desc += f", phrased '{style}'"
        return Policy(name, {"data": {"toy": toy_over}, "invert": {"with_summary": True}}, desc + " + the answer")
    return None


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def read_policies_file(path: str) -> list[Policy]:
    """Policies from a YAML file::

        policies:
          - name: answer-only                 # a built-in name needs no `set`
          - name: brief
            description: two-sentence summaries
            set: {inverter_data: {prompt_file: prompts/brief.txt}}
          - name: none                        # the zero point (no target output)
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"--policies-file: {path} does not exist; fix: check the path"])
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError([f"--policies-file {path}: not YAML ({e}); fix: check indentation and quoting"]) from None
    items = data.get("policies") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ConfigError([f"--policies-file {path}: expected `policies:` with a list of {{name, description, set}}; "
                           "fix: see `trace-inversion audit --help`"])
    out, problems = [], []
    for i, it in enumerate(items):
        where = f"--policies-file {path}: policy {i}"
        if isinstance(it, str):
            it = {"name": it}
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            problems.append(f"{where}: needs a name; fix: e.g. {{name: brief, set: {{...}}}}")
            continue
        unknown = set(it) - {"name", "description", "set", "kind"}
        if unknown:
            problems.append(f"{where} ({it['name']}): unknown keys {sorted(unknown)}; fix: use name, description, set")
        over = it.get("set") or {}
        if not isinstance(over, dict):
            problems.append(f"{where} ({it['name']}): `set` must be a mapping of config fields; fix: e.g. "
                            "set: {inverter_data: {prompt_file: brief.txt}}")
            continue
        kind = it.get("kind") or (PRIOR if it["name"] == "none" else ATTACK)
        if kind not in (PRIOR, ATTACK):
            problems.append(f"{where} ({it['name']}): kind must be attack or prior; fix: remove it or pick one")
            continue
        out.append(Policy(it["name"], over, it.get("description") or "", kind))
    if problems:
        raise ConfigError(problems)
    return out


def resolve_policies(names: Optional[str], file: Optional[str], toy: bool) -> list[Policy]:
    """The audit's policies: ``names`` (comma-separated) picked from the file's policies
    and the built-ins; without names, every policy of the file, else the defaults."""
    from_file = read_policies_file(file) if file else []
    by_name = {p.name: p for p in from_file}
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
    elif from_file:
        wanted = [p.name for p in from_file]
    else:
        wanted = list(TOY_DEFAULT_POLICIES if toy else REAL_DEFAULT_POLICIES)
    out, problems = [], []
    for n in wanted:
        p = by_name.get(n) or builtin_policy(n, toy)
        if p is None:
            hint = ("none, answer-only, every-K, every-K+O, every-K-is" if toy else
                    "none, answer-only, or a policy of --policies-file (every-K is a toy-world policy)")
            problems.append(f"--policies: unknown policy {n!r}; fix: one of {hint}")
            continue
        out.append(p)
    if not out and not problems:
        problems.append("--policies: no policy given; fix: e.g. --policies answer-only,every-2")
    names_seen: dict[str, int] = {}
    for p in out:
        names_seen[p.name] = names_seen.get(p.name, 0) + 1
        if not _NAME.match(p.name):
            problems.append(f"policy {p.name!r}: a name is a folder name (letters, digits, . _ + -); fix: rename it")
    problems += [f"policy {n!r} is listed {c} times; fix: list each once" for n, c in names_seen.items() if c > 1]
    if out and all(p.kind == PRIOR for p in out):
        problems.append("--policies: only the zero point `none`; fix: add a policy to audit, e.g. answer-only")
    if problems:
        raise ConfigError(problems)
    return out


def policy_problems(policy: Policy, cfg: RunConfig, builds_data: bool = True) -> list[str]:
    """What makes a policy's (validated) config unable to run the audit, with the fix
    (``builds_data``: the attacker's inverter data is built, to train an inverter)."""
    out = []
    pre = f"policy {policy.name}"
    if policy.kind == PRIOR:
        if cfg.models.surrogate is None:
            out.append(f"{pre}: the zero point needs models.surrogate (its own traces); fix: add a surrogate or drop "
                       "`none`")
        return out
    for role in ("target",) + (("surrogate", "compressor") if builds_data else ()):
        if getattr(cfg.models, role) is None:
            out.append(f"{pre}: models.{role} is missing; fix: add it to the config (see `trace-inversion config "
                       "show`)")
    if cfg.data.source == "toy":
        t = cfg.data.toy
        if t.summary_every > t.n_ops:
            out.append(f"{pre}: summary_every {t.summary_every} > n_ops {t.n_ops} reveals no step; fix: use every-K "
                       f"with K <= {t.n_ops}")
        if cfg.invert.with_summary and t.summary_every == 0:
            out.append(f"{pre}: the target shows no summary (summary_every 0) but invert.with_summary is true; fix: "
                       "use answer-only (invert.with_summary: false)")
        ce = t.compressor_every  # null follows the policy (checked above)
        if builds_data and cfg.invert.with_summary and ce is not None and not (0 < ce <= t.n_ops):
            out.append(f"{pre}: the attacker's compressor reveals no step (compressor_every {ce}), so its inverter "
                       "data would be empty; fix: leave data.toy.compressor_every null (follow the policy)")
        if cfg.invert.ground_truth_column is None:
            out.append(f"{pre}: invert.ground_truth_column is null, so no overlap can be measured; fix: leave it "
                       "target_trace")
    return out


def toy_answer_only_fix(cfg_dict_over: dict, cfg: RunConfig) -> dict:
    """An answer-only toy policy's attacker data: the compressor of a target without
    summary writes none, so every inverter-data row would fail; it summarises every step
    instead (only its summary-free examples, ``without_summary``, train the inverter)."""
    t = cfg.data.toy
    if cfg.data.source == "toy" and not cfg.invert.with_summary:
        ce = t.summary_every if t.compressor_every is None else t.compressor_every
        if ce == 0:
            return deep_merge(cfg_dict_over, {"data": {"toy": {"compressor_every": 1}}})
    return cfg_dict_over


def revealed_steps(cfg: RunConfig, policy: Policy) -> Optional[list[int]]:
    """The 1-based steps whose running value the policy reveals in the toy world (the
    summary's steps plus the last, which the answer gives); None outside it."""
    if cfg.data.source != "toy":
        return None
    if policy.kind == PRIOR:
        return []
    from trace_inversion.toy.world import ToyWorld

    n = cfg.data.toy.n_ops
    return sorted(set(ToyWorld.from_config(cfg.data.toy).revealed_steps(n)) | {n})


def load_policy_config(config_path: Optional[str], over: dict, policy: Policy) -> RunConfig:
    """The run config of one policy, its errors prefixed with the policy's name."""
    try:
        return load_config(config_path, over)
    except ConfigError as e:
        raise ConfigError([f"policy {policy.name}: {p}" for p in e.problems]) from None
