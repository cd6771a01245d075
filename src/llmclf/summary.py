"""What each ``llmclf`` command prints when it is done: a few lines on standard output,
from the result its library function returned (metrics, a report, a count)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmclf.distributed import is_main_process


def metrics_lines(metrics: dict, folder: Path | str) -> None:
    """A run's or an evaluation's metrics, as ``train`` and ``evaluate`` print them."""
    for warning in metrics.get("warnings", []):
        print(f"warning: {warning}")
    if "macro_f1" in metrics:
        line = (
            f"{metrics.get('split', 'test')}: accuracy {metrics['accuracy']:.4f}  "
            f"macro-F1 {metrics['macro_f1']:.4f}  micro-F1 {metrics['micro_f1']:.4f}  (n={metrics['n']})"
        )
        if "samples_f1" in metrics:
            line += (
                f"  samples-F1 {metrics['samples_f1']:.4f}  hamming {metrics['hamming_loss']:.4f}"
            )
        print(line)
    for level in metrics.get("levels", []):
        print(
            f"  level {level['level']} ({level['groups']} groups): accuracy "
            f"{level['accuracy']:.4f}  macro-F1 {level['macro_f1']:.4f}"
        )
    if "unparsed" in metrics:
        print(
            f"unparsed answers {metrics['unparsed']} ({metrics['unparsed_rate']:.1%}): "
            "counted as wrong"
        )
    if "ece" in metrics:
        line = f"calibration: ECE {metrics['ece']:.4f}  Brier {metrics['brier']:.4f}"
        if "ece_uncalibrated" in metrics:
            line += (
                f"  at temperature {metrics['temperature']:.3f} "
                f"(uncalibrated: ECE {metrics['ece_uncalibrated']:.4f}  "
                f"Brier {metrics['brier_uncalibrated']:.4f})"
            )
        print(line)
    selective = metrics.get("selective")
    if selective and selective.get("coverage") is not None:
        accuracy = selective["selective_accuracy"]
        print(
            f"abstaining below {_threshold(selective['threshold'])}: answers "
            f"{selective['coverage']:.1%}, "
            + (f"{accuracy:.1%} of them right" if accuracy is not None else "no text")
            + f"  (AURC {selective['aurc']:.4f})"
        )
        parents = selective.get("parents")
        if parents and parents["with_parent"] is not None:
            right = parents["parent_accuracy"]
            print(
                f"  of the {parents['withheld']} withheld, {parents['with_parent']:.1%} still "
                "get a parent" + (f", {right:.1%} of them right" if right is not None else "")
            )
    if "trainable_params" in metrics:
        print(
            f"trainable parameters {metrics['trainable_params']:,} of {metrics['total_params']:,}; "
            f"training {metrics['train_seconds']:.0f} s; peak memory {metrics['peak_rss_mb']:.0f} MiB"
        )
    print(f"written to {folder}")


def _threshold(value) -> str:
    """One threshold, or a multi-label run's per-label ones."""
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.3f}" for v in value) + "] (per label)"
    return f"{value:.3f}"


def show_train(metrics: dict | None, values: dict[str, Any]) -> None:
    if metrics is not None:  # None: a process other than the main one of a multi-process run
        metrics_lines(metrics, values["output"])


def show_evaluate(result: tuple[dict, Path], values: dict[str, Any]) -> None:
    metrics, folder = result
    metrics_lines(metrics, folder)


def show_predict(rows: int, values: dict[str, Any]) -> None:
    if is_main_process():
        print(f"wrote {rows} predictions to {values['output']}")


def show_suggest(rows: int, values: dict[str, Any]) -> None:
    print(f"wrote the {rows} texts to label next to {values['output']}, most useful first")


def show_calibrate(stored: dict, values: dict[str, Any]) -> None:
    before, after = stored["before"], stored["after"]
    print(
        f"temperature {stored['temperature']:.3f} (fitted on {stored['fitted_on']}, n={stored['n']})"
    )
    print(
        f"{stored['fitted_on']}: NLL {before['nll']:.4f} -> {after['nll']:.4f}  "
        f"ECE {before['ece']:.4f} -> {after['ece']:.4f}  Brier {before['brier']:.4f} -> {after['brier']:.4f}"
    )
    if "test" in stored:
        test_before = stored["test"]["before"]
        test_after = stored["test"]["after"] or test_before
        print(
            f"stored test predictions: ECE {test_before['ece']:.4f} -> {test_after['ece']:.4f}  "
            f"Brier {test_before['brier']:.4f} -> {test_after['brier']:.4f}"
        )
    if "abstention" in stored:
        chosen = stored["abstention"]
        figures = chosen["validation"]
        print(
            f"abstaining below {_threshold(chosen['threshold'])} ({chosen['chosen_by']}): "
            f"answers {figures['coverage']:.1%} of {chosen['chosen_on']}, "
            + (
                f"{figures['selective_accuracy']:.1%} of them right"
                if figures["selective_accuracy"] is not None
                else "none"
            )
        )
    run = Path(values["run"])
    print(f"written to {run / 'calibration.json'}; evaluate, predict and compare now apply it")


