"""Render a comparison as report.json, report.md (+ figures/*.png) and a self-contained
report.html (figures embedded as base64), all from the dict ``comparison.build_report``
makes. ``render`` returns the files' bytes; ``runs/compare.py`` writes them.
"""

from __future__ import annotations

import base64
import html
import json

from llmclf.evaluation.plots import FIGURES
from llmclf.evaluation.tables import (
    Table,
    cost_table,
    mark_best,
    pairs_table,
    per_class_table,
    quality_table,
    selective_table,
    summary_lines,
)

# ---------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------


def _markdown_table(table: Table) -> str:
    marked = mark_best(table.rows, table.best, lambda cell: f"**{cell}**")
    escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731
    align = ["---" if i in table.text else "--:" for i in range(len(table.header))]
    lines = ["| " + " | ".join(escape(h) for h in table.header) + " |"]
    lines.append("|" + "|".join(align) + "|")
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in marked]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    parts = [
        "# llmclf comparison report",
        "",
        *[f"- {line}" for line in summary_lines(report)],
        "",
        _meta_text(report),
        "",
        "## Runs",
        "",
        _markdown_table(quality_table(report)),
        "",
        "## Selective prediction",
        "",
        _markdown_table(selective_table(report)),
        "",
        "## Pairs",
        "",
        _markdown_table(pairs_table(report)),
        "",
        "## Cost",
        "",
        _markdown_table(cost_table(report)),
        "",
        "## Per-class F1",
        "",
        _markdown_table(per_class_table(report)),
        "",
        "## Figures",
        "",
    ]
    for key, (title, _) in FIGURES.items():
        parts += [f"### {title}", "", f"![{title}](figures/{key}.png)", ""]
    parts += ["## How to read this report", "", *[f"- {line}" for line in HOW_TO_READ], ""]
    return "\n".join(parts)


def _meta_text(report: dict) -> str:
    s = report["settings"]
    kind = "multi-label" if report["multi_label"] else "single-label"
    return (
        f"{report['n']} test examples, {len(report['classes'])} classes ({kind}); "
        f"test set {report['test_set_hash'][:12]}; bootstrap {s['bootstrap_resamples']:,} "
        f"resamples (seed {s['bootstrap_seed']}); exact McNemar"
        + (", Holm-adjusted across pairs" if s["p_adjustment"] == "holm" else "")
        + f"; ECE with {s['ece_bins']} equal-width bins; llmclf {report['llmclf_version']}, "
        f"{report['created']}."
    )


