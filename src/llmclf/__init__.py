"""llmclf: decoder-only LLMs as text classifiers on limited hardware."""

import logging as _logging

from llmclf._version import __version__

# bitsandbytes warns at import, on CPUs that report AVX512-BF16, that an optional kernel
# package from the Hugging Face hub is missing; its own CPU path works without it.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
# torchao (for --int8; PEFT imports it whenever it is installed) warns at import about each
# CUDA extension a CPU-only machine cannot load, and torch about how torchao registers enums.
_logging.getLogger("torchao").setLevel(_logging.ERROR)
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)

from llmclf.errors import LlmclfError  # noqa: E402
from llmclf.labels import LabelSchema  # noqa: E402
from llmclf.methods.encoder import EncoderClassifier  # noqa: E402
from llmclf.methods.gguf import GgufClassifier  # noqa: E402
from llmclf.methods.head import HeadClassifier  # noqa: E402
from llmclf.methods.instruct.model import InstructClassifier  # noqa: E402
from llmclf.methods.onnx import OnnxClassifier  # noqa: E402
from llmclf.methods.tfidf import TfidfClassifier  # noqa: E402
from llmclf.runs.evaluate import load_classifier  # noqa: E402

__all__ = [
    "EncoderClassifier",
    "GgufClassifier",
    "HeadClassifier",
    "InstructClassifier",
    "LabelSchema",
    "LlmclfError",
    "OnnxClassifier",
    "TfidfClassifier",
    "__version__",
    "load_classifier",
]