def show_compare(report: dict, values: dict[str, Any]) -> None:
    from llmclf.evaluation.tables import summary_lines

    primary = report["primary_metric"]
    for run in report["runs"]:
        calibration = run["calibration"]
        after = calibration["after"]
        ece = f"ECE {calibration['before']['ece']:.4f}" + (
            f" -> {after['ece']:.4f} (T={calibration['temperature']:.2f})" if after else ""
        )
        print(f"{run['name']}: {primary.replace('_f1', '-F1')} {run[primary]:.4f}  {ece}")
    for pair in report["pairs"]:
        print(
            f"{pair['b']} - {pair['a']}: McNemar p={pair['mcnemar_p']:.4g}  "
            f"delta macro-F1 {pair['delta_macro_f1']:+.4f} [{pair['ci_low']:+.4f}, {pair['ci_high']:+.4f}]  "
            f"delta micro-F1 {pair['delta_micro_f1']:+.4f} [{pair['micro_ci_low']:+.4f}, {pair['micro_ci_high']:+.4f}]"
            + (
                f"  could detect |delta| >= {pair['mde_macro_f1']:.4f}"
                if pair.get("mde_macro_f1") is not None
                else ""
            )
        )
    print(summary_lines(report)[0])
    print(f"written to {Path(values['output']) / 'report.html'} (and report.md, report.json)")


def show_distill(metrics: dict, values: dict[str, Any]) -> None:
    metrics_lines(metrics, values["output"])
    if "f1_ratio" in metrics:
        print(
            f"teacher macro-F1 {metrics['teacher_macro_f1']:.4f} at "
            f"{metrics['teacher_examples_per_s']:.1f} ex/s; student {metrics['student_macro_f1']:.4f} "
            f"at {metrics['student_examples_per_s']:.1f} ex/s: {metrics['f1_ratio']:.1%} of the "
            f"F1 at {metrics['throughput_ratio']:.1f}x the throughput"
        )


EXPORT_RUNTIMES = {"onnx": "ONNX Runtime", "gguf": "llama.cpp"}


def show_export(info: dict, values: dict[str, Any]) -> None:
    parity = info.get("parity") or {}
    runtime = EXPORT_RUNTIMES.get(info.get("format"))
    if runtime and parity:
        size = info["bytes"] / 2**20
        where = f"wrote {info['folder']} ({info['file']}, {size:.1f} MiB)"
        if info.get("quantize", "none") == "none":
            print(
                f"{where}; {runtime} matches PyTorch on {parity['texts']} texts: same "
                f"predictions, max |logit difference| {parity['max_abs_logit_diff']:.1g}"
            )
        else:
            f1 = (
                f"; macro-F1 {parity['macro_f1']:.4f} (PyTorch {parity['macro_f1_pytorch']:.4f})"
                if "macro_f1" in parity
                else ""
            )
            print(
                f"{where}; {info['quantize']} keeps {parity['agreement']:.1%} of PyTorch's "
                f"labels on {parity['texts']} texts{f1}"
            )
    elif parity:
        print(
            f"wrote {info['folder']}: plain transformers matches llmclf on {parity['texts']} "
            f"texts (max |logit difference| {parity['max_abs_logit_diff']:.1g})"
        )
    else:
        print(f"wrote {info['folder']}")


def show_nothing(result: Any, values: dict[str, Any]) -> None:
    """For commands that print as they go (experiment, serve)."""


def show_models() -> None:
    from llmclf.catalog import MODELS

    print(f"{'name':<16} {'kind':<8} {'licence':<22} description / install")
    for entry in MODELS.values():
        print(f"{entry.name:<16} {entry.kind:<8} {entry.licence:<22} {entry.description}")
        print(f"{'':<48} {entry.install}")
    print(
        "\nAlso accepted: any Hugging Face hub id, a local model folder, or a path to a .gguf file."
    )


def show_datasets() -> None:
    from llmclf.catalog import DATASETS

    for entry in DATASETS.values():
        print(
            f"{entry.name}\n  {entry.description}\n  split: {entry.split}\n  licence: {entry.licence}"
        )
        print(f"  install: {entry.install}")
    print("\nAlso accepted: a CSV / TSV / JSONL / Parquet file, or hf:NAME[:CONFIG].")
