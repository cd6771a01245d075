"""Export a run for another runtime, through a registry of exporters.

Each ``Exporter`` declares its ``name`` (``--format``), which runs it accepts, how it
writes its folder and how it checks that folder against the run before the folder is kept.
A method declares the formats its runs export to (``ClassifierBase.exporters``), and may
refuse one run's options (``export_refusal``: a head run pooled with mean). ``export_run``
reads those declarations from the run's config before any model loads, then loads the run
on the CPU in float32 (a 4-bit base in full precision), writes the new folder beside the
target and renames it into place only once the check has passed. Three exporters ship:

``onnx`` (encoder runs, fine-tuned or distilled, head runs with any pooling, and setfit
runs: body, pooling, normalisation and head in one graph):
``torch.onnx.export`` (the torch.export-based exporter) traces the method's
``export_module()`` (a head run: the merged backbone, the pooling computed from the
attention mask, the head) with dynamic batch and sequence axes, optionally quantized
(``--quantize int8|int4``, ``llmclf.onnx_export``); the folder also holds the tokenizer,
``labels.json``, ``calibration.json`` and the transformers ``config.json`` (``id2label``),
so it is self-contained, in the layout transformers.js and Optimum's
``ORTModelForSequenceClassification`` (``subfolder="onnx"``) read. ONNX Runtime must
reproduce the PyTorch predictions (a quantized graph: keep 99 % of the labels and the
macro-F1 within 0.01, on the run's test set).

    RUN/onnx/
      onnx/model.onnx            inputs input_ids, attention_mask [batch, sequence] int64
                                 (padded on either side), output logits [batch, classes]
                                 float32; model_int8.onnx / model_q4.onnx when quantized
      tokenizer.json, ...        the run's tokenizer (a head run's appends EOS itself)
      labels.json, calibration.json, config.json
      llmclf_export.json         file, quantize, max_length, opset, the check's figures

``gguf`` (head runs pooled with last or mean): the merged backbone converted by llama.cpp's
own converter and quantized by its own quantizer (``--quantize f16|none|q8_0|q4_k_m``,
``llmclf.gguf_export``), the head in float32 beside it; llama.cpp, run for embeddings with
the run's pooling, must reproduce the predictions as ONNX Runtime must.

    RUN/gguf/
      model-f16.gguf             (model-f32 / -q8_0 / -q4_k_m.gguf) pooling and EOS in its
                                 metadata
      head.safetensors           weight [classes, hidden], bias: float32, applied on the host
      tokenizer.json, ...        labels.json, calibration.json, config.yaml
      llmclf_export.json         file, quantize, pooling, head, max_length, the check's figures

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
from llmclf.evaluation.metrics import classification_metrics
from llmclf.labels import LabelSchema
from llmclf.methods.base import ClassifierBase, declared_by
from llmclf.methods.exported import ExportedClassifier, is_export
from llmclf.methods.gguf import GgufClassifier, require_llama_cpp
from llmclf.methods.onnx import OnnxClassifier
from llmclf.methods.registry import method_classes
from llmclf.run_folder import (
    CONFIG_FILE,
    EXPORT_INFO,
    ONNX_FOLDER,
    ONNX_GRAPHS,
    TEST_PREDICTIONS,
    RunFolder,
    atomic_path,
    read_json,
    write_calibration,
    write_json,
)
from llmclf.runs.evaluate import data_config_for, evaluation_split, load_classifier

log = logging.getLogger("llmclf")
PARITY_ATOL = 1e-3  # largest |logit difference| accepted between ONNX Runtime and PyTorch
# a quantized export is kept when it gives at least this share of the run's labels and a
# macro-F1 this close to the run's, on the run's test set
QUANTIZED_AGREEMENT = 0.99
QUANTIZED_F1_DROP = 0.01
QUANTIZED_CHECK_LIMIT = 2000
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
    folder, examples)`` compares the written folder with the run on ``examples``
    (``CheckExamples``: texts, and gold labels for a quantized export) and raises ``LlmclfError`` on any disagreement, else returns the figures (``parity``).
    """

    name: str  # the --format value
    title: str  # how a message names it: "ONNX export"
    help: str  # what --format NAME writes
    folder: str  # the default output, RUN/<folder>
    refusal: Callable[[ClassifierBase], str | None]
    write: Callable[[ClassifierBase, Path, ExportOptions], dict]
    check: Callable[[ClassifierBase, Path, CheckExamples], dict]
    # what a run of a method without this format can do instead, for the refusal
    instead: str = ""
    # raises LlmclfError naming the extra to install when the format's libraries are missing
    requires: Callable[[], None] = lambda: None
    # its --quantize values, the default first
    quantizations: tuple[str, ...] = ("none",)


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
        "onnx: an encoder, head or setfit run for ONNX Runtime; gguf: a head run for llama.cpp; "
        "merged: "
        "LoRA merged into the base, a plain *ForSequenceClassification folder",
        choices=EXPORTERS.keys(),  # a live view: an exporter registered later is a choice too
    )
    output: str | None = option(None, "the folder to write (default: RUN/onnx or RUN/merged)")
    quantize: str | None = option(
        None,
        "onnx: none (float32, the default), int8 (8-bit weights, int8 compute) or int4 "
        "(4-bit weights, the embedding table too); gguf: f16 (the default), none (float32), "
        "q8_0 or q4_k_m (llama.cpp's quantizer; the head stays float32); checked on the run's "
        "test set before the folder is kept",
    )
    check_data: str | None = option(
        None,
        "a labelled data file to check the export on (read with the run's columns, every "
        "row), instead of the run's own test predictions",
    )
    opset: int = option(18, "ONNX opset version", bound=POSITIVE)

    def __post_init__(self) -> None:
        super().__post_init__()
        takes = EXPORTERS[self.format].quantizations
        if self.quantize is None:
            self.quantize = takes[0]
        elif self.quantize not in takes:
            raise LlmclfError(
                f"--quantize {self.quantize} does not apply to --format {self.format}: it "
                f"takes {', '.join(takes)}"
            )


