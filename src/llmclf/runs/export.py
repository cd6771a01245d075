"""Export a run for another runtime, through a registry of exporters.

Each ``Exporter`` declares its ``name`` (``--format``), which runs it accepts, how it
writes its folder and how it checks that folder against the run before the folder is kept.
A method declares the formats its runs export to (``ClassifierBase.exporters``), and may
refuse one run's options (``export_refusal``: a head run pooled with mean). ``export_run``
reads those declarations from the run's config before any model loads, then loads the run
on the CPU in float32 (a 4-bit base in full precision), writes the new folder beside the
target and renames it into place only once the check has passed. Two exporters ship:

``onnx`` (encoder runs, fine-tuned or distilled): ``torch.onnx.export`` (the
torch.export-based exporter) writes ``model.onnx`` with dynamic batch and sequence axes;
the folder also holds the tokenizer, ``labels.json``, ``calibration.json`` and the
transformers ``config.json``, so it is self-contained (and the layout Optimum's
``ORTModelForSequenceClassification`` reads). ONNX Runtime must reproduce the PyTorch
predictions.

    RUN/onnx/
      model.onnx                 inputs input_ids, attention_mask [batch, sequence] int64
                                 output logits [batch, num_classes] float32
      tokenizer.json, ...        the run's tokenizer
      labels.json, calibration.json, config.json
      llmclf_export.json         max_length, opset, the parity check's figures

``merged`` (head and encoder runs): a plain ``*ForSequenceClassification`` folder that
transformers, vLLM and text-embeddings-inference load (``export_merged``).

A new format is an ``Exporter`` passed to ``register_exporter`` (from any module), and a
method that can be written in it names it in its ``exporters``.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmclf.config import POSITIVE, REQUIRED, Options, option
from llmclf.errors import LlmclfError
from llmclf.evaluation.calibration import to_proba
from llmclf.methods.base import ClassifierBase, declared_by
from llmclf.methods.onnx import OnnxClassifier
from llmclf.methods.registry import method_classes
from llmclf.run_folder import (
    EXPORT_INFO,
    ONNX_FILE,
    ONNX_FOLDER,
    TEST_PREDICTIONS,
    RunFolder,
    atomic_path,
    write_calibration,
    write_json,
)
from llmclf.runs.evaluate import load_classifier

log = logging.getLogger("llmclf")
PARITY_ATOL = 1e-3  # largest |logit difference| accepted between ONNX Runtime and PyTorch
FALLBACK_TEXTS = [
    "Shares fell sharply after the bank missed its profit forecast.",
    "The striker scored twice as the home side won the cup final.",
    "A new phone with a faster chip goes on sale next month.",
    "ok",
]


# ---------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exporter:
    """One export format.

    ``refusal(clf)`` reads a classifier whose ``config_`` is resolved but whose model may
    not be loaded, and says why the format cannot express that run (a phrase that follows
    the run's folder: ``"RUN reads texts in windows ..."``), or None. ``write(clf, folder,
    options)`` writes the format's files into the new, empty ``folder`` from the loaded
    run and returns what ``llmclf_export.json`` should say about them; ``check(clf,
    folder, texts)`` compares the written folder with the run on ``texts`` and raises
    ``LlmclfError`` on any disagreement, else returns the figures (``parity``).
    """

    name: str  # the --format value
    title: str  # how a message names it: "ONNX export"
    help: str  # what --format NAME writes
    folder: str  # the default output, RUN/<folder>
    refusal: Callable[[ClassifierBase], str | None]
    write: Callable[[ClassifierBase, Path, ExportOptions], dict]
    check: Callable[[ClassifierBase, Path, list[str]], dict]
    # what a run of a method without this format can do instead, for the refusal
    instead: str = ""
    # raises LlmclfError naming the extra to install when the format's libraries are missing
    requires: Callable[[], None] = lambda: None


EXPORTERS: dict[str, Exporter] = {}


def register_exporter(exporter: Exporter) -> Exporter:
    """Make ``exporter`` a ``--format``; a name taken by another exporter is refused."""
    taken = EXPORTERS.get(exporter.name)
    if taken is not None and taken is not exporter:
        raise LlmclfError(f"--format {exporter.name} is taken by another exporter")
    EXPORTERS[exporter.name] = exporter
    return exporter


def unregister_exporter(name: str) -> None:
    """Remove the exporter ``name`` (a test's own, at its end); unknown names pass."""
    EXPORTERS.pop(name, None)


def exporters() -> dict[str, Exporter]:
    """--format name -> exporter, in registration order."""
    return dict(EXPORTERS)


@dataclass
class ExportOptions(Options):
    """llmclf export: a run written in a format another runtime reads."""

    run: str = option(REQUIRED, "a finished run folder")
    format: str = option(
        "onnx",
        "onnx: an encoder run for ONNX Runtime; merged: LoRA merged into the base, a plain "
        "*ForSequenceClassification folder",
        choices=EXPORTERS.keys(),  # a live view: an exporter registered later is a choice too
    )
    output: str | None = option(None, "the folder to write (default: RUN/onnx or RUN/merged)")
    opset: int = option(18, "ONNX opset version", bound=POSITIVE)


def export(options: ExportOptions) -> dict:
    """``llmclf export``: ``export_run`` with the command's options."""
    return export_run(options.run, options.format, options.output, opset=options.opset)


def export_run(
    run: str | Path, format: str = "onnx", output: str | Path | None = None, **options
) -> dict:
    """Write ``run`` as ``format`` to ``output`` (default ``RUN/<format's folder>``),
    checked against the run before it is kept; ``options``: the rest of
    ``ExportOptions`` (``opset``).

    Returns the export info (also saved as ``llmclf_export.json``), with ``parity``: how
    many check texts were compared, whether every prediction agreed, and the largest
    absolute logit difference. A run the format cannot express is refused in one line
    before any model loads.

    Example:
        >>> export_run("runs/student", "onnx")["parity"]["same_predictions"]  # doctest: +SKIP
        True
    """
    values = {"run": str(run), "format": format, **options}
    if output is not None:
        values["output"] = str(output)
    settings = ExportOptions.from_values(values, "llmclf export")
    exporter = EXPORTERS[settings.format]
    run = Path(run)
    target = Path(settings.output) if settings.output else run / exporter.folder
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LlmclfError(f"{target} already exists: delete it or choose another --output")
    described = _described(run)
    reason = refusal(exporter, described)
    if reason:
        raise LlmclfError(f"{run} {reason}")
    exporter.requires()
    # float32 on the CPU, a 4-bit base in full precision: what the check compares against
    overrides = {"progress": False, "device": "cpu", "dtype": "float32"}
    if "quantize" in described.config_class.option_names():
        overrides["quantize"] = "none"
    clf = load_classifier(run, **overrides)
    if target.exists():
        target.rmdir()  # empty, checked above
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial:  # the whole folder appears at once, checked
        shutil.rmtree(partial, ignore_errors=True)  # left by a killed export
        partial.mkdir()
        clf.schema_.save(partial)
        write_calibration(partial, {"temperature": clf.temperature_})
        info = {
            "format": exporter.name,
            "method": clf.method,
            **exporter.write(clf, partial, settings),
            "source_run": str(run.resolve()),
        }
        write_json(partial / EXPORT_INFO, info)  # a reader of the folder may need it
        info["parity"] = exporter.check(clf, partial, _check_texts(run))
        write_json(partial / EXPORT_INFO, info)
    info["folder"] = str(target)
    return info


def refusal(exporter: Exporter, clf: ClassifierBase) -> str | None:
    """Why ``exporter`` does not write ``clf``'s run (a phrase that follows the run's
    folder), or None: its method does not declare the format, the format cannot express
    the run's options, or the method refuses them."""
    declared = type(clf).exporters
    if exporter.name not in declared:
        takers = declared_by(lambda cls: exporter.name in cls.exporters)
        reason = f"is a {clf.method} run: {exporter.title} is for {takers} runs"
        if exporter.instead:
            reason += f"; {exporter.instead}"
        if declared:
            return reason + f", or export it with --format {' or '.join(declared)}"
        return reason + f"; {clf.method} runs export to no format (predict with llmclf)"
    return exporter.refusal(clf) or clf.export_refusal(exporter.name)


def _described(run: Path) -> ClassifierBase:
    """The run's classifier with its options resolved, no model loaded."""
    folder = RunFolder(run)
    method = folder.config().get("method")
    classes = method_classes()
    if method not in classes:
        raise LlmclfError(f"{folder} was made by an unknown method {method!r}")
    return classes[method].configured(folder.path)


def long_text_of(clf: ClassifierBase) -> str:
    """How a run reads long texts (``--long-text``; a method without it truncates)."""
    return clf.config_.as_options().get("long_text", "truncate")


def _check_texts(run: Path, limit: int = 64) -> list[str]:
    """Texts to compare the written folder and the run on: the run's test texts, else a
    fixed few."""
    predictions = run / TEST_PREDICTIONS
    texts = []
    if predictions.is_file():
        with open(predictions, encoding="utf-8") as handle:
            for line in handle:
                texts.append(json.loads(line)["text"])
                if len(texts) == limit:
                    break
    return texts + FALLBACK_TEXTS


# ---------------------------------------------------------------------------------------
# onnx: an encoder run for ONNX Runtime
# ---------------------------------------------------------------------------------------


def export_onnx(run: str | Path, output: str | Path | None = None, opset: int = 18) -> dict:
    """Write ``run``'s encoder as ONNX to ``output`` (default ``RUN/onnx``) and check it
    (``export_run(run, "onnx", ...)``).

    Example:
        >>> export_onnx("runs/student")["parity"]["same_predictions"]  # doctest: +SKIP
        True
    """
    return export_run(run, "onnx", output, opset=opset)


def _require_onnx() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise LlmclfError("ONNX export needs the onnx extra: pip install 'llmclf[onnx]'") from None


def _onnx_refusal(clf: ClassifierBase) -> str | None:
    long_text = long_text_of(clf)
    if long_text != "truncate":
        return (
            f"was trained with --long-text {long_text}: the ONNX model reads one window of "
            "--max-length tokens cut at the end, so only --long-text truncate runs export"
        )
    return None


def _write_onnx(clf, folder: Path, options: ExportOptions) -> dict:
    _export_graph(clf, folder / ONNX_FILE, options.opset)
    clf.tokenizer_.save_pretrained(folder)
    clf.model_.config.save_pretrained(folder)
    return {"opset": options.opset, "max_length": clf.config_.model.max_length}


def _export_graph(clf, path: Path, opset: int) -> None:
    import torch

    model = clf.model_.eval()
    sample = clf.tokenizer_(["a b c d", "e"], padding=True, return_tensors="pt")
    inputs = {"input_ids": sample["input_ids"], "attention_mask": sample["attention_mask"]}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: sequence}
    # The exporter's deprecation warnings and its note that torchvision (never used by a
    # text model) is missing say nothing to a user.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (),
                str(path),
                kwargs=inputs,
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_shapes={"input_ids": axes, "attention_mask": axes},
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
                report=False,
            )
    finally:
        exporter_log.setLevel(level)


