"""Approach 1: a linear head on the pooled hidden state of a causal LM, LoRA-tuned.

The model is transformers' own ``AutoModelForSequenceClassification`` (its ``score``
layer is the head) wrapped by PEFT with ``task_type="SEQ_CLS"``, so a saved run is a
plain PEFT adapter folder. llmclf pools with the attention mask (``pooling.py``) rather
than with the pad id, which keeps left padding and pad == eos right.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmclf import backbone
from llmclf.batching import pad_batch, run_batches
from llmclf.calibration import to_proba
from llmclf.classifier import ClassifierBase
from llmclf.config import AdapterConfig, HeadConfig, ModelConfig, TrainConfig
from llmclf.features import FeatureCollator, cached_features, feature_key, feature_rows
from llmclf.labels import LabelSchema
from llmclf.losses import balanced_weights, loss_function
from llmclf.metrics import selection_metric, tune_thresholds
from llmclf.pooling import POOLERS, position_ids
from llmclf.training import (
    checkpoint_to_resume,
    metrics_function,
    run_trainer,
    training_arguments,
)

log = logging.getLogger("llmclf")

HEAD_MODULE = "score"
HEAD_WEIGHTS = "head.safetensors"  # frozen-feature runs: the head alone


def pooled_hidden(model, batch: dict[str, torch.Tensor], pooling: str = "last") -> torch.Tensor:
    """The pooled final hidden state of each row, [batch, hidden].

    Args:
        model: a ``*ForSequenceClassification`` model, PEFT-wrapped or not.
        batch: ``input_ids`` and ``attention_mask``, [batch, seq], padded on either side.
        pooling: ``last`` (final real token) or ``mean`` (over real tokens).
    """
    seq_cls = model.get_base_model() if hasattr(model, "get_base_model") else model
    mask = batch["attention_mask"]
    hidden = seq_cls.base_model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=position_ids(mask),
        use_cache=False,
    ).last_hidden_state
    return POOLERS[pooling](hidden, mask)


def head_logits(model, batch: dict[str, torch.Tensor], pooling: str = "last") -> torch.Tensor:
    """Logits of the head on the pooled final hidden states, [batch, num_classes] float32."""
    seq_cls = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(seq_cls, HEAD_MODULE)
    pooled = pooled_hidden(model, batch, pooling)
    return head(pooled.to(next(head.parameters()).dtype)).float()


@dataclass
class PaddingCollator:
    """Right-pads ``input_ids`` per batch (dynamic padding) and stacks the labels."""

    pad_id: int
    multi_label: bool

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_batch([r["input_ids"] for r in rows], self.pad_id)
        dtype = torch.float32 if self.multi_label else torch.long
        batch["labels"] = torch.tensor(np.array([r["labels"] for r in rows]), dtype=dtype)
        return batch


class HeadClassifier(ClassifierBase):
    """A causal LM with a linear head on its final-token (or mean) hidden state.

    Options are the fields of ``ModelConfig``, ``AdapterConfig``, ``TrainConfig`` and
    ``HeadConfig`` (the same names as the CLI flags, with underscores).

    Example:
        >>> clf = HeadClassifier("smollm2-135m", epochs=2, lora_r=8)  # doctest: +SKIP
        >>> clf.fit(texts, labels).predict(["Shares fell sharply on Monday"])  # doctest: +SKIP
        ['business']
    """

    method = "head"
    config_classes = (ModelConfig, AdapterConfig, TrainConfig, HeadConfig)

    # -- training ----------------------------------------------------------------------

    def _fit(
        self, texts, labels, eval_texts, eval_labels, schema: LabelSchema, output_dir: Path | None
    ):
        model_cfg, adapter_cfg, train_cfg, head_cfg = self._configs()
        resume_from = checkpoint_to_resume(output_dir, train_cfg.resume) if output_dir else None
        torch.manual_seed(train_cfg.seed)
        self._build(schema)
        targets = schema.encode(labels)
        weights = None
        if head_cfg.class_weights == "balanced":
            weights = balanced_weights(targets, schema.multi_label).to(self.device_)
        eval_targets = schema.encode(eval_labels) if eval_texts else None
        if self.frozen_:
            inputs = self._frozen_inputs(
                texts, targets, eval_texts, eval_targets, schema, train_cfg
            )
        else:
            inputs = self._lora_inputs(texts, targets, eval_texts, eval_targets, schema, train_cfg)
        model, train_set, eval_set, collator, forward, optimizer = inputs
        metric = selection_metric(schema.multi_label) if eval_set is not None else None

        with tempfile.TemporaryDirectory(prefix="llmclf-") as scratch:
            folder = (output_dir or Path(scratch)) / "checkpoints"
            args = training_arguments(
                train_cfg,
                folder,
                self.device_,
                self.dtype_,
                metric,
                progress=self.progress,
                token_inputs=not self.frozen_,
            )
            self.train_result_ = run_trainer(
                model,
                train_set,
                eval_set,
                collator,
                forward=forward,
                loss=loss_function(schema, weights),
                compute_metrics=metrics_function(schema),
                config=train_cfg,
                args=args,
                optimizer=optimizer,
                resume_from=resume_from,
                progress=self.progress,
            )
        self.model_.eval()
        if schema.multi_label:
            schema.thresholds = self._thresholds(head_cfg, eval_texts, eval_targets, schema)

    def _lora_inputs(self, texts, targets, eval_texts, eval_targets, schema, config: TrainConfig):
        """What the Trainer needs to train LoRA + head end to end on token ids."""
        pooling = self._configs()[3].pooling
        train_set = self._dataset(texts, targets)
        eval_set = self._dataset(eval_texts, eval_targets) if eval_texts else None
        collator = PaddingCollator(self.tokenizer_.pad_token_id, schema.multi_label)
        forward = lambda model, batch: head_logits(model, batch, pooling)  # noqa: E731
        return self.model_, train_set, eval_set, collator, forward, self._optimizer(config)

    def _frozen_inputs(self, texts, targets, eval_texts, eval_targets, schema, config: TrainConfig):
        """What the Trainer needs to train the head alone on cached pooled features."""
        head = self._head()
        train_set = feature_rows(self._features(texts), targets)
        eval_set = feature_rows(self._features(eval_texts), eval_targets) if eval_texts else None
        forward = lambda model, batch: model(batch["features"]).float()  # noqa: E731
        optimizer = torch.optim.AdamW(
            head.parameters(),
            lr=config.head_learning_rate or config.learning_rate,
            weight_decay=config.weight_decay,
        )
        return head, train_set, eval_set, FeatureCollator(schema.multi_label), forward, optimizer

    def _build(self, schema: LabelSchema):
        """Load base + fresh head, then wrap in LoRA unless ``lora`` is none."""
        adapter_cfg = self._configs()[1]
        self.frozen_ = adapter_cfg.lora == "none"
        model = self._load_base(schema)
        if self.frozen_:
            self.model_ = model
            model.requires_grad_(False)
            self._head().requires_grad_(True)
        else:
            self.model_ = backbone.add_lora(model, adapter_cfg, "SEQ_CLS")

    def _load_base(self, schema: LabelSchema, tokenizer_source: str | None = None):
        """The base ``*ForSequenceClassification`` model with a fresh full-precision head."""
        from transformers import AutoModelForSequenceClassification

        model_cfg, _, _, head_cfg = self._configs()
        source = backbone.model_source(model_cfg.model)
        self.tokenizer_ = backbone.load_tokenizer(
            tokenizer_source or source, "right", append_eos=head_cfg.pooling == "last"
        )
        self.device_ = backbone.resolve_device(model_cfg.device)
        self.dtype_ = backbone.resolve_dtype(model_cfg.dtype, self.device_)
        return backbone.load_model(
            AutoModelForSequenceClassification,
            source,
            model_cfg,
            keep_full_precision=[HEAD_MODULE],
            num_layers=head_cfg.num_layers,
            **self._label_kwargs(schema),
        )

    def _head(self) -> torch.nn.Module:
        seq_cls = (
            self.model_.get_base_model() if hasattr(self.model_, "get_base_model") else self.model_
        )
        return getattr(seq_cls, HEAD_MODULE)

    def _label_kwargs(self, schema: LabelSchema) -> dict:
        return {
            "num_labels": schema.num_classes,
            "id2label": dict(enumerate(schema.classes)),
            "label2id": {c: i for i, c in enumerate(schema.classes)},
            "problem_type": "multi_label_classification"
            if schema.multi_label
            else "single_label_classification",
            "pad_token_id": self.tokenizer_.pad_token_id,
        }

    def _dataset(self, texts: list[str], targets: np.ndarray):
        import datasets

        ids = self._encode(texts)
        return datasets.Dataset.from_dict(
            {"input_ids": ids, "labels": targets.tolist(), "length": [len(x) for x in ids]}
        )

    def _features(self, texts: list[str]) -> np.ndarray:
        """Pooled features of ``texts`` from the frozen base, cached on disk."""
        model_cfg, _, train_cfg, head_cfg = self._configs()
        sequences = self._encode(texts)
        description = {
            "model": backbone.model_source(model_cfg.model),
            "pooling": head_cfg.pooling,
            "num_layers": head_cfg.num_layers,
            "dtype": str(self.dtype_),
            "quantize": model_cfg.quantize,
        }
        self.model_.eval()
        return cached_features(
            sequences,
            lambda batch: pooled_hidden(self.model_, batch, head_cfg.pooling),
            feature_key(description, sequences),
            self.tokenizer_.pad_token_id,
            train_cfg.eval_batch_size,
            self.device_,
            progress=self.progress,
        )

    def _optimizer(self, config: TrainConfig) -> torch.optim.Optimizer:
        """AdamW with a higher learning rate for the freshly initialised head."""
        head, adapters = [], []
        for name, param in self.model_.named_parameters():
            if param.requires_grad:
                (head if f".{HEAD_MODULE}." in name else adapters).append(param)
        groups = [{"params": adapters, "lr": config.learning_rate}]
        if head:
            groups.append({"params": head, "lr": config.head_learning_rate or config.learning_rate})
        return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)

    def _thresholds(self, head_cfg: HeadConfig, eval_texts, eval_targets, schema) -> list[float]:
        if head_cfg.threshold != "tuned":
            return [float(head_cfg.threshold)] * schema.num_classes
        if not eval_texts:
            log.warning("no validation data: multi-label thresholds stay at 0.5")
            return [0.5] * schema.num_classes
        proba = to_proba(self._logits(eval_texts), multi_label=True)
        return tune_thresholds(proba, eval_targets.astype(np.int64))

    # -- inference ---------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> list[list[int]]:
        max_length = self._configs()[0].max_length
        return self.tokenizer_(list(texts), truncation=True, max_length=max_length)["input_ids"]

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """Raw head outputs, [n, num_classes], rows in input order."""
        self._check_fitted()
        return self._logits(texts)

    def _logits(self, texts: list[str]) -> np.ndarray:
        pooling = self._configs()[3].pooling
        batch_size = self._configs()[2].eval_batch_size
        self.model_.eval()
        return run_batches(
            self._encode(texts),
            lambda batch: head_logits(self.model_, batch, pooling),
            self.tokenizer_.pad_token_id,
            batch_size,
            self.device_,
            progress=self.progress,
        )

    # -- persistence -------------------------------------------------------------------

    def _save_model(self, folder: Path) -> None:
        if self.frozen_:  # no adapter: the head's weights alone, loadable into the base model
            from safetensors.torch import save_file

            weight = self._head().weight.detach().float().cpu().contiguous()
            save_file({f"{HEAD_MODULE}.weight": weight}, str(folder / HEAD_WEIGHTS))
        else:
            self.model_.save_pretrained(folder)
        self.tokenizer_.save_pretrained(folder)

    def _load_model(self, folder: Path) -> None:

        self.frozen_ = (folder / HEAD_WEIGHTS).is_file()
        base = self._load_base(self.schema_, tokenizer_source=str(folder))
        if self.frozen_:
            from safetensors.torch import load_file

            base.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)), strict=False)
            self.model_ = base
        else:
            self.model_ = backbone.load_adapter_for_inference(base, str(folder))
        self.model_.requires_grad_(False)
        self.model_.eval()

    def _count_parameters(self) -> tuple[int, int]:
        trainable, total = backbone.count_parameters(self.model_)
        if self.frozen_:  # only the head learns in frozen-feature mode
            trainable = sum(p.numel() for p in self._head().parameters())
        return trainable, total
