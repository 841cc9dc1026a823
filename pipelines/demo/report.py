"""The demo's report: the accuracy table per condition, the inversion's filter rates
and trace quality, the lengths of every generation per seed, the releases
(``report.md``), and the bar chart (``results.png``)."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

from trace_inversion.data.io import read_split
from trace_inversion.pipelines import STAGES
from trace_inversion.pipelines.student_data import DEFAULT_CONDITIONS

LABELS = {"answer_only": "answer only", "summary_answer": "summary + answer", "surrogate_traces": "surrogate traces",
          "inverted_unfiltered": "inverted (unfiltered)", "inverted_verified": "inverted (verified)",
          "target_traces": "target traces (oracle)"}


def same_data(folder: Path, conditions: list[str]) -> dict[str, str]:
    """Each condition mapped to the first one with identical rows (itself if none):
    e.g. verified synthesis that rejected nothing leaves verified == unfiltered."""
    seen: dict[str, str] = {}
    out = {}
    for c in conditions:
        digest = hashlib.sha256(json.dumps(read_split(folder, c), sort_keys=True).encode()).hexdigest()
        out[c] = seen.setdefault(digest, c)
    return out


def seed_lengths(run: dict) -> dict:
    """A seed's length statistics (``scoring.lengths``): the surrogate's and the
    compressor's (``run["lengths"]``, else the ``stats.json`` of the ``inverter_data``
    stage beside the inversion folder) and the inverter's (``run["inversion"]``)."""
    out = dict(run.get("lengths") or {})
    inv = run.get("inversion") or {}
    if not out and inv.get("output_dir"):
        p = Path(inv["output_dir"]).parent / STAGES["build-inverter-data"]["folder"] / "stats.json"
        if p.exists():
            out = dict(json.loads(p.read_text()).get("lengths") or {})
    out.update(inv.get("lengths") or {})
    return out


def _num(v) -> str:
    return "—" if v is None else f"{v:g}"


def lengths_lines(runs: list[dict]) -> list[str]:
    """The report's lengths section: one table row per seed and generation, then the
    inverted-to-reference length ratios."""
    lines = ["## Lengths and length caps", "",
             "Per generation: median and p90 length in the unit named (the model's own tokens where its tokenizer "
             "loads offline, else word tokens) and how many generations stopped at the length cap.", "",
             "| seed | generation | measured | unit | n | median | p90 | cap hits |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for name, st in seed_lengths(r).items():
            rate = st.get("cap_hit_rate")
            hits = "—" if rate is None else f"{st.get('cap_hits', 0)} ({rate:.1%})"
            lines.append(f"| {r['seed']} | {name.replace('_', ' ')} | {st.get('of', '')} | {st.get('unit', '')} | "
                         f"{st.get('n', 0)} | {_num(st.get('median'))} | {_num(st.get('p90'))} | {hits} |")
    ratios = [(r["seed"], (r.get("inversion") or {}).get("length_ratio") or {}) for r in runs]
    if any(lr.get("reference") for _, lr in ratios):
        lines += ["", "| seed | inverted vs | first draws: median ratio | kept: median ratio "
                  "| kept: ratio of medians |", "|---|---|---|---|---|"]
        for seed, lr in ratios:
            if lr.get("reference"):
                first, kept = lr.get("first_draws") or {}, lr.get("kept") or {}
                lines.append(f"| {seed} | {lr['reference']} | {_num(first.get('median_ratio'))} | "
                             f"{_num(kept.get('median_ratio'))} | {_num(kept.get('ratio_of_medians'))} |")
    return lines


def render_report(runs: list[dict], size: dict, seconds: float) -> str:
    lines = ["# trace-inversion demo: the toy world", "",
             f"Chained arithmetic mod 10 ({size['n_ops']} operations, left to right); {size['n_train']} target "
             f"problems, {size['n_test']} held-out test problems per seed; tiny Llama students "
             f"({size['layers']} layers, hidden 128) trained from scratch for {size['student_steps']} steps with "
             f"`trl sft`; tiny inverter {size['inverter_steps']} steps; greedy decoding.", "",
             "## Student accuracy on held-out problems", "",
             "| condition | " + " | ".join(f"seed {r['seed']}" for r in runs) + " | mean |",
             "|---|" + "---|" * (len(runs) + 1)]
    for c in DEFAULT_CONDITIONS:
        vals = [r["accuracy"].get(c) for r in runs]
        if all(v is None for v in vals):
            continue
        nums = [v for v in vals if v is not None]
        lines.append(f"| {LABELS[c]} | " + " | ".join("—" if v is None else f"{v:.1%}" for v in vals)
                     + f" | {statistics.fmean(nums):.1%} |")
    for r in runs:
        for c, same in r.get("same_data", {}).items():
            lines.append(f"\nSeed {r['seed']}: {LABELS[c]} has exactly the rows of {LABELS[same]} (verified "
                         "synthesis rejected nothing and resampled nothing), so one student serves both.")
    lines += ["", "## Inversion: filter rates and trace quality", "",
              "| seed | first sample consistent | kept after verified synthesis | rejected | every step right (kept) "
              "| every step right (unfiltered) | ROUGE-L vs target traces | BLEU |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        inv = r["inversion"]
        n = inv["rows_in"]
        st = inv.get("toy_all_steps_correct", {})
        ov = inv.get("overlap_kept", {})
        lines.append(f"| {r['seed']} | {inv['first_sample']['consistent'] / n:.1%} | {inv['kept'] / n:.1%} | "
                     f"{inv['rejected']} | {st.get('kept', 0):.1%} | {st.get('unfiltered', 0):.1%} | "
                     f"{ov.get('rougeL', 0):.1f} | {ov.get('bleu', 0):.1f} |")
    lines += ["", "Inverted traces are in the surrogate's notation (the inverter learned from the surrogate), "
              "so overlap with the target's hidden notation is low even when every step is right.", ""]
    lines += lengths_lines(runs)
    lines += ["", "## Releases", ""]
    for r in runs:
        for stage, rel in r["releases"].items():
            lines.append(f"- seed {r['seed']} {stage}: `{rel['repo']}` @ {rel['version']}")
    lines += ["", f"Total time: {seconds / 60:.1f} min on this machine.", ""]
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = [c for c in DEFAULT_CONDITIONS if any(c in r["accuracy"] for r in runs)]
    means = [100 * statistics.fmean([r["accuracy"][c] for r in runs if c in r["accuracy"]]) for c in conds]
    errs = [100 * (statistics.pstdev([r["accuracy"][c] for r in runs if c in r["accuracy"]]) if len(runs) > 1 else 0)
            for c in conds]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    colors = ["#9e9e9e", "#bdbdbd", "#f4a261", "#8ecae6", "#219ebc", "#2a9d8f"][: len(conds)]
    ax.bar([LABELS[c] for c in conds], means, yerr=errs, color=colors, capsize=4)
    for i, m in enumerate(means):
        ax.text(i, m + 1.5, f"{m:.0f}%", ha="center", fontsize=9)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 110)
    ax.set_title(f"Students trained on each condition (toy world, {len(runs)} seed(s))")
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
