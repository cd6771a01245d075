"""An exported encoder (``llmclf export``) served by ONNX Runtime, without torch in the
prediction path: the same ``predict`` / ``predict_proba`` as llmclf's classifiers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmclf.batching import (
    forward_overhead_tokens,
    length_sorted_batches,
    pad_batch,
    truncated_ids,
)
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.methods.base import Predictor
from llmclf.run_folder import EXPORT_INFO, ONNX_FILE, RunFolder, read_json


class OnnxClassifier(Predictor):
    """An exported encoder served by ONNX Runtime: the same ``predict`` / ``predict_proba``
    as llmclf's classifiers.

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
        self.tokenizer_ = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        self.schema_ = LabelSchema.load(folder)
        self.classes_ = np.array(self.schema_.classes)
        self.temperature_ = RunFolder(folder).temperature()
        self.max_length_ = read_json(folder / EXPORT_INFO, "export info")["max_length"]
        self.batch_size = batch_size

    def input_budget(self) -> int:
        """The exported run's ``max_length``: longer texts are cut to it."""
        return self.max_length_

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """[n, num_classes] logits, rows in input order (batches of similar length)."""
        ids = truncated_ids(self.tokenizer_, texts, self.max_length_)
        pad = self.tokenizer_.pad_token_id
        out = np.zeros((len(ids), self.schema_.num_classes), dtype=np.float32)
        lengths = [len(x) for x in ids]  # onnxruntime on CPU: a CPU forward's overhead
        for rows in length_sorted_batches(lengths, self.batch_size, forward_overhead_tokens("cpu")):
            batch = pad_batch([ids[i] for i in rows], pad)
            feed = {name: tensor.numpy() for name, tensor in batch.items()}
            out[rows] = self.session_.run(["logits"], {k: feed[k] for k in self.input_names_})[0]
        return out
