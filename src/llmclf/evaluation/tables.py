"""The comparison report's tables: the numbers of ``compare.build_report`` as formatted
rows, shared by the Markdown and HTML renderings (``report.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------------------------------
# Number formatting
# ---------------------------------------------------------------------------------------


def _num(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _params(value) -> str:
    if value is None:
        return "—"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    return f"{value / 1e3:.1f} k" if value >= 1e3 else str(int(value))


def _seconds(value) -> str:
    if value is None:
        return "—"
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.0f} s"


def _memory(value) -> str:
    if value is None:
        return "—"
    return f"{value / 1024:.1f} GiB" if value >= 1024 else f"{value:.0f} MiB"


def _p(value: float) -> str:
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def _model_name(model) -> str:
    """A built-in name or hub id as it is; a local path by its last part."""
    text = str(model)
    return Path(text).name if text.startswith(("/", ".", "~")) else text


def _threshold(value) -> str:
    """An abstention threshold: one number, or the range of a multi-label run's per-label
    thresholds."""
    if value is None:
        return "—"
    if isinstance(value, list):
        low, high = min(value), max(value)
        return f"{low:.2f}" if low == high else f"{low:.2f}–{high:.2f} (per label)"
    return f"{value:.2f}"


def _settings(run: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in run["settings"].items()) or "—"


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    best: dict[int, str] = field(default_factory=dict)  # column -> "max" | "min"
    text: tuple[int, ...] = (0,)  # left-aligned columns
    wrap: tuple[int, ...] = ()  # columns allowed to wrap (HTML)


def quality_table(report: dict) -> Table:
    """Per run: quality and calibration figures."""
    multi = report["multi_label"]
    quality: list[tuple[str, Callable, str]] = (
        [
            ("micro-F1", lambda r: r["micro_f1"], "max"),
            ("macro-F1", lambda r: r["macro_f1"], "max"),
            ("samples-F1", lambda r: r["samples_f1"], "max"),
            ("Hamming loss", lambda r: r["hamming_loss"], "min"),
            ("subset acc.", lambda r: r["accuracy"], "max"),
        ]
        if multi
        else [
            ("accuracy", lambda r: r["accuracy"], "max"),
            ("macro-F1", lambda r: r["macro_f1"], "max"),
            ("micro-F1", lambda r: r["micro_f1"], "max"),
            ("weighted-F1", lambda r: r["weighted_f1"], "max"),
        ]
    )
    levels = [run.get("levels") for run in report["runs"]]
    if all(levels) and len({len(runs_levels) for runs_levels in levels}) == 1:
        quality += [  # --label-hierarchy: every run read the same way
            (f"level {k + 1} macro-F1", lambda r, k=k: r["levels"][k]["macro_f1"], "max")
            for k in range(len(levels[0]))
        ]
    columns = quality + [
        ("ECE", lambda r: r["calibration"]["before"]["ece"], "min"),
        ("Brier", lambda r: r["calibration"]["before"]["brier"], "min"),
    ]
    if any(r["calibration"]["after"] for r in report["runs"]):
        columns += [
            (
                "T",
                lambda r: r["calibration"]["temperature"] if r["calibration"]["after"] else None,
                "",
            ),
            ("ECE after T", lambda r: (r["calibration"]["after"] or {}).get("ece"), "min"),
            ("Brier after T", lambda r: (r["calibration"]["after"] or {}).get("brier"), "min"),
        ]
    rows = [
        [run["name"], _settings(run)]
        + [_num(get(run), 2 if name == "T" else 4) for name, get, _ in columns]
        for run in report["runs"]
    ]
    return Table(
        header=["run", "setting", *[name for name, _, _ in columns]],
        rows=rows,
        best={i + 2: rule for i, (_, _, rule) in enumerate(columns) if rule},
        text=(0, 1),
        wrap=(1,),
    )


def cost_table(report: dict) -> Table:
    """Per run: what it cost to train and to run."""
    header = [
        "run",
        "method",
        "model",
        "trainable params",
        "total params",
        "train examples",
        "train time",
        "peak memory",
        "inference ex/s",
    ]
    rows = [
        [
            run["name"],
            str(run["method"]),
            _model_name(run["model"]),
            _params(run["trainable_params"]),
            _params(run["total_params"]),
            "—" if run["train_examples"] is None else f"{run['train_examples']:,}",
            _seconds(run["train_seconds"]),
            _memory(run["peak_rss_mb"]),
            _num(run["eval_examples_per_s"], 2),
        ]
        for run in report["runs"]
    ]
    return Table(header, rows, text=(0, 1, 2))


def selective_table(report: dict) -> Table:
    """Per run: the area under its risk–coverage curve, the coverage that keeps 95 % of
    answers right and, for runs that abstain, what their threshold keeps."""
    unit = " (label decisions)" if report["multi_label"] else ""
    columns: list[tuple[str, Callable, str]] = [
        ("AURC", lambda s: s["aurc"], "min"),
        ("coverage at precision 0.95", lambda s: s["coverage_at_precision"]["0.95"], "max"),
    ]
    abstaining = any("threshold" in r["selective"] for r in report["runs"])
    if abstaining:
        columns += [
            (f"coverage{unit}", lambda s: s.get("coverage"), ""),
            ("selective accuracy", lambda s: s.get("selective_accuracy"), ""),
            (
                "selective micro-F1" if report["multi_label"] else "selective macro-F1",
                lambda s: s.get("selective_f1"),
                "",
            ),
        ]
    rows = []
    for run in report["runs"]:
        selective = run["selective"]
        row = [run["name"]] + [_num(get(selective)) for _, get, _ in columns]
        if abstaining:
            row.insert(1, _threshold(selective.get("threshold")))
        rows.append(row)
    header = ["run", *[name for name, _, _ in columns]]
    if abstaining:
        header.insert(1, "abstain below")
    offset = 2 if abstaining else 1
    return Table(
        header=header,
        rows=rows,
        best={i + offset: rule for i, (_, _, rule) in enumerate(columns) if rule},
        text=(0,),
    )


def per_class_table(report: dict) -> Table:
    runs = report["runs"]
    rows = [
        [name, str(runs[0]["per_class"][name]["support"])]
        + [_num(r["per_class"][name]["f1"]) for r in runs]
        for name in report["classes"]
    ]
    return Table(["class", "support", *[r["name"] for r in runs]], rows)


def pairs_table(report: dict) -> Table:
    confidence = f"{report['settings']['confidence']:.0%}"
    adjusted = report["settings"]["p_adjustment"] != "none"
    primary = report["primary_metric"]
    power = report["settings"]["mde_power"]
    header = [
        "A",
        "B",
        "only A right",
        "only B right",
        "McNemar p" + (" (Holm)" if adjusted else ""),
        f"Δ macro-F1 (B − A) [{confidence} CI]",
        f"Δ micro-F1 (B − A) [{confidence} CI]",
        f"smallest detectable Δ {primary.replace('_f1', '-F1')} ({power:.0%} power)",
        "verdict",
    ]
    rows = []
    for p in report["pairs"]:
        p_text = _p(p["mcnemar_p"]) + (f" ({_p(p['mcnemar_p_adjusted'])})" if adjusted else "")
        rows.append(
            [
                p["a"],
                p["b"],
                str(p["only_a_correct"]),
                str(p["only_b_correct"]),
                p_text,
                f"{_signed(p['delta_macro_f1'])} [{_signed(p['ci_low'])}, {_signed(p['ci_high'])}]",
                f"{_signed(p['delta_micro_f1'])} "
                f"[{_signed(p['micro_ci_low'])}, {_signed(p['micro_ci_high'])}]",
                _num(p[f"mde_{primary}"]),
                p["verdict"],
            ]
        )
    return Table(header, rows, text=(0, 1, 8), wrap=(8,))


def summary_lines(report: dict) -> list[str]:
    """The report's summary: its headline (a best run only where the test set tells it
    apart from every other), one verdict per pair, what calibration did."""
    lines = [report["headline"]]
    for p in report["pairs"]:
        lines.append(f"{p['b']} vs {p['a']}: {p['verdict']}.")
    for run in report["runs"]:
        calibration = run["calibration"]
        if calibration["after"]:
            lines.append(
                f"{run['name']}: temperature scaling (T = {calibration['temperature']:.2f}) "
                f"takes the test ECE from {calibration['before']['ece']:.4f} to "
                f"{calibration['after']['ece']:.4f}."
            )
    return lines


def mark_best(rows: list[list[str]], best: dict[int, str], mark: Callable) -> list[list[str]]:
    """Mark the best value of each ruled column (when the runs differ on it)."""
    out = [list(row) for row in rows]
    for column, rule in best.items():
        values = [float(r[column]) if r[column] != "—" else None for r in rows]
        known = [v for v in values if v is not None]
        if len(set(known)) < 2:
            continue
        target = max(known) if rule == "max" else min(known)
        for row, value in zip(out, values):
            if value == target:
                row[column] = mark(row[column])
    return out