def export(options: ExportOptions) -> dict:
    """``llmclf export``: ``export_run`` with the command's options."""
    return export_run(
        options.run,
        options.format,
        options.output,
        quantize=options.quantize,
        check_data=options.check_data,
        opset=options.opset,
    )


def export_run(
    run: str | Path, format: str = "onnx", output: str | Path | None = None, **options
) -> dict:
    """Write ``run`` as ``format`` to ``output`` (default ``RUN/<format's folder>``),
    checked against the run before it is kept; ``options``: the rest of
    ``ExportOptions`` (``quantize``, ``check_data``, ``opset``).

    Returns the export info (also saved as ``llmclf_export.json``), with ``parity``: how
    many check texts were compared, whether every prediction agreed, and the largest
    absolute logit difference (a quantized export: the share of labels kept and the
    macro-F1 beside the run's). A run the format cannot express is refused in one line
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
    if is_export(run):
        source = read_json(run / EXPORT_INFO, "export info").get("source_run", "its run")
        raise LlmclfError(f"{run} is an export already: export the run it came from ({source})")
    target = Path(settings.output) if settings.output else run / exporter.folder
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LlmclfError(f"{target} already exists: delete it or choose another --output")
    described = _described(run)
    reason = refusal(exporter, described)
    if reason:
        raise LlmclfError(f"{run} {reason}")
    exporter.requires()
    examples = (
        given_examples(run, settings.check_data)
        if settings.check_data
        else check_examples(run, settings.quantize)
    )  # a bad file is refused before any model loads
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
        info["parity"] = exporter.check(clf, partial, examples)
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
        article = "an" if clf.method[:1] in "aeiou" else "a"
        reason = f"is {article} {clf.method} run: {exporter.title} is for {takers} runs"
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


@dataclass
class CheckExamples:
    """What an export is compared with the run on: texts, and their gold labels where the
    run's test predictions carry them (a quantized export's macro-F1 needs them)."""

    texts: list[str]
    labels: list | None = None


def given_examples(run: Path, data: str) -> CheckExamples:
    """Every row of the labelled file ``data``, read with the run's data options; labels
    the run does not know are refused."""
    schema = LabelSchema.load(run)
    examples = evaluation_split(
        data_config_for(run, {"data": data}), "all", schema.multi_label, whole_file=True
    )
    schema.check_known(examples.labels, f"--check-data {data}")
    return CheckExamples(list(examples.texts), examples.labels)


def check_examples(run: Path, quantize: str = "none", limit: int = 64) -> CheckExamples:
    """The run's test texts (the first ``limit``; every one, up to 2,000, with their gold
    labels, for a quantized export, whose check counts labels kept), else a fixed few."""
    predictions = run / TEST_PREDICTIONS
    limit = limit if quantize == "none" else QUANTIZED_CHECK_LIMIT
    texts, labels = [], []
    if predictions.is_file():
        with open(predictions, encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                texts.append(row["text"])
                labels.append(row.get("label"))
                if len(texts) == limit:
                    break
    if quantize != "none" and texts and all(label is not None for label in labels):
        return CheckExamples(texts, labels)
    return CheckExamples(texts + FALLBACK_TEXTS)


# ---------------------------------------------------------------------------------------
# onnx: an encoder run for ONNX Runtime
# ---------------------------------------------------------------------------------------


def export_onnx(
    run: str | Path, output: str | Path | None = None, quantize: str = "none", opset: int = 18
) -> dict:
    """Write ``run`` (an encoder or head run) as ONNX to ``output`` (default ``RUN/onnx``),
    quantized as ``quantize`` (none, int8, int4), and check it
    (``export_run(run, "onnx", ...)``).

    Example:
        >>> export_onnx("runs/student")["parity"]["same_predictions"]  # doctest: +SKIP
        True
    """
    return export_run(run, "onnx", output, quantize=quantize, opset=opset)


def _require_onnx() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise LlmclfError("ONNX export needs the onnx extra: pip install 'llmclf[onnx]'") from None


def one_window_refusal(clf: ClassifierBase, reader: str) -> str | None:
    """Why a runtime that reads one window (``reader``: "the ONNX model") cannot express
    ``clf``'s run: it reads long texts otherwise than by truncation; or None."""
    long_text = long_text_of(clf)
    if long_text != "truncate":
        return (
            f"was trained with --long-text {long_text}: {reader} reads one window of "
            "--max-length tokens cut at the end, so only --long-text truncate runs export"
        )
    return None


