"""The one stage runner: every pipeline's bookkeeping, written once.

A stage turns input rows into a dataset folder ``<output.dir>/<folder>``. ``Stage``
does, in order: fingerprint what the output depends on -> reuse a finished folder with
that fingerprint (no pipeline, no model call) -> run the stage's own code (``produce``)
-> write its splits -> ``stats.json`` -> the card -> the finished mark (last, so a crash
before it means the stage runs again; the request cache makes that rerun free for every
request already answered).

The fingerprint covers the run config (secrets scrubbed, ``runtime`` left out: where a
run executes changes nothing), the input rows, the stage's extra inputs, the files of
local models, the project version, the toy world's settings, and the resolved text of
every prompt and template the stage uses (``prompts.stage_templates``): an edited prompt
file is a new run, as in Curator, whose run identity hashes the prompt function.

Example::

    stage = Stage(cfg, "invert", rows, folder="inversion", summary=summary,
                  templates=stage_templates(cfg, "inverter_user", "inverter_system"))
    return stage.run(lambda: Output(splits={"inverted": kept}, stats={...}))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from trace_inversion.config import RunConfig
from trace_inversion.pipelines.common import report_stage

MARKER = ".complete.json"


@dataclass
class Output:
    """What a stage's ``produce`` hands the runner to write.

    Attributes:
        splits: config name -> rows, each written as ``data/<config>/train-<sha>.parquet``:
            a list of dicts, or a polars (Lazy)Frame streamed to the shard (no dict per row).
        stats: the stage's statistics (``seconds``, ``output_dir`` and ``prompts`` are added),
            or a function computing them from the written shards (``{config: path}``).
        counts: rows per config for the card (default: the length of each split; the
            row count of the written shard for a frame).
        like: config name -> rows lending their columns to an empty split.
        sections: extra card sections, name -> markdown.
        finished: False leaves the stage unmarked, so the next run retries it (failed rows);
            or a function of the stats (computed from the shards) saying so.
        console: keys returned with the stats (and kept for a reuse) but kept out of
            ``stats.json`` and the card (e.g. a rendered table for the console).
    """

    splits: dict[str, Any]
    stats: Union[dict, Callable[[dict[str, Path]], dict]]
    counts: Optional[dict[str, int]] = None
    like: dict[str, list[dict]] = field(default_factory=dict)
    sections: dict[str, str] = field(default_factory=dict)
    finished: Union[bool, Callable[[dict], bool]] = True
    console: dict = field(default_factory=dict)


class Stage:
    """One run of one stage (see the module doc).

    Attributes:
        cfg: the run config.
        name: the stage's name in the fingerprint and the card (``query-target``).
        rows: its input rows: a list, or a ``data.columnar.RowSource`` (read as a stream).
        out_dir: ``<output.dir>/<folder>``.
        label: its console name (default: the folder with ``-`` for ``_``).
        templates: the ``prompts.Template``s it uses (fingerprint, card, stats).
        inputs: anything else its output depends on (fingerprinted as JSON).
        summary: ``stats -> str``, the key counts of its console line.
        calls_models: a stage without model calls is reused even under ``--retry-failed``.
        fingerprint: computed once, before anything runs.
    """

    def __init__(self, cfg: RunConfig, name: str, rows: Iterable[dict], *, folder: str,
                 summary: Callable[[dict], str], templates: Optional[dict] = None, inputs: Optional[dict] = None,
                 label: Optional[str] = None, calls_models: bool = True):
        self.t0 = time.time()
        self.cfg, self.name, self.rows = cfg, name, rows
        self.out_dir = Path(cfg.output.dir) / folder
        self.label = label or folder.replace("_", "-")
        self.templates = dict(templates or {})
        self.inputs = dict(inputs or {})
        self.summary = summary
        self.calls_models = calls_models
        self.fingerprint = stage_fingerprint(
            cfg, name, rows, **self.inputs,
            templates={k: t.text for k, t in sorted(self.templates.items())},
            # the toy backend's behaviour, whatever the data source
            toy_world=cfg.data.toy.model_dump(mode="json"))

    def template(self, key: str) -> Optional[str]:
        """The text of template ``key`` (None when the stage does not use it)."""
        t = self.templates.get(key)
        return t.text if t is not None else None

    def reused(self) -> Optional[dict]:
        """The saved stats of this stage when finished with the same fingerprint."""
        return reuse_finished(self.out_dir, self.fingerprint, self.cfg if self.calls_models else None)

    def run(self, produce: Callable[[], Output]) -> dict:
        """Reuse, else ``produce`` then write everything; returns the stats (reported)."""
        done = self.reused()
        if done is not None:
            return report_stage(self.label, done, self.cfg, self.summary(done))
        out = produce()
        stats = self.write(out)
        return report_stage(self.label, stats, self.cfg, self.summary(stats))

    def write(self, out: Output) -> dict:
        """Splits, ``stats.json``, the card and (when ``out.finished``) the finished mark."""
        from trace_inversion.hub_cards.card import write_stage_card
        from trace_inversion.data.io import count_rows, write_json, write_split, write_split_frame

        paths, counts = {}, {}
        for config, rows in out.splits.items():
            if isinstance(rows, list):
                paths[config] = write_split(self.out_dir, config, rows, like=out.like.get(config))
                counts[config] = len(rows)
            else:  # a polars frame: streamed, counted from the shard
                paths[config] = write_split_frame(self.out_dir, config, rows)
                counts[config] = count_rows(paths[config])
        stats = dict(out.stats(paths) if callable(out.stats) else out.stats)
        stats.setdefault("seconds", round(time.time() - self.t0, 2))
        stats.setdefault("output_dir", str(self.out_dir))
        if self.templates:
            stats["prompts"] = {k: {"sha256": t.sha, "source": t.source} for k, t in self.templates.items()}
        write_json(stats, self.out_dir / "stats.json")
        counts = out.counts if out.counts is not None else counts
        write_stage_card(self.out_dir, self.name, self.cfg, stats, counts, extra_sections=out.sections,
                         prompts=list(self.templates.values()))
        stats.update(out.console)
        if (out.finished(stats) if callable(out.finished) else out.finished):
            mark_finished(self.out_dir, self.fingerprint, stats)
        return stats


# ----------------------------------------------------------------------------- finished stages
def stage_fingerprint(cfg: RunConfig, stage: str, rows: Iterable[dict], **extra) -> str:
    """What a stage's output depends on: the run config (secrets scrubbed), its input
    rows, extra inputs (``Stage`` adds its templates' text and the toy world), the files
    of local models and the project version. The rows are hashed one by one as they are
    iterated (a ``RowSource`` streams them): a list and a stream of the same rows give
    the same fingerprint."""
    import hashlib
    import json

    from trace_inversion import __version__
    from trace_inversion.models.cache import model_signature

    models = {}
    for role, m in cfg.models.__dict__.items():
        sig = model_signature(m.model) if m is not None else None
        if sig is not None:  # a local model folder: retrained weights change the output
            models[role] = sig
    h = hashlib.sha256()
    settings = {k: v for k, v in cfg.scrubbed_dict().items() if k != "runtime"}  # where it ran changes nothing
    h.update(json.dumps([stage, __version__, settings, models, extra], sort_keys=True,
                        default=str).encode())
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
    return h.hexdigest()


def reuse_finished(out_dir: Path, fingerprint: str, cfg: RunConfig | None = None) -> dict | None:
    """The saved stats of a finished stage with this fingerprint whose shards are all
    still in place, else None. A re-run of a finished run costs no pipeline and no call.
    ``--retry-failed`` always runs the stage (its successes replay from the cache)."""
    import json

    if cfg is not None and cfg.runtime.retry_failed:
        return None
    p = Path(out_dir) / MARKER
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if m.get("fingerprint") != fingerprint or not all((Path(out_dir) / f).exists() for f in m.get("files", [])):
        return None
    stats = dict(m["stats"], reused=True)
    if "new_cost_usd" in stats:
        stats["new_cost_usd"] = 0.0  # nothing was paid by this run
    return stats


def mark_finished(out_dir: Path, fingerprint: str, stats: dict) -> None:
    """Record a finished stage (written last, atomically: a crash before it means rerun)."""
    from trace_inversion.data.io import write_json

    out_dir = Path(out_dir)
    files = sorted(str(p.relative_to(out_dir)) for p in (out_dir / "data").rglob("*.parquet")
                   if not p.name.startswith("."))
    write_json({"fingerprint": fingerprint, "files": files + ["README.md"], "stats": stats}, out_dir / MARKER)
