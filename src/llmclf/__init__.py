"""llmclf: decoder-only LLMs as text classifiers on limited hardware."""

__version__ = "0.1.0"

import logging as _logging  # noqa: E402

# bitsandbytes warns at import, on CPUs that report AVX512-BF16, that an optional kernel
# package from the Hugging Face hub is missing; its own CPU path works without it.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
# torchao (for --int8; PEFT imports it whenever it is installed) warns at import about each
# CUDA extension a CPU-only machine cannot load, and torch about how torchao registers enums.
_logging.getLogger("torchao").setLevel(_logging.ERROR)
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)

from llmclf.encoder import EncoderClassifier  # noqa: E402
from llmclf.errors import LlmclfError  # noqa: E402
from llmclf.export import OnnxClassifier  # noqa: E402
from llmclf.head import HeadClassifier  # noqa: E402
from llmclf.instruct import InstructClassifier  # noqa: E402
from llmclf.labels import LabelSchema  # noqa: E402
from llmclf.tfidf import TfidfClassifier  # noqa: E402

__all__ = [
    "EncoderClassifier",
    "HeadClassifier",
    "InstructClassifier",
    "LabelSchema",
    "LlmclfError",
    "OnnxClassifier",
    "TfidfClassifier",
    "__version__",
]