def _onnx_refusal(clf: ClassifierBase) -> str | None:
    return one_window_refusal(clf, "the ONNX model")


def _write_onnx(clf, folder: Path, options: ExportOptions) -> dict:
    from llmclf.onnx_export import GRAPH_FILES, quantize_graph, write_graph

    graphs = folder / ONNX_GRAPHS
    graphs.mkdir()
    path = graphs / GRAPH_FILES[options.quantize]
    full = graphs / GRAPH_FILES["none"]
    write_graph(clf.export_module(), clf.tokenizer_, full, options.opset)
    info = {"quantize": options.quantize}
    if options.quantize != "none":
        info.update(quantize_graph(full, path, options.quantize))
        full.unlink()  # one variant per folder: the one checked
    clf.tokenizer_.save_pretrained(folder)
    clf.model_.config.save_pretrained(folder)
    # the run's options (its data columns for evaluate and predict, its method)
    shutil.copy2(Path(options.run) / CONFIG_FILE, folder / CONFIG_FILE)
    return {
        **info,
        "file": path.relative_to(folder).as_posix(),
        "opset": options.opset,
        "max_length": clf.config_.model.max_length,
        "pad_token_id": clf.tokenizer_.pad_token_id,
        "bytes": path.stat().st_size,
    }


def check_parity(clf, exported: ExportedClassifier, examples: CheckExamples) -> dict:
    """Compare the export's runtime with PyTorch on ``examples``: a float32 model must give the
    same predictions and logits within ``PARITY_ATOL``; a quantized one at least
    ``QUANTIZED_AGREEMENT`` of the labels, and a macro-F1 on the gold labels within
    ``QUANTIZED_F1_DROP`` of PyTorch's. Raises ``LlmclfError`` with the figures if not."""
    texts, schema = examples.texts, clf.schema_
    torch_logits = clf.predict_logits(texts)
    onnx_logits = exported.predict_logits(texts)
    ours = schema.decide(to_proba(torch_logits, schema.multi_label, clf.temperature_))
    theirs = schema.decide(to_proba(onnx_logits, schema.multi_label, clf.temperature_))
    rows_equal = (ours == theirs).all(axis=1) if schema.multi_label else ours == theirs
    diff = float(np.abs(torch_logits - onnx_logits).max())
    figures = {
        "texts": len(texts),
        "same_predictions": bool(rows_equal.all()),
        "agreement": float(rows_equal.mean()),
        "max_abs_logit_diff": diff,
    }
    if exported.quantize_ == "none":
        if not figures["same_predictions"] or diff > PARITY_ATOL:
            raise LlmclfError(
                f"{exported.title} does not reproduce PyTorch (max |logit difference| "
                f"{diff:.2g}, same predictions: {figures['same_predictions']}): not exported"
            )
        return figures
    if examples.labels is not None:
        gold = schema.encode(examples.labels)
        figures["macro_f1_pytorch"] = classification_metrics(gold, ours, schema.classes)["macro_f1"]
        figures["macro_f1"] = classification_metrics(gold, theirs, schema.classes)["macro_f1"]
    drop = figures.get("macro_f1_pytorch", 0.0) - figures.get("macro_f1", 0.0)
    if figures["agreement"] < QUANTIZED_AGREEMENT or drop > QUANTIZED_F1_DROP:
        f1 = (
            f", macro-F1 {figures['macro_f1']:.4f} vs {figures['macro_f1_pytorch']:.4f}"
            if "macro_f1" in figures
            else ""
        )
        raise LlmclfError(
            f"{exported.title} ({exported.quantize_}) keeps {figures['agreement']:.1%} of the run's "
            f"labels on {len(texts)} texts{f1} (needed: {QUANTIZED_AGREEMENT:.0%}, macro-F1 "
            f"within {QUANTIZED_F1_DROP}): not exported; try a milder --quantize"
        )
    return figures


