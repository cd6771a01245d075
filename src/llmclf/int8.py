"""Int8 prediction on CPU: every linear layer of the decoder blocks gets int8 weights (one
scale per output channel) and int8 activations quantized on the fly (one scale per token),
through torchao's dynamic quantization. The matmuls then run on the CPU's int8 units: on
this project's 2-core machines prediction ran 1.08x (Intel Xeon) to 1.4-2x (AMD EPYC) faster
than float32, but 0.79x the bf16 path on an AMD EPYC Zen 4 where --dtype auto picks bf16, at
a small change in the probabilities (measured in BENCHMARKS.md; the eager activation
quantization is what limits it). The head, the LM head, the embeddings and a chunked run's
window scorer stay in full precision. A quantized model can only predict: it cannot be
trained or saved.
"""

from __future__ import annotations

import torch

from llmclf.backbone import HEADS
from llmclf.errors import LlmclfError
from llmclf.long_text import ATTENTION_MODULE

# modules that stay in full precision: classification heads, the LM head (tied to the
# embeddings), a chunked run's window scorer (trained like the head), and the unused LoRA
# matrices of a merged adapter
KEEP_FULL_PRECISION = (*HEADS, ATTENTION_MODULE, "lora_")


def _kept(name: str) -> bool:
    return any(part.startswith(KEEP_FULL_PRECISION) for part in name.split("."))


def quantize_int8(model: torch.nn.Module) -> int:
    """Quantize ``model``'s decoder linear layers in place; returns how many were quantized.

    ``model`` must be a full-precision model (or a PEFT model whose adapter is merged) on the
    CPU, in eval mode for prediction only.
    """
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise LlmclfError(
            "--int8 is a CPU speed-up; on a GPU predict with the default bf16 (drop --int8 "
            "or pass --device cpu)"
        )
    if getattr(model, "hf_quantizer", None) is not None:  # PEFT passes it through
        raise LlmclfError("--int8 needs a full-precision run; this one's base is loaded in 4-bit")
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise LlmclfError(
            "--int8 needs torchao: pip install 'llmclf[int8]' (or pip install torchao)"
        ) from None

    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not _kept(name)
    ]
    if not names:
        raise LlmclfError("--int8 found no linear layers to quantize in this model")
    chosen = set(names)
    quantize_(
        model,
        Int8DynamicActivationInt8WeightConfig(),
        filter_fn=lambda module, name: name in chosen,
    )
    return len(names)