def check_parity(clf, exported: OnnxClassifier, texts: list[str]) -> dict:
    """Compare PyTorch and ONNX Runtime logits on ``texts``; fail on any disagreement."""
    torch_logits = clf.predict_logits(texts)
    onnx_logits = exported.predict_logits(texts)
    schema = clf.schema_
    same = bool(
        np.array_equal(
            schema.decide(to_proba(torch_logits, schema.multi_label, clf.temperature_)),
            schema.decide(to_proba(onnx_logits, schema.multi_label, clf.temperature_)),
        )
    )
    diff = float(np.abs(torch_logits - onnx_logits).max())
    if not same or diff > PARITY_ATOL:
        raise LlmclfError(
            f"the ONNX model does not reproduce PyTorch (max |logit difference| {diff:.2g}, "
            f"same predictions: {same}): not exported"
        )
    return {"texts": len(texts), "same_predictions": same, "max_abs_logit_diff": diff}


register_exporter(
    Exporter(
        name="onnx",
        title="ONNX export",
        help="an encoder run for ONNX Runtime",
        folder=ONNX_FOLDER,
        refusal=_onnx_refusal,
        write=_write_onnx,
        check=lambda clf, folder, texts: check_parity(clf, OnnxClassifier(folder), texts),
        instead="distill it into one first (llmclf distill RUN --student minilm-l6 ...)",
        requires=_require_onnx,
    )
)


