"""Loading and validating input rows before any model call.

``load_rows(data_config)`` returns a list of dicts with at least ``id`` and
``problem``; ``columnar.open_rows`` the same rows as a stream (read and validated
with polars, handed out in batches). Every problem in the data is reported at once
in a ``DataError`` naming the row, the column and the fix: missing columns, wrong
types, empty or huge problems, duplicate ids, undecodable files. ``validate_rows``
checks rows already in memory (dicts) the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from trace_inversion.config import DataConfig
from trace_inversion.errors import UserError

MAX_PROBLEM_CHARS = 200_000


class DataError(UserError, ValueError):
    def __init__(self, problems: list[str], source: str = ""):
        self.problems = problems
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__(f"invalid input data {source} ({len(problems)} problem(s)):\n" + "\n".join(f"  - {p}" for p in shown))


def _load_hub(repo_id: str, split: str, subset: Optional[str] = None):
    """A Hub dataset's split (of ``subset``, its config name, e.g. ``main`` for gsm8k) as a
    ``datasets.Dataset``; a missing split or subset is a DataError naming the ones that exist."""
    import datasets

    try:
        return datasets.load_dataset(repo_id, subset, split=split)
    except ValueError as e:
        msg = str(e)
        if "Unknown split" in msg or "Bad split" in msg:
            raise DataError([f"{repo_id}: no split {split!r} ({msg.splitlines()[0][:200]}); fix: set data.split "
                             "(or pass --split) to one of the dataset's splits"], repo_id) from None
        if "Config name is missing" in msg or "BuilderConfig" in msg:
            raise DataError([f"{repo_id}: subset {subset!r} cannot be loaded ({msg.splitlines()[0][:300]}); "
                             "fix: set data.subset to one of the dataset's subsets"], repo_id) from None
        raise


def _read_hub(repo_id: str, split: str, subset: Optional[str] = None) -> list[dict]:
    """``_load_hub``'s rows as dicts."""
    return _load_hub(repo_id, split, subset).to_list()


def require_columns(n_rows: int, cols, problem_column: str, id_column: Optional[str], source: str,
                    extra_required: tuple = ()) -> None:
    """The checks on a dataset's shape that come before any row's: rows exist, the problem
    column (and ``extra_required``) and the id column are there; each a ``DataError``."""
    if not n_rows:
        raise DataError(["the dataset has no rows; fix: check the file or the split"], source)
    for col in (problem_column, *extra_required):
        if col not in cols:
            raise DataError([f"column {col!r} is missing (columns: {sorted(cols)}); fix: set data.problem_column "
                             "or rename the column"], source)
    if id_column and id_column not in cols:
        raise DataError([f"id column {id_column!r} is missing (columns: {sorted(cols)}); fix: set data.id_column: null "
                         "to use row numbers, or add the column"], source)


def validate_rows(rows: list[dict], problem_column: str, id_column: Optional[str], source: str = "",
                  extra_required: tuple[str, ...] = ()) -> list[dict]:
    """Check rows and normalise them to ``{"id": str, "problem": str, ...rest}``."""
    problems: list[str] = []
    require_columns(len(rows), set().union(*(r.keys() for r in rows[:1000])), problem_column, id_column, source,
                    extra_required)
    seen: dict[str, int] = {}
    out = []
    for i, r in enumerate(rows):
        p = r.get(problem_column)
        rid = r.get(id_column) if id_column else f"row-{i:07d}"
        label = f"row {i} (id {rid!r})"
        if not isinstance(p, str):
            problems.append(f"{label}: {problem_column!r} must be text, got {type(p).__name__}; fix: convert or drop the row")
            continue
        if not p.strip():
            problems.append(f"{label}: {problem_column!r} is empty; fix: drop the row or fill it")
            continue
        if len(p) > MAX_PROBLEM_CHARS:
            problems.append(f"{label}: {problem_column!r} has {len(p):,} characters (limit {MAX_PROBLEM_CHARS:,}); "
                            "fix: drop or shorten the row")
            continue
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            problems.append(f"{label}: id is empty; fix: give every row an id or set data.id_column: null")
            continue
        rid = str(rid)
        if rid in seen:
            problems.append(f"{label}: duplicate id {rid!r} (first at row {seen[rid]}); fix: make ids unique")
            continue
        seen[rid] = i
        row = {k: v for k, v in r.items() if k not in (problem_column, id_column)}
        row.update({"id": rid, "problem": p})
        out.append(row)
    if problems:
        raise DataError(problems, source)
    return out


def load_rows(cfg: DataConfig, split: Optional[str] = None) -> list[dict]:
    """Rows for a run as a list: the toy world's problems, a local file or a Hub dataset
    (its ``cfg.subset``), validated column-wise (``columnar.open_rows``, whose stream a
    stage uses instead when the rows need not all be in memory). ``split`` (a command's
    ``--split``) overrides ``cfg.split`` only when given."""
    from trace_inversion.data.columnar import open_rows

    return list(open_rows(cfg, split))


LOCAL_BACKENDS = ("vllm", "transformers")


def looks_like_local_path(model: str, output_dir: Optional[str] = None) -> bool:
    """Whether ``model`` names a local folder rather than a Hub id.

    The rule: a Hub id is ``name`` or ``owner/name`` (``Qwen/Qwen2.5-7B-Instruct``). A
    model is a local path when it exists, or starts with ``/``, ``./``, ``../`` or ``~``,
    or has more than one ``/`` (``runs/x/inverter``) or a backslash, or is
    ``owner/name`` whose ``owner`` is ``runs`` (the project's usual output root) or the
    first folder of the run's ``output.dir``. Anything else is taken for a Hub id."""
    if Path(model).expanduser().exists() or model.startswith(("/", "./", "../", "~", ".\\")):
        return True
    if "\\" in model or model.count("/") > 1:
        return True
    if model.count("/") == 1:
        owner = model.split("/", 1)[0]
        roots = {"runs"}
        if output_dir and not Path(output_dir).is_absolute() and Path(output_dir).parts:
            roots.add(Path(output_dir).parts[0])
        return owner in roots
    return False


def check_local_models(cfg, roles) -> None:
    """Every ``models.<role>.model`` of a local engine (vllm, transformers) that looks
    like a path (see ``looks_like_local_path``) must exist: checked before a stage makes
    any call, with one problem per field. Server backends are not checked (their model
    is the server's name for it, which may look like a path)."""
    from trace_inversion.config import ConfigError

    problems = []
    for role in roles:
        m = getattr(cfg.models, role, None)
        if m is None or m.backend not in LOCAL_BACKENDS:
            continue
        if looks_like_local_path(m.model, cfg.output.dir) and not Path(m.model).expanduser().exists():
            problems.append(f"models.{role}.model: local model folder {m.model!r} does not exist (relative paths start "
                            f"at {Path.cwd()}); fix: train or copy the model there first, or correct the path "
                            "(a Hub id is owner/name)")
    if problems:
        raise ConfigError(problems)


def jsonable(v: Any) -> Any:
    """Row values as plain JSON types (for parquet and cards)."""
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v
