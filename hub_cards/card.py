"""Dataset cards: one template (``templates/dataset_card.md``) for every stage output
and release, rendered and checked with huggingface_hub's card tools.

A card is a README.md whose YAML header carries ``configs:`` (so
``datasets.load_dataset(folder)`` finds every config and split) and ``dataset_info:``
(features, row and byte counts per split), and whose body records provenance: the
models and their settings, the prompts and templates the stage used (text, source and
sha256), row counts, filter verdicts per reason, trace overlap, the lengths of every
generation (cap-hit rate, median and p90, with their unit), token usage and cost,
the summary-style report, the project version, the run config with secrets scrubbed and
a responsible-use section.

Text that may come from model outputs or users (failure reasons, prompts, config
values) never enters the YAML header, and in the body it is escaped: table cells are
HTML-escaped with ``|`` and newlines neutralised, blocks are fenced with a fence longer
than any backtick run inside them. The render context is saved next to the card
(``card.json``, scrubbed) so a reviewed release can re-render it with more sections.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

import yaml

from trace_inversion import __version__
from trace_inversion.config.secrets import scrub
from trace_inversion.errors import UserError

TEMPLATE = Path(__file__).parent / "templates" / "dataset_card.md"
CONTEXT_FILE = "card.json"


class CardError(UserError, ValueError):
    pass


# ----------------------------------------------------------------------------- escaping
def md_cell(value: Any, limit: int = 300) -> str:
    """A value safe inside one markdown table cell."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = html.escape(text, quote=False).replace("|", "\\|").replace("`", "&#96;")
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def fenced(text: str, lang: str = "") -> str:
    """``text`` in a fenced code block no content can close."""
    longest = max((len(m) for m in re.findall(r"`+|~+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


# ----------------------------------------------------------------------------- metadata
def configs_block(folder: Path) -> list[dict]:
    """``configs:`` entries for the current shard of every split in ``data/<config>/``."""
    from trace_inversion.data.io import split_path

    out = []
    data = folder / "data"
    for cdir in sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []:
        splits = sorted({f.name.split("-")[0].split(".")[0] for f in cdir.glob("*.parquet") if not f.name.startswith(".")})
        files = [{"split": s, "path": f"data/{cdir.name}/{split_path(folder, cdir.name, s).name}"} for s in splits]
        if files:
            out.append({"config_name": cdir.name, "data_files": files})
    if out:
        out[0]["default"] = True
    return out


def dataset_info_block(folder: Path, configs: list[dict]) -> list[dict]:
    """``dataset_info:`` entries (features, num_examples, num_bytes) read from the shards."""
    import datasets
    import pyarrow.parquet as pq

    out = []
    for c in configs:
        features, splits, size = None, [], 0
        for f in c["data_files"]:
            path = folder / f["path"]
            pf = pq.ParquetFile(path)
            if features is None:
                features = datasets.Features.from_arrow_schema(pf.schema_arrow)
            nbytes = path.stat().st_size
            size += nbytes
            splits.append({"name": f["split"], "num_bytes": nbytes, "num_examples": pf.metadata.num_rows})
        out.append({"config_name": c["config_name"], "features": features._to_yaml_list(), "splits": splits,
                    "download_size": size, "dataset_size": size})
    return out


# ----------------------------------------------------------------------------- sections
def _models_rows(cfg: dict) -> list[dict]:
    rows = []
    for role, m in (cfg.get("models") or {}).items():
        if not m:
            continue
        s = m.get("sampling") or {}
        settings = {k: m.get(k) for k in ("reasoning_effort", "reasoning_summary", "base_url", "tensor_parallel_size")
                    if m.get(k) not in (None, 1)}
        settings.update({k: s.get(k) for k in ("temperature", "top_p", "max_new_tokens", "n", "seed") if s.get(k) is not None})
        if m.get("price_input_per_mtok") or m.get("price_output_per_mtok"):
            settings["usd_per_mtok_in_out"] = [m.get("price_input_per_mtok"), m.get("price_output_per_mtok")]
        rows.append({"role": md_cell(role), "backend": md_cell(m.get("backend")), "model": md_cell(m.get("model")),
                     "settings": md_cell(", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults")})
    return rows


def _prompts(ctx: dict) -> list[dict]:
    """The card's prompt entries: the templates the stage recorded (``card_context``),
    else, for a context saved before stages recorded them, those the config implies."""
    if ctx.get("prompts") is not None:
        return [{"name": md_cell(p["name"]), "source": md_cell(p["source"]), "sha": md_cell(p["sha"]),
                 "block": fenced(p["text"], "text")} for p in ctx["prompts"]]
    return _config_prompts(ctx["config"])