# ---------------------------------------------------------------------------------------
# merged: a plain *ForSequenceClassification folder
# ---------------------------------------------------------------------------------------

MERGED_FOLDER = "merged"
HEAD_TAIL_NOTE = (
    "trained with --long-text head-tail: plain transformers truncates the end of a long "
    "text, so cut long texts yourself (llmclf.long_text.head_tail_ids) to get the run's "
    "predictions; texts within --max-length are unaffected"
)
MERGED_ATOL = 1e-3  # largest |logit difference| accepted between the folder and llmclf


def export_merged(run: str | Path, output: str | Path | None = None) -> dict:
    """Write ``run`` as a plain ``*ForSequenceClassification`` folder (default
    ``RUN/merged``; ``export_run(run, "merged", ...)``): LoRA merged into full-precision
    base weights, the head, the tokenizer (EOS appending included), ``id2label`` /
    ``label2id`` and the pad token in ``config.json``.
    ``AutoModelForSequenceClassification.from_pretrained(folder)`` then gives llmclf's
    logits, checked before the folder is kept; that is what vLLM (``--task classify``),
    text-embeddings-inference and ``pipeline("text-classification")`` load. Head runs with
    ``--pooling last`` (4-bit ones are merged into a full-precision base), frozen-head runs
    and encoder runs; calibration (a temperature) and multi-label thresholds stay in
    ``labels.json`` / ``calibration.json`` beside it, which plain transformers ignores.

    Example:
        >>> export_merged("runs/bbc")["parity"]["same_predictions"]  # doctest: +SKIP
        True
    """
    return export_run(run, "merged", output)


