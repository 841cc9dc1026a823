"""The audit's measurements and outputs: per-policy leakage metrics from the stage
folders, the console table, ``leakage.md``, ``leakage.png`` and ``stats.json``.

Everything here works from a stats dict (``policy_metrics`` builds each policy's entry
from its folder; ``render_*`` and ``plot`` take only the dict), so a report can be
re-rendered from ``stats.json`` alone.

Metrics per policy (x100 where a percentage; ``None`` where they cannot be measured):

- ``overlap_first`` / ``overlap_kept``: the paper's overlap of the inverted traces with
  the target's true traces (BLEU, token F1, ROUGE-1/2/L, exact match; the first sample of
  every row / the traces verified synthesis keeps); for the zero point, the surrogate's
  own traces;
- ``all_steps_right_first`` / ``_kept`` (toy world): share of traces whose every step is
  right (``check_steps``);
- ``hidden_values_recovered`` (toy world): of the running values the policy does *not*
  reveal (neither its summary nor the answer), the share the inverted trace (first
  sample) states correctly: what the policy leaks beyond what it shows;
- ``answer_consistent_first``: share of first samples that reach the target's answer;
  ``kept``: share of rows with a verified trace; mean lengths (inverted vs true);
- ``student`` (``--students``): accuracy of a student trained on the inverted traces,
  of one trained on the answers alone, and the gain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

HEADLINE = [  # (key in a policy entry, column title, kind)
    ("overlap_first.rougeL", "ROUGE-L", "score"),
    ("overlap_first.bleu", "BLEU", "score"),
    ("overlap_first.token_f1", "token F1", "score"),
    ("all_steps_right_first", "every step right", "pct"),
    ("hidden_values_recovered", "hidden values recovered", "pct"),
    ("answer_consistent_first", "answer-consistent (1st sample)", "pct"),
    ("kept", "kept (verified)", "pct"),
    ("student.gain", "student gain (pts)", "pts"),
]
PLOTTED = [("overlap_first.rougeL", "ROUGE-L of inverted vs true traces"),
           ("overlap_first.token_f1", "token F1"),
           ("all_steps_right_first", "traces with every step right (%)"),
           ("hidden_values_recovered", "hidden values recovered (%)")]


def get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


# ----------------------------------------------------------------------------- measuring
def _share(flags: list[bool]) -> Optional[float]:
    return round(100 * sum(flags) / len(flags), 2) if flags else None


def toy_trace_scores(rows: list[dict], trace_key: str, revealed: Optional[list[int]]) -> dict:
    """Step checks of ``rows[trace_key]`` against the toy problems: every step right, the
    mean share of right steps, and the hidden values (steps not in ``revealed``) the
    trace states correctly. Empty when the rows are not toy problems."""
    from trace_inversion.toy.world import check_steps, parse_problem, trace_values

    probs = [(parse_problem(r["problem"], r["id"]), r.get(trace_key) or "") for r in rows]
    if not probs or any(p is None for p, _ in probs):
        return {}
    all_right, step_share, hidden_ok = [], [], []
    for p, t in probs:
        c = check_steps(p, t)
        all_right.append(c["all_correct"])
        step_share.append(c["correct"] / max(1, len(p.steps)))
        written, true = trace_values(t), p.values()
        for i in range(1, len(true) + 1):
            if revealed is not None and i not in revealed:
                hidden_ok.append(i <= len(written) and written[i - 1] == true[i - 1])
    return {"all_steps_right": _share(all_right),
            "steps_right": round(100 * sum(step_share) / len(step_share), 2),
            "hidden_values_recovered": _share(hidden_ok) if revealed is not None else None,
            "hidden_values": len(hidden_ok)}


def _overlap(hyps: list[Optional[str]], refs: list[Optional[str]]) -> Optional[dict]:
    from trace_inversion.scoring.metrics import corpus_metrics

    if not refs or not any(refs):
        return None
    agg = corpus_metrics(hyps, refs)[1]
    return {k: agg[k] for k in ("bleu", "token_f1", "rouge1", "rouge2", "rougeL", "exact_match", "len_hyp", "len_ref",
                                "n", "length_unit") if k in agg}


def _example(rows: list[dict], key: str) -> Optional[str]:
    return next((r.get(key) for r in rows if r.get(key)), None)


def attack_metrics(folder: Path, revealed: Optional[list[int]], gt: str = "target_trace") -> dict:
    """One attack policy's measurements from its folder (``target_query`` and ``inversion``)."""
    from trace_inversion.data.io import read_split

    target = read_split(folder / "target_query", "target")
    by_id = {r["id"]: r for r in target}
    inv_stats = json.loads((folder / "inversion" / "stats.json").read_text())
    unfiltered = read_split(folder / "inversion", "unfiltered")
    kept = read_split(folder / "inversion", "inverted")
    n = inv_stats["rows_in"]
    first_rows = [dict(by_id.get(r["id"], {}), first_trace=r.get("first_trace"), id=r["id"], problem=r["problem"])
                  for r in unfiltered]
    # rows without a first sample (a failed call) count as empty traces
    missing = [dict(r, first_trace="") for i, r in by_id.items() if i not in {x["id"] for x in unfiltered}]
    first_rows += missing
    refs_first = [r.get(gt) for r in first_rows]
    summaries = [r.get("target_summary") or "" for r in target]
    out = {
        "rows": n,
        "summary": {"shown": _share([bool(s.strip()) for s in summaries]),
                    "mean_words": round(sum(len(s.split()) for s in summaries) / max(1, len(summaries)), 2),
                    "example": _example(target, "target_summary"), "example_problem": target[0]["problem"] if target
                    else None},
        "overlap_first": _overlap([r.get("first_trace") for r in first_rows], refs_first),
        "overlap_kept": _overlap([r.get("inverted_trace") for r in kept],
                                 [by_id.get(r["id"], {}).get(gt) for r in kept]) if kept else None,
        "answer_consistent_first": round(100 * inv_stats["first_sample"]["consistent"] / max(1, n), 2),
        "kept": round(100 * inv_stats["kept"] / max(1, n), 2),
        "rejected": inv_stats.get("rejected", 0),
        "length_ratio_first": get(inv_stats, "length_ratio.first_draws.median_ratio"),
        "example_trace": _example(first_rows, "first_trace"),
    }
    first_scores = toy_trace_scores(first_rows, "first_trace", revealed)
    kept_scores = toy_trace_scores(kept, "inverted_trace", revealed) if kept else {}
    if first_scores:
        out.update(all_steps_right_first=first_scores["all_steps_right"], steps_right_first=first_scores["steps_right"],
                   hidden_values_recovered=first_scores["hidden_values_recovered"],
                   hidden_values=first_scores["hidden_values"],
                   all_steps_right_kept=kept_scores.get("all_steps_right"),
                   hidden_values_recovered_kept=kept_scores.get("hidden_values_recovered"))
    return out


