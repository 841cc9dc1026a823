"""The demo's report: the world (what the target reveals, where the surrogate errs),
accuracy per condition (per seed, mean, sd), a verdict per claim of the paper, the
step-correctness of every trace source, the inversions' filter counts, the lengths of
every generation per seed, the releases (``report.md``), and the bar chart
(``results.png``)."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Optional

from trace_inversion.data.io import read_split
from trace_inversion.pipelines import STAGES

# The demo's student conditions, in report order: the paper's, plus the step-verified
# inversion (a second invert run with invert.verifiers [answer, steps]).
DEMO_CONDITIONS = ["answer_only", "summary_answer", "surrogate_traces", "inverted_unfiltered", "inverted_verified",
                   "inverted_step_verified", "target_traces"]
LABELS = {"answer_only": "answer only", "summary_answer": "summary + answer", "surrogate_traces": "surrogate traces",
          "inverted_unfiltered": "inverted (unfiltered)", "inverted_verified": "inverted (answer-verified)",
          "inverted_step_verified": "inverted (step-verified)", "target_traces": "target traces (oracle)"}
# The paper's claims the demo tests: (name, better condition, worse condition, strict).
# The paper's inverted traces are unfiltered (its code verifies nothing).
CLAIMS = [("inverted > summary + answer", "inverted_unfiltered", "summary_answer", True),
          ("inverted > surrogate traces", "inverted_unfiltered", "surrogate_traces", True),
          ("answer-verified >= unfiltered", "inverted_verified", "inverted_unfiltered", False),
          ("step-verified >= unfiltered", "inverted_step_verified", "inverted_unfiltered", False)]


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


def _mean_sd(vals: list[float]) -> tuple[float, Optional[float]]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def claim_verdicts(runs: list[dict], n_test: int) -> list[dict]:
    """One verdict per claim of the paper (``CLAIMS``): the mean per-seed difference in
    accuracy against the noise, the standard deviation of the per-seed differences (with
    one seed: the binomial standard error of the difference on ``n_test`` problems). A
    difference no larger than the noise is "within noise"; else "supported" when it goes
    the claim's way, "not supported" when it goes the other way."""
    out = []
    for name, a, b, strict in CLAIMS:
        pairs = [(r["accuracy"][a], r["accuracy"][b]) for r in runs if a in r["accuracy"] and b in r["accuracy"]]
        if not pairs:
            out.append({"claim": name, "verdict": "not measured", "seeds": 0})
            continue
        diffs = [x - y for x, y in pairs]
        mean = statistics.fmean(diffs)
        if len(diffs) > 1:
            noise, of = statistics.stdev(diffs), f"sd of the per-seed differences ({len(diffs)} seeds)"
        else:
            x, y = pairs[0]
            noise = math.sqrt((x * (1 - x) + y * (1 - y)) / max(1, n_test))
            of = f"binomial standard error on {n_test} test problems (one seed: no spread; run --seeds 3)"
        verdict = "within noise" if abs(mean) <= noise else ("supported" if mean > 0 else "not supported")
        out.append({"claim": name, "better": a, "worse": b, "verdict": verdict, "mean_difference": round(mean, 4),
                    "noise": round(noise, 4), "noise_is": of, "per_seed": [round(d, 4) for d in diffs],
                    "seeds": len(diffs)})
    return out


def world_lines(runs: list[dict]) -> list[str]:
    """What the world's target reveals and where its surrogate errs (the first seed's world)."""
    w = (runs[0].get("world") if runs else None) or {}
    if not w:
        return []
    from trace_inversion.config import ToyWorldConfig
    from trace_inversion.toy.world import ToyWorld

    tw = ToyWorld.from_config(ToyWorldConfig.model_validate(w))
    shown, comp = tw.revealed_steps(), tw.revealed_steps(compressor=True)
    n = tw.n_ops
    errs = f"steps {tw.surrogate_reliable_steps + 1}-{n}" if tw.surrogate_reliable_steps < n else "none"
    hidden = [i for i in range(1, n) if i not in shown]
    return ["## The world", "",
            "| | steps |", "|---|---|",
            f"| the target's summary reveals | {', '.join(map(str, shown)) or 'none'} (style '{tw.summary_style}') |",
            f"| the target's answer reveals | {n} |",
            f"| hidden from the attacker | {', '.join(map(str, hidden)) or 'none'} |",
            f"| the surrogate can err on ({tw.surrogate_errors}, rate {tw.surrogate_error_rate:g}) | {errs} |",
            f"| the attacker's compressor reveals | {', '.join(map(str, comp)) or 'none'} (style "
            f"'{tw.compressor_style or tw.summary_style}', each value left out with probability "
            f"{tw.compressor_drop:g}) |", ""]


def batch_phrase(size: dict, key: str) -> str:
    """' of batch N' where the size names the batch (absent: the recipe's is used), for the
    demo's and the audit's reports."""
    return f" of batch {size[key]}" if size.get(key) else ""


