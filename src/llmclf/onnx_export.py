"""A run's classifier as an ONNX graph, and its quantized variants.

``write_graph`` traces ``ClassifierBase.export_module()`` (``(input_ids, attention_mask)
-> logits``) with ``torch.onnx.export`` (the torch.export-based exporter), dynamic batch
and sequence axes. ``quantize_graph`` writes a quantized copy with ONNX Runtime's own
tools (``onnxruntime.quantization``), never a hand-written scheme:

- ``int8``: every weight MatMul to 8-bit weights in blocks of 32 along the input
  dimension (``MatMulNBitsQuantizer``, bits 8, asymmetric), computed by ONNX Runtime's
  int8 kernels (``accuracy_level`` 4: each activation block of 32 quantized on the fly);
  the embedding table stays float32 (ONNX Runtime quantizes a Gather in 4 bits only).
  Whole-tensor dynamic int8 (``quantize_dynamic``) is not used: a causal LM's activations
  carry a few channels hundreds of times larger than the rest, and one scale per tensor
  crushes the others (77 % of a SmolLM2 run's labels kept, ../shared/OFFLINE_ASSETS.md);
- ``int4``: the same in 4 bits, the embedding table (Gather) too, which is most of a
  small model's bytes (SmolLM2-135M: 113 of 540 MB). Asymmetric blocks matter: on the
  demo run symmetric 4-bit kept 97.5 % of 200 labels, asymmetric 99.5 %.

The classification head (the last MatMul, a few rows) stays in float32 in both: it holds
a fraction of a per mille of the weights and all of the decision.

The file names are transformers.js's: ``onnx/model.onnx``, ``onnx/model_int8.onnx``,
``onnx/model_q4.onnx``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger("llmclf")

QUANTIZATIONS = ("none", "int8", "int4")
GRAPH_FILES = {"none": "model.onnx", "int8": "model_int8.onnx", "int4": "model_q4.onnx"}
BLOCK_SIZE = 32


def write_graph(module, tokenizer, path: Path, opset: int) -> None:
    """Trace ``module`` (``(input_ids, attention_mask) -> logits``) into ``path``, one file
    (weights inside the graph up to protobuf's 2 GB, beside it in ``path.data`` beyond)."""
    import torch

    sample = tokenizer(["a b c d", "e"], padding=True, return_tensors="pt")
    args = (sample["input_ids"], sample["attention_mask"])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: sequence}
    large = sum(p.numel() * 4 for p in module.parameters()) > 1.8 * 2**30
    # The exporter's deprecation warnings, its note that torchvision (never used by a
    # text model) is missing, and onnx_ir's line per deduplicated constant say nothing to
    # a user.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_shapes={"input_ids": axes, "attention_mask": axes},
                opset_version=opset,
                dynamo=True,
                external_data=large,
                verbose=False,
                report=False,
            )
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def head_node(model) -> str | None:
    """The name of the graph's last MatMul (or Gemm): the classification head."""
    last = None
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            last = node.name
    return last


def quantize_graph(source: Path, target: Path, quantize: str) -> dict:
    """Write ``source`` quantized as ``quantize`` (``int8`` or ``int4``) to ``target``;
    returns what was done, for the export's info file."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    bits = {"int8": 8, "int4": 4}[quantize]
    model = onnx.load(str(source))
    head = head_node(model)
    ops = ("MatMul", "Gather") if bits == 4 else ("MatMul",)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=BLOCK_SIZE,
        is_symmetric=False,
        accuracy_level=4,  # int8 compute: activations quantized per block of 32
        nodes_to_exclude=[head] if head else [],
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    # its INFO lines name every node of the graph, and it warns that it raises the opset
    # to 21 for the int4 type (which ONNX Runtime runs)
    quant_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantizer.process()
    finally:
        quant_log.setLevel(level)
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return {
        "quantize": quantize,
        "recipe": f"MatMulNBits {bits}-bit weights ({' and '.join(ops)}), blocks of "
        f"{BLOCK_SIZE}, asymmetric, int8 compute (accuracy_level 4); head kept float32",
        "kept_float32": [head] if head else [],
    }
