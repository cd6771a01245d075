"""An exported run (``llmclf export``) predicted by another runtime: the same ``predict``
/ ``predict_proba`` as llmclf's classifiers, with no torch in the prediction path.

``ExportedClassifier`` holds what every export shares: the info file, the run's own
tokenizer (``tokenizer.json`` through the ``tokenizers`` library: the exact token ids the
run was trained on, EOS appended where its pooling reads it), the labels, the
temperature, and batches of similar length. A runtime subclass opens its files
(``_open``) and turns right-padded token ids into logits (``_logits``):
``llmclf.methods.onnx.OnnxClassifier`` (ONNX Runtime) and
``llmclf.methods.gguf.GgufClassifier`` (llama.cpp). ``load_export`` opens a folder by its
info file's ``format``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from llmclf.batching import forward_overhead_tokens, length_sorted_batches
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.methods.base import Predictor
from llmclf.run_folder import EXPORT_INFO, RunFolder, read_json

TOKENIZER_FILE = "tokenizer.json"


def export_format(folder: str | Path) -> str | None:
    """The format of the export in ``folder`` (its info file's ``format``), or None when
    ``folder`` is not an export."""
    info = Path(folder) / EXPORT_INFO
    if not info.is_file():
        return None
    return read_json(info, "export info").get("format")


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an export a runtime other than PyTorch predicts with."""
    return export_format(folder) in runtimes()


def pad_ids(sequences: list[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad token-id lists into int64 ``input_ids`` and ``attention_mask`` arrays."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class ExportedClassifier(Predictor):
    """An exported run: ``predict`` / ``predict_proba`` / ``predict_logits`` through its
    runtime, with a run's batching (length-sorted batches of ``batch_size``; one text at
    a time, at its own length, with ``batch_invariant``)."""

    method = "export"
    format = ""  # the info file's format
    runtime = ""  # how a message names the runtime: "ONNX Runtime"
    title = ""  # how a message names the exported model: "the ONNX model"
    kind = ""  # how a message names the folder: "an ONNX export"
    int8_quantize = ""  # the --quantize value that stands for PyTorch's --int8

    def __init__(
        self,
        folder: str | Path,
        batch_size: int = 16,
        threads: int | None = None,
        *,
        batch_invariant: bool = False,
        progress: bool = False,
    ):
        from tokenizers import Tokenizer

        folder = Path(folder)
        if not (folder / EXPORT_INFO).is_file():
            raise LlmclfError(f"{folder} holds no {EXPORT_INFO}: export a run with llmclf export")
        self.info_ = read_json(folder / EXPORT_INFO, "export info")
        self.max_length_ = self.info_["max_length"]
        self.pad_id_ = self.info_.get("pad_token_id", 0)
        self.quantize_ = self.info_.get("quantize", "none")
        self.schema_ = LabelSchema.load(folder)
        self.classes_ = np.array(self.schema_.classes)
        self.temperature_ = RunFolder(folder).temperature()
        self.folder_ = folder
        self.batch_size = batch_size
        self.batch_invariant = batch_invariant
        self.progress = progress
        self._open(folder, threads)
        self.tokenizer_ = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer_.no_padding()
        self.tokenizer_.enable_truncation(self.max_length_)

    def _open(self, folder: Path, threads: int | None) -> None:
        """Open the runtime's files in ``folder`` (``threads``: its CPU threads, None for
        the runtime's choice)."""
        raise NotImplementedError

    def _logits(self, ids: list[list[int]]) -> np.ndarray:
        """[len(ids), num_classes] float32 logits of one batch of token-id lists."""
        raise NotImplementedError

    @classmethod
    def load(cls, folder: str | Path, int8: bool = False, **overrides) -> ExportedClassifier:
        """An export opened as ``load_classifier`` opens a run, with a run's load options
        (``LoadOptions``: ``eval_batch_size``, ``batch_invariant``, ``progress``; a CPU
        ``device``; the rest, such as ``dtype``, say how PyTorch computes and do not apply)."""
        device = overrides.get("device")
        if device not in (None, "auto", "cpu"):
            raise LlmclfError(
                f"{folder} is {cls.kind}, run by {cls.runtime} on the CPU: drop --device {device}"
            )
        if int8:
            quantize = read_json(Path(folder) / EXPORT_INFO, "export info").get("quantize")
            raise LlmclfError(
                f"--int8 quantizes a PyTorch run, and {folder} is {cls.kind} (quantize: "
                f"{quantize}): export the run with --quantize {cls.int8_quantize} instead"
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
        if not ids:
            return out
        lengths = [len(x) for x in ids]
        if self.batch_invariant:  # each text alone, at its own length: one answer per text
            batches = [[i] for i in range(len(ids))]
        else:  # a CPU runtime: a CPU forward's overhead
            overhead = forward_overhead_tokens("cpu")
            batches = length_sorted_batches(lengths, self.batch_size, overhead)
        for rows in batches:
            out[rows] = self._logits([ids[i] for i in rows])
        return out


RUNTIMES: dict[str, type[ExportedClassifier]] = {}


def register_runtime(cls: type[ExportedClassifier]) -> type[ExportedClassifier]:
    """Make ``cls`` the runtime of exports whose info says ``format: cls.format``."""
    RUNTIMES[cls.format] = cls
    return cls


# the built-in runtimes' modules, imported by name when first asked for (each imports this
# module, and registers its classifier with register_runtime)
BUILT_IN_RUNTIMES = ("llmclf.methods.onnx", "llmclf.methods.gguf")


def runtimes() -> dict[str, type[ExportedClassifier]]:
    """Export format -> the classifier that runs it (the built-in ones registered)."""
    for module in BUILT_IN_RUNTIMES:
        importlib.import_module(module)
    return dict(RUNTIMES)


def load_export(folder: str | Path, int8: bool = False, **overrides) -> ExportedClassifier:
    """The export in ``folder`` opened by its runtime (``ExportedClassifier.load``)."""
    return runtimes()[export_format(folder)].load(folder, int8=int8, **overrides)