def render_report(runs: list[dict], size: dict, seconds: float) -> str:
    conds = [c for c in DEMO_CONDITIONS if any(c in r["accuracy"] for r in runs)]
    lines = ["# trace-inversion demo: the toy world", "",
             f"Chained arithmetic mod 10 ({size['n_ops']} operations, left to right); {size['n_train']} target "
             f"problems, {size['n_test']} held-out test problems per seed; tiny Llama students "
             f"({size['layers']} layers, hidden 128) trained from scratch for {size['student_steps']} steps"
             f"{batch_phrase(size, 'student_batch')} with `trl sft`, every condition on the same problems (row-matched); "
             f"tiny inverter {size['inverter_steps']} steps{batch_phrase(size, 'inverter_batch')}; greedy decoding for "
             "evaluation.", ""]
    lines += world_lines(runs)
    lines += ["## Student accuracy on held-out problems", "",
              "| condition | " + " | ".join(f"seed {r['seed']}" for r in runs) + " | mean | sd |",
              "|---|" + "---|" * (len(runs) + 2)]
    for c in conds:
        vals = [r["accuracy"].get(c) for r in runs]
        mean, sd = _mean_sd([v for v in vals if v is not None])
        lines.append(f"| {LABELS[c]} | " + " | ".join("—" if v is None else f"{v:.1%}" for v in vals)
                     + f" | {mean:.1%} | {'—' if sd is None else f'{100 * sd:.1f}'} |")
    lines.append("")
    lines.append("Rows per seed (row-matched: each condition's rows that every condition has): "
                 + "; ".join(f"seed {r['seed']}: {r.get('matched_rows')}" for r in runs) + ".")
    for r in runs:
        for c, same in r.get("same_data", {}).items():
            lines.append(f"\nSeed {r['seed']}: {LABELS[c]} has exactly the rows of {LABELS[same]}, so one student "
                         "serves both.")
    lines += ["", "## The paper's claims, as they fell", "", "| claim | verdict | mean difference (points) | noise "
              "(points) | per seed |", "|---|---|---|---|---|"]
    verdicts = claim_verdicts(runs, size["n_test"])
    for v in verdicts:
        if v["verdict"] == "not measured":
            lines.append(f"| {v['claim']} | not measured | — | — | — |")
            continue
        lines.append(f"| {v['claim']} | **{v['verdict']}** | {100 * v['mean_difference']:+.1f} | "
                     f"{100 * v['noise']:.1f} | " + ", ".join(f"{100 * d:+.1f}" for d in v["per_seed"]) + " |")
    if verdicts and verdicts[0].get("noise_is"):
        lines += ["", f"Noise: the {verdicts[0]['noise_is']}; a difference no larger than it is \"within noise\"."]
    lines += ["", "## Traces: how many have every step right", "",
              "The toy world's exact step checker on each source of traces (all rows of each source).", "",
              "| source | " + " | ".join(f"seed {r['seed']}" for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for c in ["surrogate_traces", "inverted_unfiltered", "inverted_verified", "inverted_step_verified", "target_traces"]:
        vals = [(r.get("step_correct") or {}).get(c) for r in runs]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {LABELS[c].replace('inverted (unfiltered)', 'inverted, first samples')} | "
                     + " | ".join("—" if v is None else f"{v:.1%}" for v in vals) + " |")
    lines += ["", "## Verified synthesis: filter counts", "",
              "| seed | verifiers | rows | first sample passes | kept | rejected | unverifiable | kept after resampling "
              "| ROUGE-L (kept) vs target traces |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for key, label in (("inversion", "answer"), ("inversion_steps", "answer + steps")):
            inv = r.get(key)
            if not inv:
                continue
            first = inv.get("first_sample_all_verifiers") or {}
            resampled = sum(n for k, n in (inv.get("attempts_of_kept_rows") or {}).items() if k != "1")
            ov = inv.get("overlap_kept") or {}
            lines.append(f"| {r['seed']} | {label} | {inv['rows_in']} | {first.get('verified', 0)} | {inv['kept']} | "
                         f"{inv['rejected']} | {inv.get('unverifiable', 0)} | {resampled} | "
                         f"{ov.get('rougeL', 0):.1f} |")
    lines += ["", "\"first sample passes\": first samples that pass every verifier of that run; \"kept after "
              "resampling\": kept rows whose first sample failed. ROUGE-L compares word tokens (the paper's "
              "tokenizer), which drop the notations' `=` and `->`: a trace with every step right scores 100.", ""]
    lines += lengths_lines(runs)
    lines += ["", "## Releases", ""]
    for r in runs:
        for stage, rel in r["releases"].items():
            lines.append(f"- seed {r['seed']} {stage}: `{rel['repo']}` @ {rel['version']}")
    per_seed = ", ".join(f"{r.get('seconds', 0) / 60:.1f}" for r in runs)
    lines += ["", f"Total time: {seconds / 60:.1f} min on this machine ({per_seed} min per seed).", ""]
    for r in runs:
        if r.get("reused"):
            lines.append(f"Seed {r['seed']} reused finished work ({', '.join(r['reused'])}): its time is this "
                         "run's, not a run from scratch.")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = [c for c in DEMO_CONDITIONS if any(c in r["accuracy"] for r in runs)]
    means = [100 * statistics.fmean([r["accuracy"][c] for r in runs if c in r["accuracy"]]) for c in conds]
    errs = [100 * (statistics.stdev([r["accuracy"][c] for r in runs if c in r["accuracy"]]) if len(runs) > 1 else 0)
            for c in conds]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    palette = {"answer_only": "#9e9e9e", "summary_answer": "#bdbdbd", "surrogate_traces": "#f4a261",
               "inverted_unfiltered": "#8ecae6", "inverted_verified": "#219ebc", "inverted_step_verified": "#126782",
               "target_traces": "#2a9d8f"}
    colors = [palette[c] for c in conds]
    ax.bar([LABELS[c] for c in conds], means, yerr=errs, color=colors, capsize=4)
    for i, m in enumerate(means):
        ax.text(i, m + 1.5, f"{m:.0f}%", ha="center", fontsize=9)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 110)
    ax.set_title(f"Students trained on each condition, row-matched (toy world, {len(runs)} seed(s); "
                 "bars: mean, whiskers: sd)")
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