def _merged_refusal(clf: ClassifierBase) -> str | None:
    if long_text_of(clf) == "chunks":
        return (
            "reads texts in windows (--long-text chunks): a plain *ForSequenceClassification "
            "reads one window and has no aggregation, so a chunked run does not export (see "
            "docs/long-text.md)"
        )
    return None


def _write_merged(clf, folder: Path, options: ExportOptions) -> dict:
    model = clf.model_
    if hasattr(model, "merge_and_unload"):  # a PEFT model: the adapter is merged already
        model = model.merge_and_unload()
    model.config.pad_token_id = clf.tokenizer_.pad_token_id
    model.save_pretrained(folder)
    clf.tokenizer_.save_pretrained(folder)
    if long_text_of(clf) == "head-tail":
        log.warning("%s", HEAD_TAIL_NOTE)
        return {"long_text": HEAD_TAIL_NOTE}
    return {}


def check_merged(clf, folder: Path, texts: list[str]) -> dict:
    """Plain transformers on ``folder`` against llmclf on ``texts``, unpadded one by one
    and padded in one batch; fail on any disagreement."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, dtype=torch.float32, trust_remote_code=False
    ).eval()
    limit = clf.config_.model.max_length
    with torch.no_grad():
        if long_text_of(clf) == "head-tail":  # the run's cut, made before
            ids = clf._encode(texts)
            batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        else:
            batch = tokenizer(
                texts, padding=True, truncation=True, max_length=limit, return_tensors="pt"
            )
        plain = model(**batch).logits.float().numpy()
    ours = clf.predict_logits(texts)
    diff = float(np.abs(plain - ours).max())
    same = bool(np.array_equal(plain.argmax(-1), ours.argmax(-1)))
    if not same or diff > MERGED_ATOL:
        raise LlmclfError(
            f"plain transformers on the merged folder does not reproduce llmclf (max |logit "
            f"difference| {diff:.2g}, same top class: {same}): not exported"
        )
    return {"texts": len(texts), "same_predictions": same, "max_abs_logit_diff": diff}


register_exporter(
    Exporter(
        name="merged",
        title="the merged export",
        help="LoRA merged into the base, a plain *ForSequenceClassification folder",
        folder=MERGED_FOLDER,
        refusal=_merged_refusal,
        write=_write_merged,
        check=check_merged,
    )
)
