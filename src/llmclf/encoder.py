"""The BERT-class baseline: fine-tune an encoder for sequence classification.

This is "fine-tuned BERT" as the paper compares against it: transformers'
``AutoModelForSequenceClassification`` on an encoder (the pooled ``[CLS]`` state feeds a
fresh linear classifier) with every weight trained (full fine-tuning: small encoders fit
in memory, and full fine-tuning is the standard baseline). A run folder is a plain
transformers model folder: ``AutoModelForSequenceClassification.from_pretrained(RUN)``
loads it without llmclf. The same class is the student of ``llmclf distill``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmclf import backbone
from llmclf.batching import pad_batch, run_batches
from llmclf.calibration import to_proba
from llmclf.catalog import MODELS
from llmclf.classifier import ClassifierBase
from llmclf.config import (
    ModelConfig,
    TrainConfig,
    _check_choices,
    _check_positive,
    build,
    check_threshold,
    option,
)
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.losses import balanced_weights, loss_function
from llmclf.metrics import selection_metric, tune_thresholds
from llmclf.training import (
    checkpoint_to_resume,
    metrics_function,
    run_trainer,
    training_arguments,
)

log = logging.getLogger("llmclf")

# Defaults for options the user did not set: the shared TrainConfig defaults are tuned for
# LoRA on a causal LM (lr 1e-3), far too high for updating every weight of an encoder.
ENCODER_DEFAULTS = {
    "model": "minilm-l6",
    "learning_rate": 1e-4,
    "head_learning_rate": 1e-3,
    "epochs": 5.0,
    "batch_size": 16,
}

# Module names of the freshly initialised classification layers across architectures
# (BERT / MPNet / RoBERTa: classifier; DistilBERT: pre_classifier + classifier).
HEAD_PREFIXES = ("classifier.", "pre_classifier.", "score.")


@dataclass
class EncoderConfig:
    """Encoder baseline: how labels are decided."""

    class_weights: str = option(
        "none",
        "balanced = weight the loss by inverse class frequency",
        choices=("none", "balanced"),
    )
    threshold: str = option(
        "tuned",
        "multi-label decision threshold: 'tuned' per label on the validation split, or a number such as 0.5",
    )
    encoder_layers: int | None = option(
        None,
        "keep only the first N transformer layers of the encoder: a smaller, faster model "
        "(a common distillation student); none = all",
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "encoder_layers")
        check_threshold(self.threshold)


def encoder_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[batch, num_classes] float32 logits of a ``*ForSequenceClassification`` encoder."""
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits.float()


@dataclass
class TargetCollator:
    """Right-pads ``input_ids`` per batch and stacks the target rows (class ids, label
    indicators, or the packed distillation targets)."""

    pad_id: int
    label_dtype: torch.dtype

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_batch([r["input_ids"] for r in rows], self.pad_id)
        batch["labels"] = torch.tensor(
            np.array([r["labels"] for r in rows]), dtype=self.label_dtype
        )
        return batch


