"""Export a run: an encoder run (fine-tuned or distilled) to ONNX, served with ONNX
Runtime; or a head / encoder run to a plain merged ``*ForSequenceClassification`` folder
that transformers, vLLM and text-embeddings-inference load (``export_merged``).

``torch.onnx.export`` (the torch.export-based exporter) writes ``model.onnx`` with dynamic
batch and sequence axes; the folder also holds the tokenizer, ``labels.json``,
``calibration.json`` and the transformers ``config.json``, so it is self-contained (and
the layout Optimum's ``ORTModelForSequenceClassification`` reads). Every export is checked
before it is kept: ONNX Runtime must reproduce the PyTorch predictions.

    RUN/onnx/
      model.onnx                 inputs input_ids, attention_mask [batch, sequence] int64
                                 output logits [batch, num_classes] float32
      tokenizer.json, ...        the run's tokenizer
      labels.json, calibration.json, config.json
      llmclf_export.json         max_length, opset, the parity check's figures
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np

from llmclf.errors import LlmclfError
from llmclf.evaluation.calibration import to_proba
from llmclf.methods.encoder import EncoderClassifier
from llmclf.methods.onnx import OnnxClassifier
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


def _require_onnx() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise LlmclfError("ONNX export needs the onnx extra: pip install 'llmclf[onnx]'") from None


def export_onnx(run: str | Path, output: str | Path | None = None, opset: int = 18) -> dict:
    """Write ``run``'s encoder as ONNX to ``output`` (default ``RUN/onnx``) and check it.

    Returns the export info (also saved as ``llmclf_export.json``), with ``parity``:
    how many check texts were compared, whether every prediction agreed, and the largest
    absolute logit difference.

    Example:
        >>> export_onnx("runs/student")["parity"]["same_predictions"]  # doctest: +SKIP
        True
    """
    _require_onnx()
    run = Path(run)
    target = Path(output) if output else run / ONNX_FOLDER
    if target.exists() and any(target.iterdir()):
        raise LlmclfError(f"{target} already exists: delete it or choose another --output")
    long_text = long_text_of(RunFolder(run).config())
    if long_text != "truncate":
        raise LlmclfError(
            f"{run} was trained with --long-text {long_text}: the ONNX model reads one window "
            "of --max-length tokens cut at the end, so only --long-text truncate runs export"
        )
    clf = load_classifier(run, progress=False, device="cpu", dtype="float32")
    if not isinstance(clf, EncoderClassifier):
        raise LlmclfError(
            f"{run} is a {clf.method} run: ONNX export is for encoder runs; distill it into "
            "one first (llmclf distill RUN --student minilm-l6 ...)"
        )
    if target.exists():
        target.rmdir()  # empty, checked above
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial:  # the whole folder appears at once, checked
        shutil.rmtree(partial, ignore_errors=True)  # left by a killed export
        partial.mkdir()
        _export_graph(clf, partial / ONNX_FILE, opset)
        clf.tokenizer_.save_pretrained(partial)
        clf.model_.config.save_pretrained(partial)
        clf.schema_.save(partial)
        write_calibration(partial, {"temperature": clf.temperature_})
        info = {
            "format": "onnx",
            "opset": opset,
            "max_length": clf.config_.model.max_length,
            "source_run": str(run.resolve()),
        }
        write_json(partial / EXPORT_INFO, info)
        info["parity"] = check_parity(clf, OnnxClassifier(partial), _check_texts(run))
        write_json(partial / EXPORT_INFO, info)
    info["folder"] = str(target)
    return info


def long_text_of(config: dict) -> str:
    """A run's ``--long-text`` (runs before it existed truncate)."""
    return (config.get("long_text") or {}).get("long_text", "truncate")


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


def _check_texts(run: Path, limit: int = 64) -> list[str]:
    """Texts to compare the two runtimes on: the run's test texts, else a fixed few."""
    predictions = run / TEST_PREDICTIONS
    texts = []
    if predictions.is_file():
        with open(predictions, encoding="utf-8") as handle:
            for line in handle:
                texts.append(json.loads(line)["text"])
                if len(texts) == limit:
                    break
    return texts + FALLBACK_TEXTS


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


# ---------------------------------------------------------------------------------------
# The merged export: a plain *ForSequenceClassification folder
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
    ``RUN/merged``): LoRA merged into full-precision base weights, the head, the tokenizer
    (EOS appending included), ``id2label`` / ``label2id`` and the pad token in
    ``config.json``. ``AutoModelForSequenceClassification.from_pretrained(folder)`` then
    gives llmclf's logits, checked before the folder is kept; that is what vLLM
    (``--task classify``), text-embeddings-inference and ``pipeline("text-classification")``
    load. Head runs with ``--pooling last`` (mean, max and token are refused; 4-bit ones are merged into a full-precision
    base), frozen-head runs and encoder runs; calibration (a temperature) and multi-label
    thresholds stay in ``labels.json`` / ``calibration.json`` beside it, which plain
    transformers ignores.

    Example:
        >>> export_merged("runs/bbc")["parity"]["same_predictions"]  # doctest: +SKIP
        True
    """
    from llmclf.methods.head import HeadClassifier

    run = Path(run)
    target = Path(output) if output else run / MERGED_FOLDER
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LlmclfError(f"{target} already exists: delete it or choose another --output")
    config = RunFolder(run).config()
    method = config.get("method")
    if method not in ("head", "encoder"):
        raise LlmclfError(
            f"{run} is a {method} run: the merged export is for head and encoder runs (an "
            "instruct run answers with words, a TF-IDF run has no transformer)"
        )
    pooling = (config.get("head") or {}).get("pooling", "last")
    if method == "head" and pooling != "last":
        raise LlmclfError(
            f"{run} pools with --pooling {pooling}: transformers' sequence classifiers read the "
            "last input token's hidden state (no mean, max or learned pooling token), so only "
            "--pooling last runs export to a plain folder; predict with llmclf instead"
        )
    long_text = long_text_of(config)
    if long_text == "chunks":
        raise LlmclfError(
            f"{run} reads texts in windows (--long-text chunks): a plain "
            "*ForSequenceClassification reads one window and has no aggregation, so a chunked "
            "run does not export (see docs/long-text.md)"
        )
    overrides = {"quantize": "none"} if method == "head" else {}
    clf = load_classifier(run, progress=False, device="cpu", dtype="float32", **overrides)
    model = clf.model_
    if isinstance(clf, HeadClassifier) and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # the adapter is merged already; this unwraps it
    if target.exists():
        target.rmdir()  # empty, checked above
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial:
        shutil.rmtree(partial, ignore_errors=True)  # left by a killed export
        partial.mkdir()
        model.config.pad_token_id = clf.tokenizer_.pad_token_id
        model.save_pretrained(partial)
        clf.tokenizer_.save_pretrained(partial)
        clf.schema_.save(partial)
        write_calibration(partial, {"temperature": clf.temperature_})
        info = {"format": "merged", "method": method, "source_run": str(run.resolve())}
        if long_text == "head-tail":
            info["long_text"] = HEAD_TAIL_NOTE
            log.warning("%s", HEAD_TAIL_NOTE)
        info["parity"] = check_merged(clf, partial, _check_texts(run))
        write_json(partial / EXPORT_INFO, info)
    info["folder"] = str(target)
    return info


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
        if clf.config_.long_text.long_text == "head-tail":  # the run's cut, made before
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
