"""What every llmclf classifier shares: the scikit-learn-like surface and the run folder.

A method (head, instruct, ...) subclasses ``ClassifierBase`` and supplies ``_fit``,
``predict_logits``, ``_save_model``, ``_load_model`` and ``_count_parameters``; options
are the fields of its ``config_classes``, exactly the CLI flags with underscores.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llmclf import __version__
from llmclf.calibration import (
    calibration_metrics,
    fit_temperature,
    rescale_thresholds,
    to_proba,
)
from llmclf.config import DataConfig, TrainConfig, build, flatten, to_dict
from llmclf.data import is_label_list, parse_label, sample
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema

CONFIG_FILE = "config.yaml"


def option_names(config_classes: tuple) -> set[str]:
    return {f.name for cls in config_classes for f in dataclasses.fields(cls)}


class ClassifierBase:
    """The scikit-learn-like estimator surface shared by every method.

    ``__init__`` only stores (and name-checks) options; ``fit`` returns ``self``; learned
    state ends in ``_``; ``predict_proba`` columns follow ``classes_``.
    """

    method: str = ""
    config_classes: tuple = ()

    def __init__(self, model: str | None = None, *, progress: bool = True, **options: Any):
        if model is not None:
            options["model"] = model
        if "random_state" in options:
            options["seed"] = options.pop("random_state")
        unknown = sorted(set(options) - option_names(self.config_classes))
        if unknown:
            valid = ", ".join(sorted(option_names(self.config_classes)))
            raise LlmclfError(
                f"{type(self).__name__} has no option {', '.join(unknown)} (options: {valid})"
            )
        self.options = options
        self.progress = progress

    # -- scikit-learn plumbing ---------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"progress": self.progress, **self.options}

    def set_params(self, **params: Any) -> ClassifierBase:
        self.__init__(**{**self.get_params(), **params})
        return self

    def _configs(self) -> tuple:
        """The option values as this method's config dataclasses (validated)."""
        return tuple(build(cls, self.options) for cls in self.config_classes)

    def _check_fitted(self) -> None:
        if not hasattr(self, "schema_"):
            raise LlmclfError(
                f"this {type(self).__name__} is not fitted yet: call fit() or load() first"
            )

    # -- fit ---------------------------------------------------------------------------

    def fit(self, X, y, *, eval_set: tuple | None = None, output_dir: str | Path | None = None):
        """Train on texts ``X`` and labels ``y`` (strings, or lists of strings for multi-label).

        ``eval_set=(texts, labels)`` picks the best epoch and tunes multi-label thresholds;
        without it, ``validation_fraction`` of the training data is held out for that.
        ``output_dir`` keeps Trainer checkpoints there (``resume=True`` continues them).
        """
        texts, labels, multi_label = self._texts_and_labels(X, y)
        schema = LabelSchema.from_labels(labels, multi_label)
        train_cfg = build(TrainConfig, self.options) if TrainConfig in self.config_classes else None
        if eval_set is not None:
            eval_texts, eval_labels, _ = self._texts_and_labels(*eval_set, multi_label=multi_label)
            schema.check_known(eval_labels, "the validation data")
        elif train_cfg and train_cfg.validation_fraction > 0 and len(texts) >= 10:
            texts, labels, eval_texts, eval_labels = self._hold_out(
                texts, labels, multi_label, train_cfg.validation_fraction, train_cfg.seed
            )
        else:
            eval_texts, eval_labels = None, None
        start = time.perf_counter()
        self._fit(
            texts, labels, eval_texts, eval_labels, schema, Path(output_dir) if output_dir else None
        )
        self.fit_seconds_ = time.perf_counter() - start
        self.int8_ = False
        self.schema_ = schema
        self.classes_ = np.array(schema.classes)
        self.temperature_ = 1.0
        self.trainable_params_, self.total_params_ = self._count_parameters()
        return self

    def _texts_and_labels(self, X, y, multi_label: bool | None = None):
        texts = [X] if isinstance(X, str) else list(X)
        raw = list(y)
        if len(texts) != len(raw):
            raise LlmclfError(f"{len(texts)} texts but {len(raw)} labels")
        if not texts:
            raise LlmclfError("no training texts")
        if multi_label is None:
            multi_label = any(is_label_list(v) for v in raw)
        labels = [parse_label(v, multi_label, None) for v in raw]
        missing = sum(1 for t, lab in zip(texts, labels) if lab is None or not str(t).strip())
        if missing:
            raise LlmclfError(
                f"{missing} examples have an empty text or no label: remove them first"
            )
        return [str(t) for t in texts], labels, multi_label

    @staticmethod
    def _hold_out(texts, labels, multi_label, fraction, seed):
        import pandas as pd

        from llmclf.data import Examples

        examples = Examples(texts, labels, pd.DataFrame({"i": range(len(texts))}))
        held = sample(examples, max(1, int(round(len(texts) * fraction))), seed, multi_label)
        chosen = set(held.frame["i"])
        keep = [i for i in range(len(texts)) if i not in chosen]
        return [texts[i] for i in keep], [labels[i] for i in keep], held.texts, held.labels

    # -- predict -----------------------------------------------------------------------

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        """[n, n_classes] probabilities, columns in ``classes_`` order (sigmoid per class
        for multi-label, softmax otherwise). A single string gives a single row."""
        self._check_fitted()
        texts = [X] if isinstance(X, str) else [str(t) for t in X]
        proba = to_proba(self.predict_logits(texts), self.schema_.multi_label, self.temperature_)
        return proba[0] if isinstance(X, str) else proba

    def predict(self, X):
        """Label strings (lists of them for multi-label); a single string gives one answer."""
        proba = self.predict_proba([X] if isinstance(X, str) else X)
        labels = self.schema_.decode(self.schema_.decide(proba))
        return labels[0] if isinstance(X, str) else labels

    def prediction_extras(self) -> tuple[dict, dict]:
        """About the last ``predict_proba`` call: figures for metrics.json and extra
        per-row columns for prediction tables (e.g. unparsed generated answers). None here."""
        return {}, {}

    def score(self, X, y) -> float:
        """Accuracy (subset accuracy for multi-label), as scikit-learn's ``score``."""
        predicted = self.predict(X)
        truth = [sorted(v) if is_label_list(v) else str(v) for v in y]
        return float(np.mean([p == t for p, t in zip(predicted, truth)]))

    # -- calibration -------------------------------------------------------------------

    def calibrate(self, X, y, *, where: str = "the calibration data"):
        """Fit temperature scaling on held-out texts ``X`` and labels ``y`` (a validation
        split, never the training data) and return ``self``.

        Sets ``temperature_`` (``predict_proba`` divides the logits by it), moves multi-label
        thresholds so that no decision changes, and keeps before / after NLL, ECE and Brier
        on ``X`` in ``calibration_``.

        Example:
            >>> clf.calibrate(val_texts, val_labels).temperature_  # doctest: +SKIP
            1.84
        """
        self._check_fitted()
        texts, labels, _ = self._texts_and_labels(X, y, multi_label=self.schema_.multi_label)
        self.schema_.check_known(labels, where)
        logits = np.asarray(self.predict_logits(texts), dtype=np.float64)
        truth = self.schema_.encode(labels).astype(np.int64)
        temperature = fit_temperature(logits, truth)
        multi_label = self.schema_.multi_label
        if multi_label and self.schema_.thresholds:
            self.schema_.thresholds = rescale_thresholds(
                self.schema_.thresholds, self.temperature_, temperature
            )
        before = calibration_metrics(truth, to_proba(logits, multi_label, 1.0))
        after = calibration_metrics(truth, to_proba(logits, multi_label, temperature))
        self.temperature_ = temperature
        self.calibration_ = {
            "temperature": temperature,
            "method": "temperature scaling (NLL)",
            "fitted_on": where,
            "n": len(texts),
            "before": before,
            "after": after,
        }
        return self

    def quantize_int8(self):
        """Predict with int8 weights and activations from now on (CPU only; see
        ``llmclf.int8``): faster, with slightly different probabilities. Head and instruct
        classifiers over a full-precision base; a quantized classifier cannot be saved."""
        self._check_fitted()
        if self.method not in ("head", "instruct"):
            raise LlmclfError(f"--int8 applies to head and instruct runs, not {self.method}")
        from llmclf.int8 import quantize_int8

        quantize_int8(self.model_)
        self.int8_ = True
        return self

    # -- persistence -------------------------------------------------------------------

    def resolved_config(self) -> dict[str, Any]:
        return {"method": self.method, "llmclf_version": __version__, **to_dict(*self._configs())}

    def save(self, path: str | Path) -> Path:
        """Write the model, tokenizer, label schema and resolved config to ``path``."""
        self._check_fitted()
        if getattr(self, "int8_", False):
            raise LlmclfError(
                "this classifier was quantized to int8 for prediction and cannot be saved: "
                "save it before quantize_int8()"
            )
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_model(folder)
        self.schema_.save(folder)
        calibration = {**getattr(self, "calibration_", {}), "temperature": self.temperature_}
        (folder / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
        (folder / CONFIG_FILE).write_text(yaml.safe_dump(self.resolved_config(), sort_keys=False))
        return folder

    @classmethod
    def load(cls, path: str | Path, **overrides: Any):
        """A fitted classifier from a folder written by ``save`` (or ``llmclf train``).

        ``overrides`` change runtime options such as ``device`` or ``eval_batch_size``.
        """
        folder = Path(path)
        config = read_config(folder)
        names = option_names(cls.config_classes)
        options = {k: v for k, v in flatten(config).items() if k in names}
        clf = cls(**{**options, **overrides})
        clf.schema_ = LabelSchema.load(folder)
        clf.classes_ = np.array(clf.schema_.classes)
        calibration = folder / "calibration.json"
        stored = json.loads(calibration.read_text()) if calibration.is_file() else {}
        clf.temperature_ = float(stored.get("temperature", 1.0))
        if "fitted_on" in stored:  # written by calibrate()
            clf.calibration_ = stored
        clf._load_model(folder)
        clf.trainable_params_, clf.total_params_ = clf._count_parameters()
        return clf


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise LlmclfError(f"{folder} does not exist")
    if not path.is_file():
        raise LlmclfError(f"{folder} holds no {CONFIG_FILE}: it is not a finished llmclf run")
    return yaml.safe_load(path.read_text())


def data_config_of(folder: Path) -> DataConfig:
    """The data options a run was trained with (columns, separator), for evaluate / predict."""
    return build(DataConfig, flatten(read_config(folder).get("data", {})))
