"""Classify texts with a GGUF export of an llmclf run through llama.cpp: no PyTorch, no
transformers, no llmclf.

    pip install llama-cpp-python tokenizers safetensors numpy
    llmclf export runs/bbc --format gguf --quantize q8_0    # once, where llmclf is installed
    python classify_gguf.py runs/bbc/gguf "Shares fell sharply" "The striker scored twice"

Prints one label per text, one per line (a multi-label run: its labels joined by the run's
separator; an empty line when none passes its threshold). Each text runs alone, as an app
classifying what a user just typed would run it.

What any llama.cpp program does with the folder: run the GGUF for embeddings with the
pooling ``llmclf_export.json`` names (also in the GGUF's metadata, so ``llama-server
--embeddings`` pools the same way), feed it the token ids of the run's ``tokenizer.json``
(which appends EOS where the run's pooling reads it; the GGUF's own tokenizer does the
same), and apply the head in ``head.safetensors`` (``weight`` [classes, hidden], ``bias``
when present) to the pooled vector, unnormalised.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import llama_cpp
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

POOLING = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}


def read(folder: Path, name: str) -> dict:
    path = folder / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def embed(model: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    """The pooled vector of one text, given as token ids (llama.cpp's batch API)."""
    batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
    try:
        for pos, token in enumerate(ids):
            batch.token[pos], batch.pos[pos], batch.n_seq_id[pos] = token, pos, 1
            batch.seq_id[pos][0], batch.logits[pos] = 0, True
        batch.n_tokens = len(ids)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(model.ctx), True)
        if llama_cpp.llama_decode(model.ctx, batch) != 0:
            raise RuntimeError("llama.cpp could not run the text")
        vector = llama_cpp.llama_get_embeddings_seq(model.ctx, 0)
        return np.ctypeslib.as_array(vector, shape=(model.n_embd(),)).copy()
    finally:
        llama_cpp.llama_batch_free(batch)


def main(folder: str, texts: list[str]) -> None:
    folder = Path(folder)
    info = read(folder, "llmclf_export.json")  # the GGUF's file, pooling, max_length
    schema = read(folder, "labels.json")  # classes, multi_label, thresholds, label_sep
    temperature = read(folder, "calibration.json").get("temperature", 1.0)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(info["max_length"])
    head = load_file(str(folder / info["head"]))
    context = -(-info["max_length"] // 256) * 256  # llama.cpp's 256 sequences: a multiple
    model = llama_cpp.Llama(
        model_path=str(folder / info["file"]),
        embedding=True,
        pooling_type=POOLING[info["pooling"]],
        n_ctx=context,
        n_batch=context,
        n_ubatch=context,
        n_threads=len(os.sched_getaffinity(0)),
        n_threads_batch=len(os.sched_getaffinity(0)),
        verbose=False,
    )
    classes = schema["classes"]
    for text in texts:
        pooled = embed(model, tokenizer.encode(text).ids)
        logits = head["weight"] @ pooled + head.get("bias", 0.0)
        logits = logits / temperature
        if schema["multi_label"]:
            proba = 1 / (1 + np.exp(-logits))
            thresholds = schema["thresholds"] or [0.5] * len(classes)
            chosen = [c for c, p, t in zip(classes, proba, thresholds) if p >= t]
            print(schema["label_sep"].join(chosen))
        else:
            print(classes[int(np.argmax(logits))])
    model.close()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python classify_gguf.py EXPORT_FOLDER TEXT [TEXT ...]")
    main(sys.argv[1], sys.argv[2:])
