"""An exported run (``llmclf export --format onnx``) predicted by ONNX Runtime: the same
``predict`` / ``predict_proba`` as llmclf's classifiers, with no torch in the prediction
path (the ``tokenizers`` library, numpy and onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmclf.errors import LlmclfError
from llmclf.methods.exported import (
    ExportedClassifier,
    export_format,
    pad_ids,
    register_runtime,
)
from llmclf.run_folder import ONNX_FILE

__all__ = ["OnnxClassifier", "is_onnx_export", "pad_ids"]


def is_onnx_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an ONNX export (its info file says so)."""
    return export_format(folder) == "onnx"


@register_runtime
class OnnxClassifier(ExportedClassifier):
    """An exported run served by ONNX Runtime: the same ``predict`` / ``predict_proba``
    as llmclf's classifiers.

    Example:
        >>> clf = OnnxClassifier("runs/student/onnx")  # doctest: +SKIP
        >>> clf.predict("The striker scored twice")  # doctest: +SKIP
        'sport'
    """

    method = "onnx"
    format = "onnx"
    runtime = "ONNX Runtime"
    title = "the ONNX model"
    kind = "an ONNX export"
    int8_quantize = "int8"

    def _open(self, folder: Path, threads: int | None) -> None:
        import onnxruntime

        graph = folder / self.info_.get("file", ONNX_FILE)  # exports before 0.3: model.onnx
        if not graph.is_file():
            raise LlmclfError(f"{folder} holds no {graph.name}: export the run again")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session_ = onnxruntime.InferenceSession(
            str(graph), options, providers=["CPUExecutionProvider"]
        )
        self.input_names_ = [i.name for i in self.session_.get_inputs()]

    def _logits(self, ids: list[list[int]]) -> np.ndarray:
        feed = pad_ids(ids, self.pad_id_)
        return self.session_.run(["logits"], {k: feed[k] for k in self.input_names_})[0]
