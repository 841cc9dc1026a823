"""Dataset cards: one renderer for every stage output and release.

A card is a README.md whose YAML header carries ``configs:`` (so
``datasets.load_dataset(folder)`` finds every config and split) and whose body records
provenance: the stage, the project version, the statistics and the run config with
secrets scrubbed. Text from model outputs never enters the YAML header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from trace_inversion import __version__
from trace_inversion.secrets import scrub


def configs_block(folder: Path) -> list[dict]:
    """``configs:`` entries for the current shard of every split in ``data/<config>/``."""
    from trace_inversion.io import split_path

    out = []
    for cdir in sorted(p for p in (folder / "data").iterdir() if p.is_dir()):
        splits = sorted({f.name.split("-")[0].split(".")[0] for f in cdir.glob("*.parquet") if not f.name.startswith(".")})
        files = [{"split": s, "path": f"data/{cdir.name}/{split_path(folder, cdir.name, s).name}"} for s in splits]
        if files:
            out.append({"config_name": cdir.name, "data_files": files})
    if out:
        out[0]["default"] = True
    return out


def render_card(folder: Path, title: str, stage: str, cfg_dict: dict, stats: dict, counts: dict[str, int],
                extra_sections: dict[str, str] | None = None) -> str:
    header = {"configs": configs_block(folder), "tags": ["trace-inversion", stage], "license": "other"}
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
        f"# {title}", "",
        f"Produced by the `{stage}` stage of trace-inversion {__version__}.", "",
        "## Rows", "", "| config | rows |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in counts.items()], "",
        *[line for name, body in (extra_sections or {}).items() for line in (f"## {name}", "", body, "")],
        "## Statistics", "", "```json", json.dumps(scrub(stats), indent=2, sort_keys=True, default=str), "```", "",
        "## Run configuration (secrets scrubbed)", "", "```yaml",
        yaml.safe_dump(scrub(cfg_dict), sort_keys=False).rstrip(), "```", "",
        "## Responsible use", "",
        "Trace inversion extracts capabilities a model's owner chose to hide. Check the target's terms of use "
        "before publishing or training on this data.", "",
    ]
    return "\n".join(lines)


def write_stage_card(folder: Path, stage: str, cfg: Any, stats: dict, counts: dict[str, int],
                     extra_sections: dict[str, str] | None = None) -> Path:
    folder = Path(folder)
    text = render_card(folder, f"{cfg.name}: {stage}", stage, cfg.scrubbed_dict(), stats, counts, extra_sections)
    path = folder / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
