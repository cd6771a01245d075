"""What every llmclf classifier shares: the scikit-learn-like surface and saving / loading.

A method (head, instruct, ...) subclasses ``ClassifierBase``, names its ``config_class``
(a ``MethodConfig``: one field per section of options) and supplies ``_fit``, ``_logits``,
``_save_model``, ``_load_model`` and ``_count_parameters``. Its options are the fields of
its config's sections, exactly the CLI flags with underscores; ``fit`` and ``load``
resolve them once into ``config_``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from llmclf._version import __version__
from llmclf.config import (
    AbstainConfig,
    DataConfig,
    MethodConfig,
    ModelConfig,
    TrainConfig,
    check_precision_bound,
    field_names,
    flatten,
    predict_time_names,
    runtime_names,
)
from llmclf.data import Examples, is_label_list, parse_label, sample
from llmclf.errors import LlmclfError
from llmclf.evaluation.calibration import (
    calibration_metrics,
    fit_temperature,
    rescale_thresholds,
    to_proba,
)
from llmclf.evaluation.hierarchy import parent_figures, parent_threshold_for_precision
from llmclf.evaluation.metrics import tune_thresholds
from llmclf.evaluation.selective import (
    PRECISION_BOUNDS,
    decisions,
    selection,
    threshold_for_coverage,
    threshold_for_precision,
)
from llmclf.labels import LabelSchema
from llmclf.run_folder import CONFIG_FILE, RunFolder, write_calibration, write_yaml

log = logging.getLogger("llmclf")


@dataclass(frozen=True)
class Prediction:
    """What one ``predict_details`` call says about its texts, returned to the caller
    rather than kept on the classifier, so that calls made one after another, or at once
    from several threads, each get their own.

    Example:
        >>> details = clf.predict_details(["Shares fell sharply"])  # doctest: +SKIP
        >>> details.proba.shape, details.figures  # doctest: +SKIP
        ((1, 3), {})
    """

    # [n, n_classes] probabilities, columns in ``classes_`` order (``predict_proba``'s)
    proba: np.ndarray
    # [n, n_classes] raw scores (``predict_logits``'), None where the method has none
    # (an instruct run's generated answers)
    logits: np.ndarray | None = None
    # numbers about the call, for metrics.json (instruct: predict_mode, unparsed answers)
    figures: dict[str, Any] = field(default_factory=dict)
    # extra per-row columns for prediction tables (instruct generate mode: each answer)
    columns: dict[str, list] = field(default_factory=dict)


class Predictor:
    """``predict_proba`` and ``predict`` from ``predict_logits``, ``schema_`` and
    ``temperature_``: the prediction surface of every classifier (an exported ONNX model
    included). A single string in gives a single answer out."""

    schema_: LabelSchema
    temperature_: float

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        """Nothing to check for a predictor built from a finished folder."""

    def predict_details(self, texts: list[str]) -> Prediction:
        """The probabilities of ``texts`` with the logits they came from and whatever else
        the method says about this call (``Prediction``): what ``evaluate`` and ``predict``
        write. Here: the softmax (per-class sigmoid for multi-label) of ``predict_logits``
        at ``temperature_``, no figures, no extra columns."""
        self._check_fitted()
        logits = self.predict_logits(texts)
        return Prediction(to_proba(logits, self.schema_.multi_label, self.temperature_), logits)

    def predict_proba(self, X) -> np.ndarray:
        """[n, n_classes] probabilities, columns in ``classes_`` order (sigmoid per class
        for multi-label, softmax otherwise). A single string gives a single row."""
        self._check_fitted()
        texts = [X] if isinstance(X, str) else [str(t) for t in X]
        proba = self.predict_details(texts).proba
        return proba[0] if isinstance(X, str) else proba

    def predict(self, X):
        """Label strings (lists of them for multi-label); a single string gives one answer."""
        proba = self.predict_proba([X] if isinstance(X, str) else X)
        labels = self.labels_from_proba(proba)
        return labels[0] if isinstance(X, str) else labels

    def labels_from_proba(self, proba: np.ndarray) -> list:
        """What ``predict`` answers for rows of ``predict_proba``: a label string per row (a
        list of them for multi-label, at the schema's thresholds; None for a row naming no
        label), so a caller holding the probabilities decides as ``predict`` does.

        A run that abstains (``schema_.abstain_below``) answers None for a withheld
        single-label answer, and leaves a withheld label out of a multi-label list
        (``abstained`` says which)."""
        proba = np.asarray(proba)
        decided = self.schema_.decide(proba)
        withheld = self.schema_.abstains(proba, decided)
        if not withheld.any():
            return self.schema_.decode(decided)
        if self.schema_.multi_label:
            return self.schema_.decode(np.where(withheld, 0, decided))
        labels = self.schema_.decode(decided)
        return [None if off else label for label, off in zip(labels, withheld)]

    def abstained(self, proba: np.ndarray) -> np.ndarray:
        """Which answers of ``predict_proba`` rows the run withholds: [n] booleans, or
        [n, k] per label for multi-label; all False for a run that never abstains.

        Example:
            >>> clf.set_abstention(0.9).abstained(clf.predict_proba(texts))  # doctest: +SKIP
            array([False,  True, False])
        """
        return self.schema_.abstains(np.asarray(proba))

    def parent_labels(self, proba: np.ndarray) -> list[str | None]:
        """What a run with ``--label-hierarchy`` still says where it abstains: for each row
        of ``predict_proba`` whose answer is withheld, the deepest parent of that answer
        whose classes together hold at least the parents' threshold (chosen with
        ``--target-precision``; else the abstention threshold): ``sport`` for a withheld
        ``sport/football``. None where the run answers or no parent is sure.

        Example:
            >>> clf.set_abstention(0.9).parent_labels(clf.predict_proba(texts))  # doctest: +SKIP
            [None, 'sport', None]
        """
        return self.schema_.parents(np.asarray(proba))

    def set_abstention(self, threshold: float | list[float] | None):
        """Abstain from now on when an answer's probability is below ``threshold`` (one per
        label allowed for multi-label; None: always answer), and return ``self``. Saved
        with the run (labels.json)."""
        self._check_fitted()
        if threshold is not None:
            for value in np.atleast_1d(threshold):  # 0: always answer; 1: only when certain
                if not 0 <= float(value) <= 1:
                    raise LlmclfError(f"an abstention threshold is a probability, not {value}")
        self.schema_ = self.schema_.with_abstention(threshold)
        return self

    def input_tokens(self, texts: list[str]) -> list[int]:
        """The tokens of the model input each text becomes, before any cut (the tokenizer's
        special tokens included): more than ``input_budget()`` means the text was cut."""
        encoded = self.tokenizer_(list(texts), add_special_tokens=True)["input_ids"]
        return [len(ids) for ids in encoded]

    def input_budget(self) -> int | None:
        """The most tokens of one model input this classifier reads (``input_tokens``
        beyond it are cut); None: no limit."""
        return None


class ClassifierBase(Predictor):
    """The scikit-learn-like estimator surface shared by every method.

    ``__init__`` only stores (and name-checks) options; ``fit`` resolves them into
    ``config_`` and returns ``self``; learned state ends in ``_``; ``predict_proba``
    columns follow ``classes_``.
    """

    method: str = ""
    config_class: type[MethodConfig] = MethodConfig
    # What the method supports, declared here and read by the core (serve, export, the
    # CLI); no list of method names lives outside methods/.
    # the --long-text modes it reads (with a long_text option): truncate, head-tail, chunks;
    # resolve_config refuses any other, naming the methods that read it
    long_text_modes: ClassVar[tuple[str, ...]] = ("truncate",)
    # whether quantize_int8 (--int8) applies: model_ is a full-precision torch model
    supports_int8: ClassVar[bool] = False
    # the formats its runs export to (names of runs/export.py's exporters); an exporter,
    # and export_refusal, may still refuse one run's options
    exporters: ClassVar[tuple[str, ...]] = ()
    # its predict-time options (a loaded run takes new values): predict_time_options(),
    # read from the predict_time marks of its config, never listed twice
    # options a served run is loaded with (instruct: score mode, which gives probabilities)
    serve_overrides: ClassVar[dict[str, Any]] = {}
    # options `llmclf evaluate --zero-shot` takes, for a method with ``zero_shot()``
    zero_shot_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: str | None = None, *, progress: bool = True, **options: Any):
        if model is not None:
            options["model"] = model
        if "random_state" in options:
            options["seed"] = options.pop("random_state")
        names = self.config_class.option_names()
        unknown = sorted(set(options) - names)
        if unknown:
            raise LlmclfError(
                f"{type(self).__name__} has no option {', '.join(unknown)} "
                f"(options: {', '.join(sorted(names))})"
            )
        self.options = options
        self.progress = progress
        self._config: MethodConfig | None = None

    @property
    def config_(self) -> MethodConfig:
        """The options resolved into this method's typed config (``config_.model.max_length``):
        resolved once, by ``fit`` / ``load`` or on first use, and again after ``set_params``."""
        if self._config is None:
            self._config = self.resolve_config()
        return self._config

    # -- scikit-learn plumbing ---------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"progress": self.progress, **self.options}

    def set_params(self, **params: Any) -> ClassifierBase:
        self.__init__(**{**self.get_params(), **params})  # config_ is resolved anew
        return self

    def resolve_config(self) -> MethodConfig:
        """The options as this method's typed config, validated: a bad name or value fails
        here, before any data or model is loaded."""
        config = self.config_class.from_options(self.options)
        self._check_long_text(config)
        return config

    def _check_long_text(self, config: MethodConfig) -> None:
        """Refuse a --long-text mode this method does not declare in ``long_text_modes``."""
        mode = config.as_options().get("long_text")
        if mode is None or mode in self.long_text_modes:
            return
        readers = declared_by(lambda cls: mode in cls.long_text_modes)
        raise LlmclfError(
            f"--long-text {mode} applies to --method {readers}, not {self.method} (it reads "
            f"{' or '.join(self.long_text_modes)})"
        )

    @classmethod
    def predict_time_options(cls) -> set[str]:
        """The options a loaded run of this method takes new values for at ``evaluate`` /
        ``predict`` time (its config's ``predict_time`` marks), runtime ones apart.

        Example:
            >>> from llmclf.methods.instruct.model import InstructClassifier
            >>> sorted(InstructClassifier.predict_time_options())  # doctest: +SKIP
            ['max_new_tokens', 'predict_mode']
        """
        return predict_time_names(cls.config_class)

    def _check_fitted(self) -> None:
        if not hasattr(self, "schema_"):
            raise LlmclfError(
                f"this {type(self).__name__} is not fitted yet: call fit() or load() first"
            )

    def _set_fitted(self, schema: LabelSchema, temperature: float = 1.0) -> None:
        """The state every fitted classifier has, after its model is in place."""
        self.schema_ = schema
        self.classes_ = np.array(schema.classes)
        self.temperature_ = temperature
        self.int8_ = False
        self.trainable_params_, self.total_params_ = self._count_parameters()

    # -- fit ---------------------------------------------------------------------------

    def fit(self, X, y, *, eval_set: tuple | None = None, output_dir: str | Path | None = None):
        """Train on texts ``X`` and labels ``y`` (strings, or lists of strings for multi-label).

        ``eval_set=(texts, labels)`` picks the best epoch and tunes multi-label thresholds;
        without it, ``validation_fraction`` of the training data is held out for that.
        ``output_dir`` keeps Trainer checkpoints there (``resume=True`` continues them).
        """
        self._config = self.resolve_config()
        texts, labels, multi_label = self._texts_and_labels(X, y)
        schema = LabelSchema.from_labels(labels, multi_label).with_hierarchy(
            self.config_.labels.label_hierarchy
        )
        train_cfg = getattr(self.config_, "train", None)
        if eval_set is not None:
            eval_texts, eval_labels, _ = self._texts_and_labels(*eval_set, multi_label=multi_label)
            schema.check_known(eval_labels, "the validation data")
        elif train_cfg and train_cfg.validation_fraction > 0 and len(texts) >= 10:
            texts, labels, eval_texts, eval_labels = self._hold_out(
                texts, labels, multi_label, train_cfg.validation_fraction, train_cfg.seed
            )
        else:
            eval_texts, eval_labels = None, None
        abstain = self.config_.abstain
        if abstain.target and not eval_texts:
            raise LlmclfError(
                f"--target-{abstain.target[0]} chooses the abstention threshold on validation "
                "data, and there is none: give the data a validation split (or eval_set=), or "
                "set --abstain-below yourself"
            )
        start = time.perf_counter()
        self._fit(
            texts, labels, eval_texts, eval_labels, schema, Path(output_dir) if output_dir else None
        )
        self.fit_seconds_ = time.perf_counter() - start
        self._set_fitted(schema)
        if abstain.target:
            self.choose_abstention(eval_texts, eval_labels, where="the validation split")
        elif abstain.abstain_below is not None:
            self.set_abstention(abstain.abstain_below)
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

        examples = Examples(texts, labels, pd.DataFrame({"i": range(len(texts))}))
        held = sample(examples, max(1, int(round(len(texts) * fraction))), seed, multi_label)
        chosen = set(held.frame["i"])
        keep = [i for i in range(len(texts)) if i not in chosen]
        return [texts[i] for i in keep], [labels[i] for i in keep], held.texts, held.labels

    def _thresholds(self, threshold: str, eval_texts, eval_labels, schema) -> list[float]:
        """Multi-label decision thresholds: the fixed ``threshold``, or tuned per label on
        the validation texts (0.5 without them)."""
        if threshold != "tuned":
            return [float(threshold)] * schema.num_classes
        if not eval_texts:
            log.warning("no validation data: multi-label thresholds stay at 0.5")
            return [0.5] * schema.num_classes
        proba = to_proba(self._logits(eval_texts), multi_label=True)
        return tune_thresholds(proba, schema.encode(eval_labels).astype(np.int64))

    # -- predict -----------------------------------------------------------------------

    def _logits(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """Raw model outputs, [n, num_classes], rows in input order (``predict_proba`` is
        their softmax, or per-class sigmoid for multi-label, at ``temperature_``)."""
        self._check_fitted()
        return self._logits(texts)

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
        if self.config_.abstain.target:  # the threshold was chosen on data: choose it anew
            self.choose_abstention(X, y, where=where)
        self.calibration_ = {
            "temperature": temperature,
            "method": "temperature scaling (NLL)",
            "fitted_on": where,
            "n": len(texts),
            "before": before,
            "after": after,
        }
        return self

    def choose_abstention(
        self,
        X,
        y,
        *,
        precision: float | None = None,
        coverage: float | None = None,
        precision_bound: str | None = None,
        where: str = "the held-out data",
    ):
        """Choose the abstention threshold on held-out texts ``X`` and labels ``y`` (never
        the training data) and return ``self``: the lowest threshold whose kept answers are
        at least ``precision`` right (``threshold_for_precision``; per label for
        multi-label), or the one that answers ``coverage`` of the texts. Without either, the
        run's own ``--target-precision`` / ``--target-coverage``. ``precision_bound``
        ``"lower"`` asks the lower end of the 95 % Clopper–Pearson interval of the kept
        answers' precision to reach ``precision``, not the share itself (``"estimate"``);
        None: the run's own ``--precision-bound`` with the run's own target, else
        ``"estimate"``. Keeps what was chosen and its figures on ``X`` in ``abstention_``.

        Example:
            >>> clf.choose_abstention(val_texts, val_labels, precision=0.95)  # doctest: +SKIP
            >>> clf.abstention_["validation"]["coverage"]  # doctest: +SKIP
            0.81
            >>> clf.choose_abstention(val_texts, val_labels, precision=0.95,
            ...                       precision_bound="lower")  # doctest: +SKIP
        """
        self._check_fitted()
        if precision is not None and coverage is not None:
            raise LlmclfError(
                "choose the abstention threshold by precision or by coverage, not both"
            )
        if precision is None and coverage is None:
            target = self.config_.abstain.target
            bound = precision_bound or self.config_.abstain.precision_bound
        else:
            target = ("precision", precision) if precision is not None else ("coverage", coverage)
            bound = precision_bound or "estimate"
        if target is None:
            raise LlmclfError("give a target: precision=0.95 or coverage=0.8")
        if bound not in PRECISION_BOUNDS:
            raise LlmclfError(f"precision_bound must be one of {PRECISION_BOUNDS}, not {bound!r}")
        check_precision_bound(bound, target[1] if target[0] == "precision" else None)
        texts, labels, _ = self._texts_and_labels(X, y, multi_label=self.schema_.multi_label)
        self.schema_.check_known(labels, where)
        schema = self.schema_
        proba = np.asarray(self.predict_proba(texts))
        decided = schema.decide(proba)
        truth = schema.encode(labels).astype(np.int64)
        columns = range(schema.num_classes) if schema.multi_label else [None]
        thresholds, unreached = [], []
        kind, value = target
        for j in columns:  # multi-label: per label, on that label's decisions
            if j is None:
                confidence, correct = decisions(truth, proba, decided)
            else:
                confidence, correct = decisions(truth[:, [j]], proba[:, [j]], decided[:, [j]])
            if kind == "coverage":
                thresholds.append(threshold_for_coverage(confidence, value))
                continue
            found = threshold_for_precision(confidence, correct, value, bound)
            if found is None:  # nothing reaches it: answer only what is certain
                unreached.append(schema.classes[j] if j is not None else "the run")
                found = 1.0
            thresholds.append(found)
        chosen_by = f"target {kind} {value}"
        if kind == "precision" and bound == "lower":
            chosen_by += " (95 % lower bound)"
        if unreached:
            log.warning(
                "no threshold reaches %s on %s for %s: the run answers only at probability 1 "
                "there; lower --target-precision or %s",
                chosen_by.removeprefix("target "),
                where,
                ", ".join(unreached),
                "give it more validation texts" if bound == "lower" else "train more",
            )
        self.set_abstention(thresholds if schema.multi_label else thresholds[0])
        _, correct = decisions(truth, proba, decided)
        kept = ~self.schema_.abstains(proba, decided).reshape(-1)
        figures = selection(kept.astype(np.float64), correct, 0.5)  # the kept decisions
        self.abstention_ = {
            "threshold": self.schema_.abstain_below,
            "chosen_by": chosen_by,
            "chosen_on": where,
            "temperature": float(self.temperature_),
            "validation": {**figures.as_dict(), "threshold": self.schema_.abstain_below},
        }
        if kind == "precision":
            self.abstention_["precision_bound"] = bound
        log.info(
            "abstaining below %s (%s on %s): answers %.1f%% of it, %.1f%% of them right",
            self.schema_.abstain_below,
            chosen_by,
            where,
            100 * figures.coverage,
            100 * figures.accuracy if figures.kept else float("nan"),
        )
        low, high = figures.accuracy_interval()
        if kind == "precision" and figures.kept and low < value:
            log.warning(
                "the precision %.3f on %s rests on %d answered texts: its 95%% interval is "
                "[%.3f, %.3f], so on new texts it may fall below the target %s; more "
                "validation texts narrow it",
                figures.accuracy, where, figures.kept, low, high, value,
            )  # fmt: skip
        if kind == "precision" and schema.hierarchy and not schema.multi_label:
            self._choose_parent_threshold(proba, decided, truth, value, bound, where)
        return self

    def _choose_parent_threshold(self, proba, decided, truth, target, bound, where) -> None:
        """With a hierarchy and a target precision: the threshold at which the parents of
        the answers withheld on ``where`` reach the target too (the class threshold does
        not: a parent given at it was right less often than the answers on 20newsgroups,
        BENCHMARKS.md), recorded with the abstention."""
        schema = self.schema_
        withheld = schema.abstains(proba, decided)
        if not withheld.any():  # nothing to judge parents on: the class threshold stays
            self.abstention_["parent_threshold"] = None
            return
        found = parent_threshold_for_precision(
            proba[withheld], decided[withheld], truth[withheld],
            schema.classes, schema.hierarchy, target, bound,
        )  # fmt: skip
        if found is None:
            log.warning(
                "no parent of the answers withheld on %s reaches precision %s: the run gives "
                "parents only at probability 1 there", where, target,
            )  # fmt: skip
            found = 1.0
        self.schema_ = schema.with_parent_threshold(found)
        figures = parent_figures(
            [schema.classes[i] for i in truth], self.schema_.parents(proba, decided),
            withheld, schema.hierarchy,
        )  # fmt: skip
        self.abstention_["parent_threshold"] = found
        self.abstention_["validation"]["parents"] = figures
        log.info(
            "giving the parent of a withheld answer at %.4f: %s of %d withheld texts get one",
            found,
            "none" if figures["with_parent"] is None else f"{figures['with_parent']:.1%}",
            figures["withheld"],
        )

    def quantize_int8(self):
        """Predict with int8 weights and activations from now on (CPU only; see
        ``llmclf.int8``): faster, with slightly different probabilities. Head and instruct
        classifiers over a full-precision base; a quantized classifier cannot be saved."""
        self._check_fitted()
        if not self.supports_int8:
            supporters = declared_by(lambda cls: cls.supports_int8)
            raise LlmclfError(f"--int8 applies to {supporters} runs, not {self.method}")
        from llmclf.int8 import quantize_int8

        quantize_int8(self.model_)
        self.int8_ = True
        return self

    def export_module(self):
        """The fitted run as one ``torch.nn.Module``, ``(input_ids, attention_mask) ->
        logits`` float32 [batch, num_classes], for exporters that trace a graph (onnx).
        A method that lists such a format in ``exporters`` defines it."""
        raise LlmclfError(f"{self.method} runs do not export as one graph")

    def export_refusal(self, format: str) -> str | None:
        """Why this run's options cannot be exported as ``format`` (one of ``exporters``),
        in one line a user can act on, or None. Only the method knows its own options
        (a head run's pooling); what a format cannot express (chunks) is the exporter's."""
        return None

    # -- persistence -------------------------------------------------------------------

    def _check_files(self, folder: Path) -> None:
        """Before ``_load_model``: the method's files are there, readable, and shaped for
        ``schema_`` (``run_folder.check_*``), so a damaged run is named as such before
        any model loads. Each method lists its own files."""

    def resolved_config(self) -> dict[str, Any]:
        """What config.yaml holds: the method, the version, and every section."""
        return {"method": self.method, "llmclf_version": __version__, **self.config_.to_dict()}

    def save(self, path: str | Path, extra_config: dict | None = None) -> Path:
        """Write the model, tokenizer, label schema, calibration and resolved config to
        ``path`` (``extra_config``: more sections for config.yaml, such as ``data``)."""
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
        write_calibration(folder, calibration)
        write_yaml(folder / CONFIG_FILE, {**self.resolved_config(), **(extra_config or {})})
        return folder

    @classmethod
    def configured(cls, path: str | Path, **overrides: Any):
        """The classifier a run folder describes, its options resolved into ``config_``
        but no model loaded (``load`` goes on from here): what a check reads before the
        slow part, as ``export_run`` does.

        Example:
            >>> HeadClassifier.configured("runs/bbc").config_.head.pooling  # doctest: +SKIP
            'last'
        """
        folder = RunFolder(path)
        names = cls.config_class.option_names()
        stored = {k: v for k, v in flatten(folder.config()).items() if k in names}
        if "long_text" in names and "long_text" not in folder.config():
            stored["long_text"] = "truncate"  # how runs from before --long-text read texts
        if "chunk_last_window" in names and "chunk_last_window" not in stored:
            stored["chunk_last_window"] = "rest"  # how chunked runs before it read texts
        # a model's own code runs only when this user says so, never because a run said so
        stored.pop("trust_remote_code", None)
        ignored = runtime_names(DataConfig, ModelConfig, TrainConfig) - names
        kept = {k: v for k, v in overrides.items() if k not in ignored}
        if kept.get("abstain_below") is not None:  # a new threshold replaces the run's target
            for name in field_names(AbstainConfig):
                stored.pop(name, None)
        clf = cls(**{**stored, **kept})
        clf._config = clf.resolve_config()
        return clf

    @classmethod
    def load(cls, path: str | Path, **overrides: Any):
        """A fitted classifier from a folder written by ``save`` (or ``llmclf train``).

        ``overrides`` change options such as ``device`` or ``eval_batch_size``; runtime
        options this method does not have (``device`` for tfidf) are ignored.
        """
        folder = RunFolder(path)
        clf = cls.configured(folder.path, **overrides)
        schema = LabelSchema.load(folder.path)
        if overrides.get("label_hierarchy") is not None:  # checked before the model loads
            schema = schema.with_hierarchy(overrides["label_hierarchy"])
        clf.schema_ = schema  # the model loader reads the classes
        calibration = folder.calibration()
        if "fitted_on" in calibration:  # written by calibrate()
            clf.calibration_ = calibration
        # A missing, garbled or misshapen run file is named as damage: by _check_files,
        # before any model loads, and by the loaders' strict reads of the run's weights.
        # Anything else raised while loading (out of memory, a library's bug) keeps its type.
        clf._check_files(folder.path)
        clf._load_model(folder.path)
        clf._set_fitted(schema, float(calibration.get("temperature", 1.0)))
        if overrides.get("abstain_below") is not None:
            clf.set_abstention(overrides["abstain_below"])
        return clf


# ---------------------------------------------------------------------------------------
# The live --method table
# ---------------------------------------------------------------------------------------

# Filled and read through methods/registry.py (register_method, method_classes, ...). It is
# kept here so that a classifier refusing what it does not declare can name the methods that
# do declare it: registry.py imports every built-in method, and each of those imports this.
REGISTERED: dict[str, type[ClassifierBase]] = {}


def declared_by(declares: Callable[[type[ClassifierBase]], bool]) -> str:
    """The registered methods for which ``declares(cls)`` holds, in registration order, for
    a message.

    Example:
        >>> declared_by(lambda cls: cls.supports_int8)  # doctest: +SKIP
        'head and instruct'
    """
    names = [name for name, cls in REGISTERED.items() if declares(cls)]
    if len(names) < 2:
        return names[0] if names else "no method"
    return f"{', '.join(names[:-1])} and {names[-1]}"