register_exporter(
    Exporter(
        name="onnx",
        title="ONNX export",
        help="an encoder, head or setfit run for ONNX Runtime",
        folder=ONNX_FOLDER,
        refusal=_onnx_refusal,
        write=_write_onnx,
        check=lambda clf, folder, examples: check_parity(clf, OnnxClassifier(folder), examples),
        instead="distill it into an encoder first (llmclf distill RUN --student minilm-l6 ...)",
        requires=_require_onnx,
        quantizations=("none", "int8", "int4"),
    )
)


# ---------------------------------------------------------------------------------------
# gguf: a head run for llama.cpp
# ---------------------------------------------------------------------------------------


def export_gguf(run: str | Path, output: str | Path | None = None, quantize: str = "f16") -> dict:
    """Write ``run`` (a head run pooled with last or mean) for llama.cpp to ``output``
    (default ``RUN/gguf``), quantized as ``quantize`` (f16, none, q8_0, q4_k_m), and check
    it (``export_run(run, "gguf", ...)``).

    Example:
        >>> export_gguf("runs/bbc", quantize="q8_0")["parity"]["agreement"]  # doctest: +SKIP
        1.0
    """
    return export_run(run, "gguf", output, quantize=quantize)


def _gguf_refusal(clf: ClassifierBase) -> str | None:
    from llmclf.gguf_export import POOLINGS

    reason = one_window_refusal(clf, "llama.cpp")
    if reason:
        return reason
    pooling = clf.config_.head.pooling
    if pooling not in POOLINGS:
        return (
            f"pools with --pooling {pooling}: llama.cpp pools a causal LM's hidden states by "
            "the last token or the mean only, so only --pooling last or mean runs export to "
            "GGUF; export it with --format onnx, which computes every pooling"
        )
    return None


def _write_gguf(clf, folder: Path, options: ExportOptions) -> dict:
    from llmclf.gguf_export import write_gguf

    name = f"{Path(options.run).resolve().name} (llmclf {clf.method} run)"
    info = write_gguf(
        clf.export_module(),
        clf.tokenizer_,
        folder,
        clf.config_.head.pooling,
        options.quantize,
        name,
    )
    clf.tokenizer_.save_pretrained(folder)
    shutil.copy2(Path(options.run) / CONFIG_FILE, folder / CONFIG_FILE)
    return {
        "quantize": options.quantize,
        **info,
        "max_length": clf.config_.model.max_length,
        "pad_token_id": clf.tokenizer_.pad_token_id,
    }


register_exporter(
    Exporter(
        name="gguf",
        title="GGUF export",
        help="a head run for llama.cpp",
        folder="gguf",
        refusal=_gguf_refusal,
        write=_write_gguf,
        check=lambda clf, folder, examples: check_parity(clf, GgufClassifier(folder), examples),
        requires=lambda: require_llama_cpp("--format gguf"),
        quantizations=("f16", "none", "q8_0", "q4_k_m"),
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
        with warnings.catch_warnings():  # "All adapters are already merged": as meant
            warnings.simplefilter("ignore")
            model = model.merge_and_unload()
    model.config.pad_token_id = clf.tokenizer_.pad_token_id
    model.save_pretrained(folder)
    clf.tokenizer_.save_pretrained(folder)
    if long_text_of(clf) == "head-tail":
        log.warning("%s", HEAD_TAIL_NOTE)
        return {"long_text": HEAD_TAIL_NOTE}
    return {}


def check_merged(clf, folder: Path, examples: CheckExamples) -> dict:
    """Plain transformers on ``folder`` against llmclf on ``examples``' texts, padded in
    one batch; fail on any disagreement."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, dtype=torch.float32, trust_remote_code=False
    ).eval()
    limit, texts = clf.config_.model.max_length, examples.texts
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
