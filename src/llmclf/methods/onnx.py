"""An exported run (``llmclf export --format onnx``) predicted by ONNX Runtime: the same
``predict`` / ``predict_proba`` as llmclf's classifiers, with no torch in the prediction
path (the ``tokenizers`` library, numpy and onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmclf.batching import forward_overhead_tokens, length_sorted_batches
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.methods.base import Predictor
from llmclf.run_folder import EXPORT_INFO, ONNX_FILE, RunFolder, read_json

TOKENIZER_FILE = "tokenizer.json"


def is_onnx_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an ONNX export (its info file says so)."""
    info = Path(folder) / EXPORT_INFO
    if not info.is_file():
        return False
    return read_json(info, "export info").get("format") == "onnx"


def pad_ids(sequences: list[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad token-id lists into int64 ``input_ids`` and ``attention_mask`` arrays."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class OnnxClassifier(Predictor):
    """An exported run served by ONNX Runtime: the same ``predict`` / ``predict_proba``
    as llmclf's classifiers.

    Example:
        >>> clf = OnnxClassifier("runs/student/onnx")  # doctest: +SKIP
        >>> clf.predict("The striker scored twice")  # doctest: +SKIP
        'sport'
    """

    method = "onnx"

    def __init__(
        self,
        folder: str | Path,
        batch_size: int = 16,
        threads: int | None = None,
        *,
        batch_invariant: bool = False,
        progress: bool = False,
    ):
        import onnxruntime
        from tokenizers import Tokenizer

        folder = Path(folder)
        if not (folder / EXPORT_INFO).is_file():
            raise LlmclfError(f"{folder} holds no {EXPORT_INFO}: export a run with llmclf export")
        self.info_ = read_json(folder / EXPORT_INFO, "export info")
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
        self.max_length_ = self.info_["max_length"]
        self.tokenizer_ = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer_.no_padding()
        self.tokenizer_.enable_truncation(self.max_length_)
        self.pad_id_ = self.info_.get("pad_token_id", 0)
        self.quantize_ = self.info_.get("quantize", "none")
        self.schema_ = LabelSchema.load(folder)
        self.classes_ = np.array(self.schema_.classes)
        self.temperature_ = RunFolder(folder).temperature()
        self.folder_ = folder
        self.batch_size = batch_size
        self.batch_invariant = batch_invariant
        self.progress = progress

    @classmethod
    def load(cls, folder: str | Path, int8: bool = False, **overrides) -> OnnxClassifier:
        """An export opened as ``load_classifier`` opens a run, with a run's load options
        (``LoadOptions``: ``eval_batch_size``, ``batch_invariant``, ``progress``; a CPU
        ``device``; the rest, such as ``dtype``, say how PyTorch computes and do not apply)."""
        device = overrides.get("device")
        if device not in (None, "auto", "cpu"):
            raise LlmclfError(
                f"{folder} is an ONNX export, run by ONNX Runtime on the CPU: drop --device {device}"
            )
        if int8:
            raise LlmclfError(
                f"--int8 quantizes a PyTorch run, and {folder} is an ONNX export (quantize: "
                f"{read_json(Path(folder) / EXPORT_INFO, 'export info').get('quantize', 'none')}"
                "): export the run with --quantize int8 instead"
            )
        return cls(
            folder,
            batch_size=overrides.get("eval_batch_size") or 16,
            batch_invariant=bool(overrides.get("batch_invariant")),
            progress=bool(overrides.get("progress", False)),
        )

    def input_budget(self) -> int:
        """The exported run's ``max_length``: longer texts are cut to it."""
        return self.max_length_

    def input_tokens(self, texts: list[str]) -> list[int]:
        """How many tokens each text is read as (special tokens included, after the cut)."""
        return [len(ids) for ids in self._encode(texts)]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer_.encode_batch(list(texts))]

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """[n, num_classes] logits, rows in input order (batches of similar length)."""
        ids = self._encode(texts)
        out = np.zeros((len(ids), self.schema_.num_classes), dtype=np.float32)
        lengths = [len(x) for x in ids]  # onnxruntime on CPU: a CPU forward's overhead
        if self.batch_invariant:  # each text alone, at its own length: one answer per text
            batches = [[i] for i in range(len(ids))]
        else:
            overhead = forward_overhead_tokens("cpu")
            batches = length_sorted_batches(lengths, self.batch_size, overhead)
        for rows in batches:
            feed = pad_ids([ids[i] for i in rows], self.pad_id_)
            out[rows] = self.session_.run(["logits"], {k: feed[k] for k in self.input_names_})[0]
        return out
