"""``--method`` names and the classifier classes behind them: a live registry.

A method is a ``ClassifierBase`` subclass with its ``MethodConfig``, defined in any module
(one under ``methods/``, a plug-in, a test file); ``register_method`` (also a class
decorator) gives it ``llmclf train --method NAME``, its flags, ``evaluate`` / ``predict`` /
``calibrate`` / ``compare`` / ``experiment`` / ``serve`` support and loading by
``runs.load_classifier`` (see docs/architecture.md). What it supports beyond that (long-text
modes, int8, exporters, predict-time options) it declares on its class, and the core reads
the declarations. Every reader below reads the live registry.

All methods share one ``llmclf train`` flag set: ``--pooling`` is one flag, whichever
method's section declares it. So an option name must mean one thing across methods:
registering a method whose option has the name of another method's option but a different
type or other choices is refused (``LlmclfError`` naming the option and both methods);
rename one. Help texts and defaults may differ (a method's ``MethodConfig.defaults``).

Example:
    >>> @register_method  # doctest: +SKIP
    ... class CentroidClassifier(ClassifierBase):
    ...     method = "centroid"
    ...     config_class = CentroidClassifierConfig
"""

from __future__ import annotations

import dataclasses

from llmclf.config import MethodConfig, flag
from llmclf.errors import LlmclfError
from llmclf.methods.base import REGISTERED, ClassifierBase
from llmclf.methods.encoder import EncoderClassifier
from llmclf.methods.head import HeadClassifier
from llmclf.methods.instruct.model import InstructClassifier
from llmclf.methods.setfit import SetFitClassifier
from llmclf.methods.tfidf import TfidfClassifier

# the live table (kept in methods/base.py so that a refusal there can name the methods
# that declare what one does not)
METHODS = REGISTERED


def _meaning(f: dataclasses.Field) -> tuple[str, tuple | None]:
    """What an option's flag takes: its type and its choices."""
    choices = f.metadata.get("choices")
    kind = f.type.__name__ if isinstance(f.type, type) else str(f.type)  # int or "int"
    return kind.replace(" ", ""), tuple(choices) if choices else None


def _shown(f: dataclasses.Field) -> str:
    kind, choices = _meaning(f)
    return f"{kind}, one of {', '.join(map(str, choices))}" if choices else kind


def _check_flags(cls: type[ClassifierBase]) -> None:
    """Refuse an option of ``cls`` that a registered method gives another type or choices."""
    fields = cls.config_class.option_fields()
    for other in METHODS.values():
        for name, theirs in other.config_class.option_fields().items():
            ours = fields.get(name)
            if ours is not None and _meaning(ours) != _meaning(theirs):
                raise LlmclfError(
                    f"--method {cls.method} cannot be registered: its option {flag(name)} "
                    f"({_shown(ours)}) means something else in --method {other.method} "
                    f"({_shown(theirs)}); all methods share one flag set, so rename one"
                )


def register_method(cls: type[ClassifierBase]) -> type[ClassifierBase]:
    """Make ``cls`` a ``--method`` (by its ``method`` name) and return it, so it also works
    as a class decorator. Registering the same class again does nothing; another class
    under a taken name, or an option that clashes with another method's, is refused."""
    if not (isinstance(cls, type) and issubclass(cls, ClassifierBase)):
        raise TypeError(f"register_method takes a ClassifierBase subclass, not {cls!r}")
    if not cls.method:
        raise LlmclfError(f"{cls.__name__} has no method name: set its `method` attribute")
    taken = METHODS.get(cls.method)
    if taken is cls:
        return cls
    if taken is not None:
        raise LlmclfError(
            f"--method {cls.method} is taken by {taken.__name__}: give {cls.__name__} "
            "another method name"
        )
    _check_flags(cls)
    METHODS[cls.method] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove the method ``name`` (a test's own method, at its end); unknown names pass."""
    METHODS.pop(name, None)


def method_classes() -> dict[str, type[ClassifierBase]]:
    """--method name -> classifier class, in registration order."""
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


# What the registered methods add to the commands' options, read from their declarations
# (the CLI makes a flag of each; a command's function receives them as keywords).

Fields = dict[str, dataclasses.Field]


def method_option_fields(*names: str) -> Fields:
    """The fields of these options, from whichever registered method declares them."""
    out: Fields = {}
    for cls in METHODS.values():
        fields = cls.config_class.option_fields()
        out.update({n: fields[n] for n in names if n in fields and n not in out})
    return out


def section_fields(*extra: type) -> Fields:
    """The fields of the sections ``extra`` (e.g. ``DataConfig``), then of every section of
    every method: ``train``'s options, one flag a name."""
    out: Fields = {}
    for section in [*extra, *section_classes()]:
        for f in dataclasses.fields(section):
            out.setdefault(f.name, f)
    return out


def predict_time_fields() -> Fields:
    """Options a loaded run takes anew when it predicts (an instruct run's
    ``predict_mode``, ...): every method's ``predict_time_options()``."""
    names = sorted({n for cls in METHODS.values() for n in cls.predict_time_options()})
    return method_option_fields(*names)


def zero_shot_fields() -> Fields:
    """What ``evaluate --zero-shot`` takes: each method's ``zero_shot_options``."""
    names = [n for cls in METHODS.values() for n in cls.zero_shot_options]
    return method_option_fields(*dict.fromkeys(names))


for _builtin in (
    HeadClassifier,
    InstructClassifier,
    EncoderClassifier,
    TfidfClassifier,
    SetFitClassifier,
):
    register_method(_builtin)
