"""Classify texts with an ONNX export of an llmclf run: no PyTorch, no transformers, no llmclf.

    pip install onnxruntime tokenizers numpy
    llmclf export runs/bbc --format onnx --quantize int8     # once, where llmclf is installed
    python classify_onnx.py runs/bbc/onnx "Shares fell sharply" "The striker scored twice"

Prints one label per text, one per line (a multi-label run: its labels joined by the run's
separator; an empty line when none passes its threshold). Each text runs alone, as an app
classifying what a user just typed would run it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from tokenizers import Tokenizer


def read(folder: Path, name: str) -> dict:
    path = folder / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def main(folder: str, texts: list[str]) -> None:
    folder = Path(folder)
    info = read(folder, "llmclf_export.json")  # the graph's file, max_length
    schema = read(folder, "labels.json")  # classes, multi_label, thresholds, label_sep
    temperature = read(folder, "calibration.json").get("temperature", 1.0)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))  # appends EOS where trained so
    tokenizer.no_padding()
    tokenizer.enable_truncation(info["max_length"])
    session = onnxruntime.InferenceSession(
        str(folder / info["file"]), providers=["CPUExecutionProvider"]
    )
    classes = schema["classes"]
    for text in texts:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        logits = session.run(["logits"], feed)[0][0] / temperature
        if schema["multi_label"]:
            proba = 1 / (1 + np.exp(-logits))
            thresholds = schema["thresholds"] or [0.5] * len(classes)
            chosen = [c for c, p, t in zip(classes, proba, thresholds) if p >= t]
            print(schema["label_sep"].join(chosen))
        else:
            print(classes[int(np.argmax(logits))])


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python classify_onnx.py EXPORT_FOLDER TEXT [TEXT ...]")
    main(sys.argv[1], sys.argv[2:])