class EncoderClassifier(ClassifierBase):
    """A BERT-class encoder fine-tuned end to end for classification.

    Options are the fields of ``ModelConfig``, ``TrainConfig`` and ``EncoderConfig``;
    unset ones take ``ENCODER_DEFAULTS`` (model ``minilm-l6``, lr 1e-4, 5 epochs, ...).

    Example:
        >>> clf = EncoderClassifier("minilm-l6", epochs=3)  # doctest: +SKIP
        >>> clf.fit(texts, labels).predict(["Shares fell sharply on Monday"])  # doctest: +SKIP
        'business'
    """

    method = "encoder"
    config_classes = (ModelConfig, TrainConfig, EncoderConfig)

    def _configs(self) -> tuple:
        values = {**ENCODER_DEFAULTS, **self.options}
        model_cfg, train_cfg, encoder_cfg = (build(cls, values) for cls in self.config_classes)
        if model_cfg.quantize != "none":
            raise LlmclfError(
                "--quantize does not apply to --method encoder: every weight is trained "
                "(4-bit bases are for LoRA on a causal LM, --method head)"
            )
        entry = MODELS.get(model_cfg.model)
        if entry is not None and entry.kind != "encoder":
            encoders = ", ".join(n for n, e in MODELS.items() if e.kind == "encoder")
            raise LlmclfError(
                f"{model_cfg.model} is a causal LM: use --method head for it, or give "
                f"--method encoder an encoder ({encoders}, a hub id or a folder)"
            )
        return model_cfg, train_cfg, encoder_cfg

    # -- training ----------------------------------------------------------------------

    def _fit(self, texts, labels, eval_texts, eval_labels, schema: LabelSchema, output_dir):
        _, _, encoder_cfg = self._configs()
        targets = schema.encode(labels)
        weights = (
            balanced_weights(targets, schema.multi_label)
            if encoder_cfg.class_weights == "balanced"
            else None
        )
        self.build_model(schema)
        loss = loss_function(schema, weights.to(self.device_) if weights is not None else None)
        eval_targets = schema.encode(eval_labels) if eval_texts else None
        self.train_targets(texts, targets, eval_texts, eval_targets, schema, output_dir, loss)
        if schema.multi_label:
            schema.thresholds = self._thresholds(encoder_cfg, eval_texts, eval_labels, schema)

    def build_model(self, schema: LabelSchema) -> None:
        """Load the encoder with a fresh classifier for ``schema``'s classes."""
        from transformers import AutoModelForSequenceClassification

        model_cfg, train_cfg, encoder_cfg = self._configs()
        source = backbone.model_source(model_cfg.model)
        self.tokenizer_ = backbone.load_tokenizer(source, "right")
        torch.manual_seed(train_cfg.seed)  # the fresh classifier's initial weights
        self.model_ = backbone.load_model(
            AutoModelForSequenceClassification,
            source,
            model_cfg,
            keep_full_precision=[],
            # a hub classifier with another label count gets a fresh layer of the right size
            ignore_mismatched_sizes=True,
            **self._layer_kwargs(source, encoder_cfg),
            **self._label_kwargs(schema),
        )
        self.device_ = backbone.resolve_device(model_cfg.device)
        self.dtype_ = backbone.resolve_dtype(model_cfg.dtype, self.device_)

    def train_targets(
        self,
        texts: list[str],
        targets: np.ndarray,
        eval_texts: list[str] | None,
        eval_targets: np.ndarray | None,
        schema: LabelSchema,
        output_dir: Path | None,
        loss: Callable,
        gold_of: Callable[[np.ndarray], np.ndarray] = lambda rows: rows,
    ) -> None:
        """Train the built model on target rows with any ``loss(logits, targets)``.

        ``fit`` passes class ids (or label indicators); distillation passes packed teacher
        and gold targets with ``gold_of`` recovering the gold labels for model selection.
        """
        _, train_cfg, _ = self._configs()
        resume_from = checkpoint_to_resume(output_dir, train_cfg.resume) if output_dir else None
        train_set = self._dataset(texts, targets)
        eval_set = self._dataset(eval_texts, eval_targets) if eval_texts else None
        metric = selection_metric(schema.multi_label) if eval_set is not None else None
        dtype = torch.long if targets.dtype == np.int64 else torch.float32
        with tempfile.TemporaryDirectory(prefix="llmclf-") as scratch:
            folder = (output_dir or Path(scratch)) / "checkpoints"
            args = training_arguments(
                train_cfg, folder, self.device_, self.dtype_, metric, progress=self.progress
            )
            self.train_result_ = run_trainer(
                self.model_,
                train_set,
                eval_set,
                TargetCollator(self.tokenizer_.pad_token_id, dtype),
                forward=encoder_logits,
                loss=loss,
                compute_metrics=metrics_function(schema, gold_of),
                config=train_cfg,
                args=args,
                optimizer=self._optimizer(train_cfg),
                resume_from=resume_from,
                progress=self.progress,
            )
        self.model_.eval()

    @staticmethod
    def _layer_kwargs(source: str, encoder_cfg: EncoderConfig) -> dict:
        """``num_hidden_layers=N`` when only the first N layers are kept (the rest of the
        checkpoint is not loaded); the saved config then says N, so a plain load agrees."""
        if not encoder_cfg.encoder_layers:
            return {}
        from transformers import AutoConfig

        available = AutoConfig.from_pretrained(source).num_hidden_layers
        if encoder_cfg.encoder_layers > available:
            raise LlmclfError(
                f"--encoder-layers {encoder_cfg.encoder_layers}: the encoder has only {available}"
            )
        return {"num_hidden_layers": encoder_cfg.encoder_layers}

    def _label_kwargs(self, schema: LabelSchema) -> dict:
        return {
            "num_labels": schema.num_classes,
            "id2label": dict(enumerate(schema.classes)),
            "label2id": {c: i for i, c in enumerate(schema.classes)},
            "problem_type": "multi_label_classification"
            if schema.multi_label
            else "single_label_classification",
        }

    def _dataset(self, texts: list[str], targets: np.ndarray):
        import datasets

        ids = self._encode(texts)
        return datasets.Dataset.from_dict(
            {"input_ids": ids, "labels": targets.tolist(), "length": [len(x) for x in ids]}
        )

    def _optimizer(self, config: TrainConfig) -> torch.optim.Optimizer:
        """AdamW; the fresh classification layers get ``head_learning_rate``."""
        head, body = [], []
        for name, param in self.model_.named_parameters():
            if param.requires_grad:
                (head if name.startswith(HEAD_PREFIXES) else body).append(param)
        groups = [{"params": body, "lr": config.learning_rate}]
        if head:
            groups.append({"params": head, "lr": config.head_learning_rate or config.learning_rate})
        return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)

    def _thresholds(self, encoder_cfg: EncoderConfig, eval_texts, eval_labels, schema):
        if encoder_cfg.threshold != "tuned":
            return [float(encoder_cfg.threshold)] * schema.num_classes
        if not eval_texts:
            log.warning("no validation data: multi-label thresholds stay at 0.5")
            return [0.5] * schema.num_classes
        proba = to_proba(self._logits(eval_texts), multi_label=True)
        return tune_thresholds(proba, schema.encode(eval_labels).astype(np.int64))

    # -- inference ---------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> list[list[int]]:
        max_length = self._configs()[0].max_length
        return self.tokenizer_(list(texts), truncation=True, max_length=max_length)["input_ids"]

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """Raw classifier outputs, [n, num_classes], rows in input order."""
        self._check_fitted()
        return self._logits(texts)

    def _logits(self, texts: list[str]) -> np.ndarray:
        self.model_.eval()
        return run_batches(
            self._encode(texts),
            lambda batch: encoder_logits(self.model_, batch),
            self.tokenizer_.pad_token_id,
            self._configs()[1].eval_batch_size,
            self.device_,
            progress=self.progress,
        )

    # -- persistence -------------------------------------------------------------------

    def resolved_config(self) -> dict:
        """The options, plus a ``distill`` section (teacher, temperature, weights) for a
        distilled student."""
        config = super().resolved_config()
        if getattr(self, "distillation_", None):
            config["distill"] = self.distillation_
        return config

    def _save_model(self, folder: Path) -> None:
        self.model_.save_pretrained(folder)
        self.tokenizer_.save_pretrained(folder)

    def _load_model(self, folder: Path) -> None:
        from transformers import AutoModelForSequenceClassification

        model_cfg = self._configs()[0]
        self.tokenizer_ = backbone.load_tokenizer(str(folder), "right")
        self.model_ = backbone.load_model(
            AutoModelForSequenceClassification, str(folder), model_cfg, keep_full_precision=[]
        )
        self.model_.eval()
        self.device_ = backbone.resolve_device(model_cfg.device)
        self.dtype_ = backbone.resolve_dtype(model_cfg.dtype, self.device_)

    def _count_parameters(self) -> tuple[int, int]:
        return backbone.count_parameters(self.model_)