def prior_metrics(surrogate_folder: Path, target_folder: Path, gt: str = "target_trace") -> dict:
    """The zero point: the surrogate's own traces on the audited problems vs the true traces."""
    from trace_inversion.data.io import read_split

    target = {r["id"]: r for r in read_split(target_folder, "target")}
    traces = {r["id"]: r for r in read_split(surrogate_folder, "traces")}
    rows = [dict(t, surrogate_trace=(traces.get(i) or {}).get("surrogate_trace") or "",
                 surrogate_answer=(traces.get(i) or {}).get("surrogate_answer")) for i, t in target.items()]
    out = {
        "rows": len(rows),
        "summary": {"shown": 0.0, "mean_words": 0.0, "example": None, "example_problem": None},
        "overlap_first": _overlap([r["surrogate_trace"] for r in rows], [r.get(gt) for r in rows]),
        "overlap_kept": None,
        "answer_consistent_first": _answer_agreement(rows),
        "kept": None,
        "example_trace": _example(rows, "surrogate_trace"),
    }
    scores = toy_trace_scores(rows, "surrogate_trace", [])
    if scores:
        out.update(all_steps_right_first=scores["all_steps_right"], steps_right_first=scores["steps_right"],
                   hidden_values_recovered=scores["hidden_values_recovered"], hidden_values=scores["hidden_values"])
    return out


