"""EXPERIMENTS.md and its figures, from the decided claims: nothing here is typed by
hand; every number comes from the records (``results.py``) through ``claims.py``."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt

from benchmarks.paper_study.claims import (
    NOT_RUN,
    RULES,
    Claim,
    Contrast,
    Datasets,
    primary_f1,
    primary_name,
    seed_of,
    sweep_runs,
    trainable,
)
from llmclf.evaluation.plots import colour, to_png

FIGURES = "figures"
SETTINGS = ("pooling", "verbalizer", "lora_r", "target_modules", "predict_mode")


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda cell: str(cell).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]


def settings_of(record: dict) -> str:
    config = record["config"]
    parts = []
    for key in SETTINGS:
        if key in config and config[key] is not None:
            value = config[key]
            value = "+".join(value) if isinstance(value, list) else value
            parts.append(f"{key}={value}")
    if record["kind"] != "train":
        parts.insert(0, record["kind"])
    return ", ".join(parts)


def scope(runs: list[dict]) -> str:
    """The data, model and budget a verdict was reached on."""
    if not runs:
        return ""
    data = sorted({r["data"] for r in runs})
    models = sorted({str(r["config"].get("model", "")).rsplit("/", 1)[-1] for r in runs})
    limits = sorted({r["config"].get("train_limit") or "all" for r in runs}, key=str)
    epochs = sorted({r["config"].get("epochs") for r in runs if r["kind"] == "train"}, key=str)
    seeds = sorted({seed_of(r) for r in runs if seed_of(r) is not None})
    budget = max(trainable(r) for r in runs)
    return (
        f"{', '.join(data)}; {', '.join(m for m in models if m)}; "
        f"{'/'.join(str(v) for v in limits)} training texts × {'/'.join(str(e) for e in epochs)} "
        f"epochs; seeds {', '.join(str(s) for s in seeds)}; up to {budget:,} trainable parameters"
    )


def runs_table(runs: list[dict]) -> list[str]:
    rows = []
    for r in runs:
        m = r["metrics"]
        rows.append(
            [
                r["name"],
                r["method"],
                settings_of(r),
                str(seed_of(r)),
                f"{primary_name(r)} {primary_f1(r):.4f}",
                f"{trainable(r):,}",
                _num(m.get("ece")),
                _num(r["temperature"], 2),
                _num(m.get("eval_examples_per_s"), 1),
                _num(m.get("wall_seconds"), 1),
            ]
        )
    header = ["run", "method", "settings", "seed", "test F1", "trainable", "ECE", "T"]
    return _table(header + ["test ex/s", "wall s"], rows)


def contrasts_table(contrasts: list[Contrast]) -> list[str]:
    rows = []
    for c in contrasts:
        if not c.ran:
            rows.append([c.label, "0", "–", "–", "–", c.rule, NOT_RUN])
            continue
        raw = ", ".join(_p(p["mcnemar_p"]) for p in c.pairs)
        adjusted = ", ".join(_p(p["mcnemar_p_adjusted"]) for p in c.pairs)
        rows.append(
            [
                c.label,
                str(len(c.pairs)),
                f"{c.delta:+.4f}",
                f"[{c.low:+.4f}, {c.high:+.4f}] ({c.confidence:.1%})",
                f"{raw} → {adjusted}",
                c.rule,
                c.verdict,
            ]
        )
    header = ["comparison (B − A)", "seed pairs", "Δ", "interval", "McNemar p → Holm"]
    return _table(header + ["rule", "verdict"], rows)


def sweep_figure(records: list[dict], ds: Datasets) -> bytes | None:
    """The LoRA-budget figure as PNG bytes (None without sweep runs)."""
    figure = sweep_plot(records, ds)
    return None if figure is None else to_png(figure)


def sweep_plot(records: list[dict], ds: Datasets):
    """Test F1 against trainable parameters (log x): head and instruct over the LoRA
    sweep, with the baselines as dotted horizontal lines, each named in the legend."""
    methods = {m: sweep_runs(records, ds.single, m) for m in ("head", "instruct")}
    if not any(methods.values()):
        return None
    figure, ax = plt.subplots(figsize=(7.5, 4.6))
    for index, (method, runs) in enumerate(methods.items()):
        for targets, marker in (("all-linear", "o"), ("attention", "s")):
            chosen = [
                r
                for r in runs
                if (r["config"].get("target_modules") == ["all-linear"])
                == (targets == "all-linear")
            ]
            chosen.sort(key=trainable)
            if chosen:
                ax.plot(
                    [trainable(r) for r in chosen],
                    [primary_f1(r) for r in chosen],
                    marker=marker,
                    color=colour(index),
                    linestyle="-" if targets == "all-linear" else "--",
                    label=f"{method}, {targets}",
                )
                for r in chosen:
                    ax.annotate(
                        f"r={r['config'].get('lora_r')}",
                        (trainable(r), primary_f1(r)),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                    )
    baselines = [
        (f"{r['method']}" + (" zero-shot" if r["kind"] == "zero-shot" else ""), primary_f1(r))
        for r in records
        if r["data"] == ds.single
        and (r["method"] in ("encoder", "tfidf") or r["kind"] == "zero-shot")
        and r["kind"] != "distill"
        and seed_of(r) in (42, None)
    ]
    for index, (name, value) in enumerate(sorted(set(baselines))):
        ax.axhline(value, color=colour(index + 2), linestyle=":", linewidth=1, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"test {primary_name(next(r for rs in methods.values() for r in rs))}")
    ax.set_title(f"LoRA budget sweep on {ds.single} (seed 42)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return figure


def forest_figure(claims: list[Claim]) -> bytes | None:
    """Every comparison's seed-averaged ΔF1 with its (claim-adjusted) interval."""
    rows = [(claim.number, c) for claim in claims for c in claim.contrasts if c.ran]
    if not rows:
        return None
    figure, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    for y, (number, c) in enumerate(reversed(rows)):
        ax.errorbar(
            c.delta,
            y,
            xerr=[[c.delta - c.low], [c.high - c.delta]],
            fmt="o",
            color=colour(number - 1),
            capsize=3,
        )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{n}: {c.label}" for n, c in reversed(rows)], fontsize=7)
    ax.axvline(0, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("Δ F1 (B − A), interval at 1 − 0.05/m within each claim")
    ax.grid(True, axis="x", alpha=0.3)
    return to_png(figure)


def markdown(claims: list[Claim], timing: dict, figures: dict[str, str]) -> str:
    lines = [
        "# The paper's claims, tested",
        "",
        "<!-- GENERATED by benchmarks/study.py from benchmarks/results/study/: do not edit; "
        "`make study-report` re-renders it, `make study` re-runs the grids first. -->",
        "",
        "Each claim of arXiv 2512.12677 is tested on llmclf's offline data sets with the "
        "grids in `examples/study/` (`llmclf experiment`), at a CPU budget; each verdict says "
        "for which data, model and budget it was reached. A verdict is *holds here*, *does "
        "not hold here* or *not decidable at this budget*; *not run yet* means a grid it "
        "needs has no results.",
        "",
        "## Verdicts",
        "",
        *_table(
            ["claim", "the paper says", "verdict"],
            [[str(c.number), c.statement, f"*{c.verdict}*"] for c in claims],
        ),
        "",
        "## Verdict rules",
        "",
        *[f"- {rule}" for rule in RULES],
        "",
    ]
    for claim in claims:
        lines += claim_section(claim, figures)
    lines += cost_section(timing)
    return "\n".join(lines) + "\n"


def claim_section(claim: Claim, figures: dict[str, str]) -> list[str]:
    runs = claim.runs
    lines = [
        f"## Claim {claim.number}: {claim.statement}",
        "",
        f"Grids: {', '.join(f'`examples/study/{g}.yaml`' for g in claim.grids)}.",
        "",
    ]
    if claim.verdict == NOT_RUN:
        return lines + ["**Verdict: *not run yet*** — run the grids above (`make study`).", ""]
    lines += [f"**Verdict: *{claim.verdict}*** ({claim.combine}) — {scope(runs)}.", ""]
    lines += _table(
        ["part", "verdict", "rule", "note"],
        [[p.title, f"*{p.verdict}*", p.rule, p.note] for p in claim.parts],
    )
    if claim.contrasts:
        lines += ["", *contrasts_table(claim.contrasts)]
    if claim.calibration is not None and claim.calibration.runs:
        check = claim.calibration
        lines += [
            "",
            f"Seed-averaged test ECE of {len(check.runs)} head run(s): {check.ece_before:.4f} at "
            f"T = 1, interval [{check.before_interval[0]:.4f}, {check.before_interval[1]:.4f}]; "
            f"{check.ece_after:.4f} after temperature scaling (T = "
            f"{', '.join(f'{t:.2f}' for t in check.temperatures)}), gain interval "
            f"[{check.gain_interval[0]:+.4f}, {check.gain_interval[1]:+.4f}] "
            f"({check.confidence:.1%} intervals). The binned ECE of a resample is biased "
            "upwards (a resample's bins hold fewer distinct rows), so its percentile interval "
            "can sit above the point estimate: against an upper bound such as 0.15 that errs "
            "on the cautious side.",
        ]
    for key in {1: ["lora-budget"], 2: ["lora-budget"]}.get(claim.number, []):
        if key in figures:
            lines += ["", f"![{key}]({figures[key]})"]
    if runs:
        lines += ["", *runs_table(runs)]
    return lines + [""]


def cost_section(timing: dict) -> list[str]:
    lines = ["## Cost", ""]
    grids = timing.get("grids", {})
    if not grids:
        return lines + ["No grid has run yet.", ""]
    rows = [
        [
            name,
            str(g.get("cells", "–")),
            str(g.get("finished", "–")),
            _num(g.get("cell_wall_seconds", 0) / 60, 1),
            _num(g.get("wall_seconds", 0) / 60, 1),
            g.get("status", ""),
        ]
        for name, g in grids.items()
    ]
    lines += _table(
        ["grid / step", "cells", "finished", "cells' wall min", "last invocation min", "status"],
        rows,
    )
    lines += [
        "",
        f"Total wall time of the last `make study`: {timing.get('total_seconds', 0) / 60:.1f} "
        f"min ({timing.get('finished', '')}); cells' wall minutes add each finished cell's "
        "own `wall_seconds` (data and model loading, training, testing), whichever "
        "invocation trained it. Machine: " + timing.get("machine", "unknown") + ".",
        "",
    ]
    return lines


def write_report(
    claims: list[Claim],
    records: list[dict],
    timing: dict,
    ds: Datasets,
    results: Path,
    report: Path,
) -> Path:
    """EXPERIMENTS.md at ``report`` and its figures under ``results/figures`` (linked
    relative to the report)."""
    folder = results / FIGURES
    figures = {}
    for key, png in (
        ("lora-budget", sweep_figure(records, ds)),
        ("contrasts", forest_figure(claims)),
    ):
        if png is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{key}.png").write_bytes(png)
            figures[key] = os.path.relpath(folder / f"{key}.png", report.parent)
    text = markdown(claims, timing, figures)
    if "contrasts" in figures:
        text += f"\n## Every comparison\n\n![contrasts]({figures['contrasts']})\n"
    report.write_text(text, encoding="utf-8")
    return report