def _config_prompts(cfg: dict) -> list[dict]:
    from trace_inversion.prompts import compressor_prompt, inverter_user_prompt

    items = []
    sysp = (cfg.get("query") or {}).get("system_prompt")
    if sysp:
        items.append(("target system prompt", sysp))
    idc = cfg.get("inverter_data") or {}
    if (cfg.get("models") or {}).get("compressor") or idc.get("prompt_file"):
        try:
            items.append((f"compressor ({'file' if idc.get('prompt_file') else idc.get('summary_style', 'bubbles')})",
                          compressor_prompt(idc.get("summary_style", "bubbles"), idc.get("prompt_file"))))
        except (OSError, ValueError) as e:
            items.append(("compressor", f"<unavailable: {e}>"))
    if (cfg.get("models") or {}).get("inverter"):
        items.append(("inverter user message", inverter_user_prompt("{problem}", "{answer}", "{summary}")))
    return [{"name": md_cell(n), "source": "config", "sha": hashlib.sha256(t.encode()).hexdigest()[:16],
             "block": fenced(t, "text")} for n, t in items]


def _verdicts(stats: dict) -> list[dict]:
    rows = []
    for key, label in (("failure_reasons", "failed"), ("rejected_reasons", "rejected"),
                       ("review_verdicts", "review")):
        for reason, n in sorted((stats.get(key) or {}).items(), key=lambda kv: -kv[1]):
            rows.append({"reason": md_cell(f"{label}: {reason}"), "rows": n})
    for key, label in (("kept_verdicts", "kept"), ("first_sample", "first sample")):
        for verdict, n in (stats.get(key) or {}).items():
            rows.append({"reason": md_cell(f"{label}: {verdict}"), "rows": n})
    return rows


def _overlap(stats: dict) -> list[dict]:
    return [{"set": md_cell(k.removeprefix("overlap_")), "metric": md_cell(m), "value": md_cell(v)}
            for k in ("overlap_kept", "overlap_unfiltered") for m, v in (stats.get(k) or {}).items()]


def _num(v: Any) -> str:
    if v is None:
        return "—"
    return f"{v:g}" if isinstance(v, (int, float)) else md_cell(v)


def _lengths(stats: dict) -> list[dict]:
    """One row per measured generation of ``stats["lengths"]`` (``scoring.lengths``)."""
    rows = []
    for name, st in (stats.get("lengths") or {}).items():
        rate = st.get("cap_hit_rate")
        rows.append({"name": md_cell(name.replace("_", " ")), "of": md_cell(st.get("of") or ""), "n": st.get("n", 0),
                     "unit": md_cell(st.get("unit") or ""), "median": _num(st.get("median")),
                     "p90": _num(st.get("p90")), "cap": _num(st.get("cap")),
                     "cap_hits": "—" if rate is None else f"{st.get('cap_hits', 0)} ({rate:.1%})"})
    return rows


def _length_ratios(stats: dict) -> tuple[str, list[dict]]:
    """The reference and one row per set of inverted traces of ``stats["length_ratio"]``."""
    lr = stats.get("length_ratio") or {}
    if not lr.get("reference"):
        return "", []
    rows = [{"name": md_cell(k.replace("_", " ")), "n": lr[k].get("n"), "median": _num(lr[k].get("median_ratio")),
             "p90": _num(lr[k].get("p90_ratio")), "of_medians": _num(lr[k].get("ratio_of_medians"))}
            for k in ("first_draws", "kept") if isinstance(lr.get(k), dict)]
    return f"{md_cell(lr['reference'])}, lengths in {md_cell(lr.get('unit') or '')}", rows


def _usage(stats: dict) -> list[dict]:
    keys = [("input_tokens", "input tokens"), ("output_tokens", "output tokens (incl. reasoning)"),
            ("reasoning_tokens", "reasoning tokens"), ("cost_usd", "cost of the data (USD)"),
            ("new_cost_usd", "paid in the last run (USD)"), ("http_attempts", "HTTP attempts")]
    return [{"name": label, "value": md_cell(stats[k])} for k, label in keys if stats.get(k) is not None]