def _answer_agreement(rows: list[dict]) -> Optional[float]:
    """Share of surrogate answers that match the target's (its traces' answer consistency)."""
    from trace_inversion.scoring.answer_matching import answers_match, extract_final_answer

    pairs = [(r.get("surrogate_answer"), r.get("target_answer")) for r in rows if r.get("target_answer")]
    if not pairs:
        return None
    return _share([bool(a) and answers_match(extract_final_answer(t)[0], extract_final_answer(a)[0]) is True
                   for a, t in pairs])


# ----------------------------------------------------------------------------- rendering
def _fmt(v, kind: str) -> str:
    if v is None:
        return "—"
    if kind == "pct":
        return f"{v:.1f}%"
    if kind == "pts":
        return f"{v:+.1f}"
    return f"{v:.1f}"


def _reveals(p: dict) -> str:
    steps = p.get("revealed_steps")
    if steps is None:
        return p.get("description") or ""
    if p.get("kind") == "prior":
        return "nothing"
    return "steps " + ",".join(map(str, steps)) if steps else "nothing"


def render_table(stats: dict) -> str:
    """The leakage table (markdown; also what the console prints)."""
    cols = [(k, t, kind) for k, t, kind in HEADLINE if any(get(p, k) is not None for p in stats["policies"])]
    lines = ["| policy | reveals | " + " | ".join(t for _, t, _ in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for p in stats["policies"]:
        lines.append(f"| {p['name']} | {_reveals(p)} | " + " | ".join(_fmt(get(p, k), kind) for k, _, kind in cols)
                     + " |")
    return "\n".join(lines)


def _md_block(text: Optional[str]) -> str:
    text = text or ""
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}\n{text}\n{fence}"


def render_report(stats: dict) -> str:
    """``leakage.md``: the table, what each policy reveals, the definitions, how to repeat."""
    meta = stats["audit"]
    lines = ["# Summary-policy leakage audit", "",
             f"{meta['setting']}. Per policy the attack pipeline ran once (query the target, build the attacker's "
             "inverter data with a compressor that simulates the policy, "
             + ("train an inverter, " if meta.get("trained_inverter") else "use the given inverter, ")
             + "invert the target's outputs with verified synthesis), and the inverted traces were compared with the "
             "target's true traces. Higher = the policy leaks more of the hidden reasoning.", "",
             "## Leakage per policy", "", render_table(stats), "",
             "![leakage curve](leakage.png)", ""]
    students = [p for p in stats["policies"] if p.get("student")]
    if meta.get("students"):
        lines += ["## Student accuracy (optional, costly)", "",
                  f"{meta['students']}", "",
                  "| policy | inverted-trace student | answer-only student | gain (points) |", "|---|---|---|---|"]
        for p in students:
            s = p["student"]
            lines.append(f"| {p['name']} | {_fmt(s.get('inverted'), 'pct')} | {_fmt(s.get('answer_only'), 'pct')} | "
                         f"{_fmt(s.get('gain'), 'pts')} |")
        lines.append("")
    else:
        lines += ["Student accuracy was not measured (`--students` trains an answer-only and an inverted-trace "
                  "student per policy: costly).", ""]
    lines += ["## What each policy reveals", ""]
    for p in stats["policies"]:
        desc = p.get("description") or ""
        lines += [f"### {p['name']}", "", f"{desc[:1].upper() + desc[1:]}."]
        if p.get("revealed_steps") is not None and p.get("kind") != "prior":
            lines.append(f"Reveals the running values of steps {p['revealed_steps']} (the last via the answer).")
        s = p.get("summary") or {}
        if p.get("kind") != "prior":
            lines.append(f"Rows with a summary: {_fmt(s.get('shown'), 'pct')}; mean summary length "
                         f"{s.get('mean_words', 0):g} words.")
            if s.get("example"):
                lines += ["", f"Example summary for `{s.get('example_problem')}`:", "", _md_block(s["example"])]
        ov = p.get("overlap_first") or {}
        if ov:
            lines.append(f"\nMean lengths (word tokens): inverted {ov.get('len_hyp', 0):g}, "
                         f"true {ov.get('len_ref', 0):g}"
                         + (f"; median length ratio of first samples {p['length_ratio_first']:g}"
                            if p.get("length_ratio_first") is not None else "") + ".")
        if p.get("example_trace"):
            lines += ["", "Example " + ("surrogate" if p.get("kind") == "prior" else "inverted") + " trace:", "",
                      _md_block(p["example_trace"])]
        if p.get("kind") != "prior" and p.get("overlap_kept"):
            ok = p["overlap_kept"]
            lines.append(f"\nKept (verified) traces: ROUGE-L {ok['rougeL']:.1f}, BLEU {ok['bleu']:.1f}, every step "
                         f"right {_fmt(p.get('all_steps_right_kept'), 'pct')}.")
        lines += [f"\nFolder: `{p.get('folder')}`.", ""]
    lines += ["## Definitions", "",
              "- **ROUGE-L, BLEU, token F1** (x100): the paper's overlap of the first inverted sample of every row "
              "with the target's true trace (`scoring/metrics.py`; a row without a sample scores 0). "
              "In the toy world inverted traces are in the surrogate's notation (`6+5->1` where the target writes "
              "`6+5=1`): BLEU and token F1 see the notation and stay low even when every step is right; "
              "ROUGE-L's tokenizer keeps only letters and digits, so such a trace scores 100.",
              "- **every step right**: share of first samples whose every step is right (toy world, `check_steps`).",
              "- **hidden values recovered**: of the running values the policy does not show (neither its summary nor "
              "the answer), the share the first sample states correctly: leakage beyond what is shown.",
              "- **answer-consistent**: share of first samples that reach the target's answer (zero point: the "
              "surrogate's answer agrees with the target's); **kept**: share of rows with a verified trace.",
              "- **none** is the zero point: no summary and no answer, the attacker's own surrogate traces on the "
              "same problems (nothing from the target).", "",
              "## How to repeat", "", "```bash", meta["command"], "```", "",
              "A rerun of the same command reuses every finished stage and trained model (no model call, no "
              "training) and re-renders this report.", "",
              _time_line(meta), ""]
    return "\n".join(lines)


def _time_line(meta: dict) -> str:
    work = meta.get("work_seconds", meta["seconds"])
    line = f"Time: {work / 60:.1f} min on this machine"
    if meta.get("all_reused"):
        line += f" (the run that computed it; this rerun reused everything and took {meta['seconds']:.0f} s)"
    return line + "."


def plot(stats: dict, path: Path) -> None:
    """``leakage.png``: each leakage metric per policy, policies in order of detail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols = stats["policies"]
    names = [p["name"] for p in pols]
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    xs = list(range(len(pols)))
    markers = ["o", "s", "^", "D", "v"]
    drawn = 0
    for (key, label), mk in zip(PLOTTED, markers):
        ys = [get(p, key) for p in pols]
        if all(y is None for y in ys):
            continue
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=mk, label=label)
        drawn += 1
    gains = [get(p, "student.gain") for p in pols]
    if any(g is not None for g in gains):
        pts = [(x, g) for x, g in zip(xs, gains) if g is not None]
        ax.plot([x for x, _ in pts], [g for _, g in pts], marker="*", linestyle="--", color="black",
                label="student gain over answer-only (points)")
        drawn += 1
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{n}\n({_reveals(p)})" if p.get("revealed_steps") is not None else n
                        for n, p in zip(names, pols)], fontsize=8)
    ax.set_xlabel("summary policy (left: reveals least)")
    ax.set_ylabel("score (0-100)")
    ax.set_ylim(min(0, min((g for g in gains if g is not None), default=0)) - 5, 105)
    ax.grid(alpha=0.3)
    ax.set_title(f"Leakage per summary policy ({stats['audit'].get('world', 'audit')})", fontsize=10)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(stats: dict, folder: Path) -> dict[str, Path]:
    """``leakage.md``, ``leakage.png`` and ``stats.json`` (card-ready: one entry per policy
    with flat metrics, plus the table as markdown) in ``folder``."""
    from trace_inversion.data.io import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"report": folder / "leakage.md", "plot": folder / "leakage.png", "stats": folder / "stats.json"}
    plot(stats, paths["plot"])
    paths["report"].write_text(render_report(stats))
    write_json(dict(stats, table_markdown=render_table(stats)), paths["stats"])
    return paths
