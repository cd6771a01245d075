"""Export an encoder run (a fine-tuned or distilled encoder) to ONNX, and serve it with
ONNX Runtime.

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

from llmclf.calibration import to_proba
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema

log = logging.getLogger("llmclf")

ONNX_FILE = "model.onnx"
EXPORT_INFO = "llmclf_export.json"
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
    from llmclf.encoder import EncoderClassifier
    from llmclf.runs import load_classifier

    run = Path(run)
    target = Path(output) if output else run / "onnx"
    if target.exists() and any(target.iterdir()):
        raise LlmclfError(f"{target} already exists: delete it or choose another --output")
    clf = load_classifier(run, progress=False, device="cpu", dtype="float32")
    if not isinstance(clf, EncoderClassifier):
        raise LlmclfError(
            f"{run} is a {clf.method} run: ONNX export is for encoder runs; distill it into "
            "one first (llmclf distill RUN --student minilm-l6 ...)"
        )
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _export_graph(clf, partial / ONNX_FILE, opset)
        clf.tokenizer_.save_pretrained(partial)
        clf.model_.config.save_pretrained(partial)
        clf.schema_.save(partial)
        (partial / "calibration.json").write_text(
            json.dumps({"temperature": clf.temperature_}) + "\n"
        )
        max_length = clf._configs()[0].max_length
        info = {
            "format": "onnx",
            "opset": opset,
            "max_length": max_length,
            "source_run": str(run.resolve()),
        }
        (partial / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        info["parity"] = check_parity(clf, OnnxClassifier(partial), _check_texts(run))
        (partial / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.exists():
        target.rmdir()  # empty, checked above
    partial.replace(target)
    info["folder"] = str(target)
    return info


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
    predictions = run / "test_predictions.jsonl"
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


class OnnxClassifier:
    """An exported encoder served by ONNX Runtime: the same ``predict`` / ``predict_proba``
    as llmclf's classifiers, without torch.

    Example:
        >>> clf = OnnxClassifier("runs/student/onnx")  # doctest: +SKIP
        >>> clf.predict("The striker scored twice")  # doctest: +SKIP
        'sport'
    """

    def __init__(self, folder: str | Path, batch_size: int = 16, threads: int | None = None):
        import onnxruntime
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not (folder / ONNX_FILE).is_file():
            raise LlmclfError(f"{folder} holds no {ONNX_FILE}: export a run with llmclf export")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session_ = onnxruntime.InferenceSession(
            str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.input_names_ = [i.name for i in self.session_.get_inputs()]
        self.tokenizer_ = AutoTokenizer.from_pretrained(folder)
        self.schema_ = LabelSchema.load(folder)
        self.classes_ = np.array(self.schema_.classes)
        self.temperature_ = json.loads((folder / "calibration.json").read_text())["temperature"]
        self.max_length_ = json.loads((folder / EXPORT_INFO).read_text())["max_length"]
        self.batch_size = batch_size

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """[n, num_classes] logits, rows in input order (batches of similar length)."""
        ids = self.tokenizer_(list(texts), truncation=True, max_length=self.max_length_)[
            "input_ids"
        ]
        pad = self.tokenizer_.pad_token_id
        out = np.zeros((len(ids), self.schema_.num_classes), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            feed = {"input_ids": input_ids, "attention_mask": mask}
            out[rows] = self.session_.run(["logits"], {k: feed[k] for k in self.input_names_})[0]
        return out

    def predict_proba(self, X):
        """[n, n_classes] probabilities in ``classes_`` order; one string gives one row."""
        texts = [X] if isinstance(X, str) else list(X)
        proba = to_proba(self.predict_logits(texts), self.schema_.multi_label, self.temperature_)
        return proba[0] if isinstance(X, str) else proba

    def predict(self, X):
        """Label strings (lists of them for multi-label); one string gives one answer."""
        proba = self.predict_proba([X] if isinstance(X, str) else X)
        labels = self.schema_.decode(self.schema_.decide(proba))
        return labels[0] if isinstance(X, str) else labels