# ----------------------------------------------------------------------------- render
def render_card(folder: Path, ctx: dict) -> str:
    """The card text for ``folder`` from a render context (see ``card_context``)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    folder = Path(folder)
    configs = configs_block(folder)
    data = DatasetCardData(configs=configs, dataset_info=dataset_info_block(folder, configs), license="other",
                           tags=["trace-inversion", ctx["stage"], "synthetic", "reasoning"],
                           task_categories=["text-generation"])
    stats, cfg = ctx["stats"], ctx["config"]
    length_reference, length_ratios = _length_ratios(stats)
    card = DatasetCard.from_template(
        data, template_path=str(TEMPLATE),
        title=md_cell(ctx["title"]),
        intro=(f"Produced by the `{ctx['stage']}` stage of trace-inversion {__version__}: reasoning traces "
               "reconstructed for a model that hides its chain of thought (or the data to build them)."),
        models=_models_rows(cfg), prompts=_prompts(ctx),
        counts=[{"name": md_cell(k), "rows": v} for k, v in ctx["counts"].items()],
        verdicts=_verdicts(stats), overlap=_overlap(stats), usage=_usage(stats),
        lengths=_lengths(stats), length_ratios=length_ratios, length_reference=length_reference,
        sections=[{"name": md_cell(n), "body": b} for n, b in ctx.get("sections", {}).items()],
        stats_block=fenced(json.dumps(stats, indent=2, sort_keys=True, default=str), "json"),
        config_block=fenced(yaml.safe_dump(cfg, sort_keys=False).rstrip(), "yaml"),
        version=__version__,
    )
    return str(card)


def validate_card(text: str, folder: Path | None = None) -> dict:
    """Check a card the way the Hub and ``datasets`` read it: huggingface_hub parses the
    YAML header into DatasetCardData, ``datasets`` parses its ``configs:`` and
    ``dataset_info:``, and (with ``folder``) every listed data file exists with the
    listed row count. Returns the header as a dict; raises CardError."""
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard(text)
    except Exception as e:  # noqa: BLE001
        raise CardError(f"card header does not parse: {e}") from e
    header = card.data.to_dict()
    try:
        configs = MetadataConfigs.from_dataset_card_data(card.data)
        infos = DatasetInfosDict.from_dataset_card_data(card.data)
    except Exception as e:  # noqa: BLE001
        raise CardError(f"configs/dataset_info do not parse for datasets: {e}") from e
    if not configs:
        raise CardError("card has no configs: block")
    if set(configs) != set(infos):
        raise CardError(f"configs {sorted(configs)} and dataset_info {sorted(infos)} disagree")
    if folder is not None:
        import pyarrow.parquet as pq

        for name, c in configs.items():
            for f in c["data_files"]:
                path = Path(folder) / f["path"]
                if not path.exists():
                    raise CardError(f"config {name!r}: data file {f['path']} is missing")
                n = pq.ParquetFile(path).metadata.num_rows
                if infos[name].splits[f["split"]].num_examples != n:
                    raise CardError(f"config {name!r} split {f['split']}: card says "
                                    f"{infos[name].splits[f['split']].num_examples} rows, file has {n}")
    return header


def card_context(title: str, stage: str, cfg_dict: dict, stats: dict, counts: dict[str, int],
                 sections: dict[str, str] | None = None, prompts: list | None = None) -> dict:
    """``prompts``: the ``prompts.Template``s the stage used (text, source, sha256)."""
    ctx = {"title": title, "stage": stage, "config": scrub(cfg_dict), "stats": scrub(stats),
           "counts": dict(counts), "sections": dict(sections or {})}
    if prompts is not None:
        ctx["prompts"] = [{"name": t.label, "source": t.source, "sha": t.sha, "text": scrub(t.text)} for t in prompts]
    return ctx


def write_card(folder: Path, ctx: dict) -> Path:
    """Render, validate and atomically write README.md (+ card.json) in ``folder``."""
    from trace_inversion.data.io import write_json

    folder = Path(folder)
    text = render_card(folder, ctx)
    validate_card(text, folder)
    write_json(ctx, folder / CONTEXT_FILE)
    path = folder / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_stage_card(folder: Path, stage: str, cfg: Any, stats: dict, counts: dict[str, int],
                     extra_sections: dict[str, str] | None = None, prompts: list | None = None) -> Path:
    ctx = card_context(f"{cfg.name}: {stage}", stage, cfg.scrubbed_dict(), stats, counts, extra_sections, prompts)
    return write_card(Path(folder), ctx)


def load_context(folder: Path) -> dict:
    p = Path(folder) / CONTEXT_FILE
    if not p.exists():
        raise CardError(f"{folder} has no {CONTEXT_FILE}; fix: produce it with a trace-inversion stage")
    return json.loads(p.read_text())