HOW_TO_READ = [
    "**McNemar p**: of the test examples exactly one of the two runs gets right, how likely "
    "a split at least this uneven is if both runs were equally good (exact binomial test). "
    "Small p (< 0.05): the runs really differ in accuracy on data like this.",
    "**Δ F1 interval**: B's F1 minus A's, with a paired-bootstrap confidence interval "
    "(test examples resampled with replacement, the same rows for both runs). An interval "
    "that excludes 0 says the difference is not luck of the test sample.",
    "**Verdict** needs both: a significant McNemar p (Holm-adjusted when several pairs are "
    "compared) and an F1 interval on one side of 0. The summary names a best run only when "
    "its verdict against every other run says so; otherwise it says which runs the test set "
    "cannot tell apart.",
    "**Smallest detectable Δ** (minimum detectable effect): the difference in F1 this test "
    "set would find 80 % of the time at the report's confidence, (z₁₋α/₂ + z₀.₈) × the "
    'bootstrap\'s standard error of Δ. "No detectable difference (could detect ≥ 0.03)" '
    "means a true gap under about 0.03 could easily hide in this test set: compare on more "
    "test examples to settle a smaller one.",
    "**Selective prediction**: a run that answers only its most confident decisions. "
    "**AURC** is the area under the risk–coverage curve (the error rate among the answered, "
    "averaged over every coverage; lower is better, 0 when every error is less confident than "
    "every right answer). **Coverage at precision 0.95**: the largest share of decisions "
    "whose answers are 95 % right on this test set. For a run with `--abstain-below`: "
    "coverage, selective accuracy and F1 at its threshold.",
    "**ECE** (expected calibration error): the average gap between confidence and accuracy "
    "over 15 equal-width confidence bins; 0 means the probabilities can be taken at face "
    "value. **Brier**: mean squared error of the probabilities (lower is better).",
    "**T / after T**: temperature scaling fitted on the validation split by `llmclf "
    "calibrate`; it changes probabilities, never the predicted class.",
    "**Cost** columns come from each run's training: trainable parameters, training time, "
    "peak resident memory, and inference speed on the test split.",
]


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 1200px; padding: 0 1.5rem; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
.meta { color: #59636e; font-size: .88rem; }
.summary { background: #f6f8fa; border-left: 4px solid #0072B2; padding: .6rem 1rem; margin: 1rem 0; }
.summary p { margin: .25rem 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .86rem; margin: .5rem 0; }
th, td { border: 1px solid #d0d7de; padding: .3rem .55rem; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; font-weight: 600; }
.text { text-align: left; }
td.wrap { white-space: normal; min-width: 11rem; }
td.best { font-weight: 700; background: #e6f4ea; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; border: 1px solid #eaeef2; }
figcaption { color: #59636e; font-size: .85rem; margin-top: .3rem; }
ul.read li { margin: .3rem 0; }
"""

FIGURE_CAPTIONS = {
    "confusion": "Rows: true class, columns: predicted class; colour = share of the row; "
    "an unparsed generated answer is in no column, so its row sums to less. Multi-label: per label, counts of true positives and false negatives (coloured as a "
    "share of the label's positives) and of false positives and true negatives (as a share "
    "of its negatives).",
    "reliability": "Bars: accuracy (multi-label: frequency of the label) in each of 15 "
    "confidence bins before calibration; black line: after temperature scaling. A calibrated "
    "model follows the dashed diagonal. Below: how many forecasts fall in each bin (log "
    "scale); a bin with a handful of examples says little.",
    "per_class_f1": "F1 of each class for every run.",
    "risk_coverage": "Each run's decisions sorted by confidence, most confident first: at "
    "coverage c, the error rate of the top c share (ties share their errors). Lower and flatter "
    "is better; the legend gives each curve's area (AURC). A dot marks the operating point of "
    "a run's abstain-below threshold. Multi-label: one decision per (text, label).",
    "forest": "Each pair's difference in F1 (second run minus first) with its paired-bootstrap "
    "interval; intervals that cross the dashed zero line show no reliable difference. The grey "
    "band spans ± the pair's smallest detectable difference: a true gap inside it could pass "
    "unseen on this test set.",
}


def _html_table(table: Table) -> str:
    marked = mark_best(table.rows, table.best, lambda cell: ("BEST", cell))

    def attributes(index: int, best: bool = False) -> str:
        classes = [
            name
            for name, on in (
                ("text", index in table.text),
                ("wrap", index in table.wrap),
                ("best", best),
            )
            if on
        ]
        return f" class='{' '.join(classes)}'" if classes else ""

    out = ["<div class='scroll'><table><thead><tr>"]
    out += [f"<th{attributes(i)}>{html.escape(h)}</th>" for i, h in enumerate(table.header)]
    out.append("</tr></thead><tbody>")
    for row in marked:
        out.append("<tr>")
        for index, cell in enumerate(row):
            best = isinstance(cell, tuple)
            text = cell[1] if best else cell
            out.append(f"<td{attributes(index, best)}>{html.escape(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _inline(markup: str) -> str:
    """``**bold**`` and ``code`` of the how-to-read lines, for HTML."""
    text = html.escape(markup)
    while "**" in text:
        text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
    while "`" in text:
        text = text.replace("`", "<code>", 1).replace("`", "</code>", 1)
    return text


def html_page(report: dict, figures: dict[str, bytes]) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>llmclf comparison report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>llmclf comparison report</h1>",
        f"<p class='meta'>{html.escape(_meta_text(report))}</p>",
        "<div class='summary'>",
        *[f"<p>{html.escape(line)}</p>" for line in summary_lines(report)],
        "</div>",
        "<h2>Runs</h2>",
        _html_table(quality_table(report)),
        "<h2>Pairs</h2>",
        _html_table(pairs_table(report)),
        "<h2>Cost</h2>",
        _html_table(cost_table(report)),
    ]
    for key, (title, _) in FIGURES.items():
        if key == "per_class_f1":
            parts += ["<h2>Per-class F1</h2>", _html_table(per_class_table(report))]
        elif key == "risk_coverage":
            parts += ["<h2>Selective prediction</h2>", _html_table(selective_table(report))]
        else:
            parts.append(f"<h2>{html.escape(title)}</h2>")
        encoded = base64.b64encode(figures[key]).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{html.escape(FIGURE_CAPTIONS[key])}</figcaption></figure>"
        )
    parts += ["<h2>How to read this report</h2>", "<ul class='read'>"]
    parts += [f"<li>{_inline(line)}</li>" for line in HOW_TO_READ]
    parts += ["</ul></body></html>"]
    return "\n".join(parts)


def render(report: dict) -> dict[str, bytes]:
    """Every file of the report, by name: report.json, report.md, report.html and
    figures/NAME.png (the HTML embeds the figures)."""
    figures = {key: draw(report) for key, (_, draw) in FIGURES.items()}
    files = {f"figures/{key}.png": png for key, png in figures.items()}
    files["report.json"] = (json.dumps(report, indent=2) + "\n").encode()
    files["report.md"] = markdown(report).encode()
    files["report.html"] = html_page(report, figures).encode()
    return files
