"""``--method`` names and the classifier classes behind them.

A new method is a module under ``methods/`` with a ``ClassifierBase`` subclass and its
``MethodConfig``; adding it to ``METHODS`` gives it ``llmclf train --method NAME``, its
flags, ``evaluate`` / ``predict`` / ``compare`` / ``experiment`` support and ``serve``-style
loading by ``runs.load_classifier`` (see docs/architecture.md).
"""

from __future__ import annotations

from llmclf.config import MethodConfig
from llmclf.errors import LlmclfError
from llmclf.methods.base import ClassifierBase
from llmclf.methods.encoder import EncoderClassifier
from llmclf.methods.head import HeadClassifier
from llmclf.methods.instruct.model import InstructClassifier
from llmclf.methods.tfidf import TfidfClassifier

METHODS: dict[str, type[ClassifierBase]] = {
    "head": HeadClassifier,
    "instruct": InstructClassifier,
    "encoder": EncoderClassifier,
    "tfidf": TfidfClassifier,
}


def method_classes() -> dict[str, type[ClassifierBase]]:
    """--method name -> classifier class."""
    return dict(METHODS)


def method_class(name: str) -> type[ClassifierBase]:
    if name not in METHODS:
        raise LlmclfError(f"--method must be one of {', '.join(METHODS)}, not {name!r}")
    return METHODS[name]


def every_config_class() -> list[type[MethodConfig]]:
    return [cls.config_class for cls in METHODS.values()]


def section_classes() -> list[type]:
    """Every section of every method, each once, in the order the methods name them."""
    out: list[type] = []
    for config in every_config_class():
        out.extend(c for c in config.sections().values() if c not in out)
    return out
