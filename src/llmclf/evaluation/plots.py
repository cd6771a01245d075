"""The comparison report's figures, drawn with matplotlib (Agg: no display needed).

Each function takes the ``report.json`` dict and returns PNG bytes, so the HTML report
can embed them and the Markdown report can link them as files.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Colour-blind-safe (Okabe-Ito) colours, one per run.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
DPI = 110


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def to_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = min(columns, count)
    return math.ceil(count / columns), columns


def _short(label: str, width: int = 14) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def confusion_matrices(report: dict) -> bytes:
    """One confusion matrix per run, rows normalised (colour) with counts written in."""
    runs = report["runs"]
    classes = report["classes"]
    multi = report["multi_label"]
    k = len(classes)
    columns = ["TP", "FN", "FP", "TN"] if multi else [_short(c, 8) for c in classes]
    # Panels shrink, and fewer fit a row, as the classes grow (R52 has 52).
    per_row = 3 if k <= 8 else 2 if k <= 16 else 1
    cell = 0.5 if k <= 12 else max(0.16, 8.0 / k)
    width = min(14.0, cell * len(columns) + 2.2)
    height = min(14.0, cell * k + 1.6)
    annotate = k <= 20
    rows_n, cols_n = _grid(len(runs), per_row)
    figure, axes = plt.subplots(
        rows_n, cols_n, figsize=(width * cols_n, height * rows_n), squeeze=False
    )
    fontsize = 8 if k <= 20 else 6
    for ax, run in zip(axes.flat, runs):
        counts = np.asarray(report["confusion"][run["name"]], dtype=float)
        if multi:  # TP, FN as shares of the positives; FP, TN of the negatives
            positives = counts[:, :2].sum(axis=1, keepdims=True)
            negatives = counts[:, 2:].sum(axis=1, keepdims=True)
            totals = np.hstack([positives, positives, negatives, negatives])
        else:
            totals = counts.sum(axis=1, keepdims=True)
        shares = counts / np.maximum(totals, 1)
        ax.imshow(np.minimum(shares, 1.0), cmap="Blues", vmin=0, vmax=1, aspect="auto")
        if annotate:
            for (i, j), value in np.ndenumerate(counts):
                ax.text(
                    j,
                    i,
                    f"{int(value)}",
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if shares[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=fontsize)
        ax.set_yticks(range(k), [_short(c) for c in classes], fontsize=fontsize)
        ax.set_xlabel("label outcome" if multi else "predicted", fontsize=9)
        ax.set_ylabel("label" if multi else "true", fontsize=9)
        ax.set_title(f"{_short(run['name'], 40)}\naccuracy {run['accuracy']:.3f}", fontsize=9)
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    figure.tight_layout()
    return to_png(figure)


def _values(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def reliability_diagrams(report: dict) -> bytes:
    """Per run: accuracy per confidence bin (bars) against the diagonal, before
    temperature scaling, and after it (line) where the run is calibrated; underneath, how
    many forecasts fall in each bin (log scale), so a bar resting on one example is seen
    as such."""
    runs = report["runs"]
    rows_n, cols_n = _grid(len(runs), 4)
    figure = plt.figure(figsize=(3.3 * cols_n, 4.3 * rows_n))
    grid = figure.add_gridspec(2 * rows_n, cols_n, height_ratios=[3.2, 1.0] * rows_n)
    for index, run in enumerate(runs):
        row, col = divmod(index, cols_n)
        ax = figure.add_subplot(grid[2 * row, col])
        counts_ax = figure.add_subplot(grid[2 * row + 1, col], sharex=ax)
        calibration = run["calibration"]
        before = calibration["reliability_before"]
        edges = np.asarray(before["edges"])
        width = edges[1] - edges[0]
        ax.bar(
            edges[:-1],
            np.nan_to_num(_values(before["accuracy"])),
            width=width,
            align="edge",
            color=colour(index),
            alpha=0.75,
            edgecolor="white",
            label=f"before: ECE {calibration['before']['ece']:.3f}",
        )
        after = calibration["reliability_after"]
        if after is not None:
            ax.plot(
                _values(after["confidence"]),
                _values(after["accuracy"]),
                "o-",
                color="black",
                markersize=3,
                linewidth=1.2,
                label=f"T={calibration['temperature']:.2f}: ECE {calibration['after']['ece']:.3f}",
            )
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("frequency" if report["multi_label"] else "accuracy", fontsize=9)
        ax.set_title(_short(run["name"], 40), fontsize=9)
        ax.legend(loc="upper left", fontsize=7, frameon=False)
        ax.tick_params(labelsize=8, labelbottom=False)
        counts = np.asarray(before["count"], dtype=float)
        counts_ax.bar(edges[:-1], counts, width=width, align="edge", color="grey", alpha=0.6)
        counts_ax.set_yscale("log")
        counts_ax.set_ylim(0.8, max(2.0, counts.max() * 2))
        counts_ax.set_ylabel("forecasts", fontsize=8)
        counts_ax.set_xlabel(
            "probability" if report["multi_label"] else "confidence (before)", fontsize=9
        )
        counts_ax.tick_params(labelsize=7)
    figure.tight_layout()
    return to_png(figure)


def per_class_f1(report: dict) -> bytes:
    """Per-class F1 of every run: grouped bars, or a heat map when there are many."""
    runs, classes = report["runs"], report["classes"]
    values = np.array([[r["per_class"][c]["f1"] for c in classes] for r in runs])
    if len(classes) * len(runs) > 60:
        return _per_class_heatmap(values, runs, classes)
    figure, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(classes) * len(runs) + 2), 3.6))
    width = 0.8 / len(runs)
    positions = np.arange(len(classes))
    for index, run in enumerate(runs):
        ax.bar(
            positions + (index - (len(runs) - 1) / 2) * width,
            values[index],
            width=width,
            color=colour(index),
            label=_short(run["name"], 40),
        )
    ax.set_xticks(positions, [_short(c) for c in classes], rotation=30, ha="right", fontsize=9)
    low = max(0.0, float(np.floor(values.min() * 10) / 10) - 0.1)
    ax.set_ylim(low, 1.0)
    ax.set_ylabel("F1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return to_png(figure)


def _per_class_heatmap(values: np.ndarray, runs: list[dict], classes: list[str]) -> bytes:
    figure, ax = plt.subplots(figsize=(0.9 * len(runs) + 3, 0.28 * len(classes) + 1.5))
    ax.imshow(values.T, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(values.T):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white")
    ax.set_xticks(range(len(runs)), [_short(r["name"], 18) for r in runs], rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), [_short(c, 20) for c in classes], fontsize=7)
    figure.tight_layout()
    return to_png(figure)


def forest_plot(report: dict) -> bytes:
    """Delta F1 (B minus A) of every pair with its bootstrap interval; 0 = no difference.
    A grey band around 0 spans each pair's smallest detectable delta of the primary metric:
    differences inside it could pass unseen on this test set."""
    pairs = report["pairs"]
    confidence = report["settings"]["confidence"]
    primary = report["primary_metric"]
    figure, ax = plt.subplots(figsize=(7.5, 0.55 * len(pairs) + 1.4))
    rows = np.arange(len(pairs))[::-1]
    mde = np.array([p[f"mde_{primary}"] for p in pairs])
    ax.barh(
        rows,
        2 * mde,
        left=-mde,
        height=0.6,
        color="grey",
        alpha=0.18,
        label=f"± smallest detectable Δ {primary.replace('_f1', '-F1')}",
    )
    series = [
        ("macro-F1", "delta_macro_f1", "ci_low", "ci_high", "o", 0.12),
        ("micro-F1", "delta_micro_f1", "micro_ci_low", "micro_ci_high", "s", -0.12),
    ]
    for index, (label, key, low, high, marker, offset) in enumerate(series):
        centre = np.array([p[key] for p in pairs])
        lows = np.array([p[low] for p in pairs])
        highs = np.array([p[high] for p in pairs])
        ax.errorbar(
            centre,
            rows + offset,
            xerr=[centre - lows, highs - centre],
            fmt=marker,
            color=colour(index),
            capsize=3,
            markersize=5,
            label=f"Δ {label}",
        )
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(rows, [f"{_short(p['b'], 28)} − {_short(p['a'], 28)}" for p in pairs], fontsize=8)
    ax.set_xlabel(f"difference in F1 (B − A), {confidence:.0%} paired-bootstrap interval")
    ax.set_ylim(-0.7, len(pairs) - 0.3)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="best")
    figure.tight_layout()
    return to_png(figure)


def risk_coverage_curves(report: dict) -> bytes:
    """Every run's risk–coverage curve on one plot: answering only the most confident
    share of decisions (coverage), the error rate among them (risk); AURC in the legend,
    and a run's ``abstain_below`` operating point as a dot."""
    multi = report["multi_label"]
    figure, ax = plt.subplots(figsize=(7.0, 4.4))
    marked = False
    for index, run in enumerate(report["runs"]):
        selective = run["selective"]
        curve = selective["curve"]
        ax.plot(
            curve["coverage"],
            curve["risk"],
            color=colour(index),
            linewidth=1.6,
            label=f"{_short(run['name'], 40)}: AURC {selective['aurc']:.4f}",
        )
        if selective.get("selective_accuracy") is not None:
            ax.plot(
                selective["coverage"],
                1 - selective["selective_accuracy"],
                "o",
                color=colour(index),
                markeredgecolor="black",
                markersize=7,
            )
            marked = True
    if marked:  # one legend entry says what the dots are
        ax.plot(
            [], [], "o", color="white", markeredgecolor="black", label="abstain-below threshold"
        )
    ax.set_xlim(0, 1.01)
    ax.set_ylim(bottom=0)
    decided = "label decisions" if multi else "test examples"
    ax.set_xlabel(f"coverage (share of {decided} answered, most confident first)")
    ax.set_ylabel("risk (error rate of the answered)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return to_png(figure)


FIGURES = {
    "confusion": ("Confusion matrices", confusion_matrices),
    "reliability": ("Reliability diagrams", reliability_diagrams),
    "risk_coverage": ("Risk–coverage curves", risk_coverage_curves),
    "per_class_f1": ("Per-class F1", per_class_f1),
    "forest": ("Δ F1 intervals", forest_plot),
}
