"""The BERT-class baseline: fine-tune an encoder for sequence classification.

This is "fine-tuned BERT" as the paper compares against it: transformers'
``AutoModelForSequenceClassification`` on an encoder (the pooled ``[CLS]`` state feeds a
fresh linear classifier) with every weight trained (full fine-tuning: small encoders fit
in memory, and full fine-tuning is the standard baseline). A run folder is a plain
transformers model folder: ``AutoModelForSequenceClassification.from_pretrained(RUN)``
loads it without llmclf. The same class is the student of ``llmclf distill``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import llmclf.backbone as backbone
from llmclf.batching import pad_batch, run_batches
from llmclf.catalog import MODELS
from llmclf.config import (
    POSITIVE,
    MethodConfig,
    ModelConfig,
    TrainConfig,
    class_weights_option,
    option,
    section,
    threshold_option,
    validate,
)
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.long_text import (
    ATTENTION_MODULE,
    LongTextConfig,
    LongTextTokens,
    WindowCollator,
    aggregate,
    check_long_text,
    chunk_attention,
    group_windows,
    run_window_batches,
    window_dataset,
)
from llmclf.losses import balanced_weights, loss_function
from llmclf.methods.base import ClassifierBase
from llmclf.run_folder import (
    LABELS_FILE,
    MODEL_WEIGHTS,
    check_json_file,
    check_safetensors,
    check_tensors,
    check_tokenizer,
    damaged,
    tensor_shapes,
)
from llmclf.training import head_and_body_optimizer, token_dataset, train_model

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
# (BERT / MPNet / RoBERTa: classifier; DistilBERT: pre_classifier + classifier), and the
# window scorer of chunks' attention aggregation (fresh too: it learns at the head's rate).
HEAD_PREFIXES = ("classifier.", "pre_classifier.", "score.", f"{ATTENTION_MODULE}.")


@dataclass
class EncoderConfig:
    """Encoder baseline: how labels are decided."""

    class_weights: str = class_weights_option()
    threshold: str = threshold_option()
    encoder_layers: int | None = option(
        None,
        "keep only the first N transformer layers of the encoder: a smaller, faster model "
        "(a common distillation student); none = all",
        bound=POSITIVE,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class EncoderClassifierConfig(MethodConfig):
    """Every option of ``EncoderClassifier``; unset ones take ``ENCODER_DEFAULTS``."""

    defaults = ENCODER_DEFAULTS

    model: ModelConfig = section(ModelConfig)
    train: TrainConfig = section(TrainConfig)
    encoder: EncoderConfig = section(EncoderConfig)
    long_text: LongTextConfig = section(LongTextConfig)

    def __post_init__(self) -> None:
        check_long_text(self.long_text, self.model.max_length)
        if self.model.quantize != "none":
            raise LlmclfError(
                "--quantize does not apply to --method encoder: every weight is trained "
                "(4-bit bases are for LoRA on a causal LM, --method head)"
            )
        entry = MODELS.get(self.model.model)
        if entry is not None and entry.kind != "encoder":
            encoders = ", ".join(n for n, e in MODELS.items() if e.kind == "encoder")
            raise LlmclfError(
                f"{self.model.model} is a causal LM: use --method head for it, or give "
                f"--method encoder an encoder ({encoders}, a hub id or a folder)"
            )


def encoder_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[batch, num_classes] float32 logits of a ``*ForSequenceClassification`` encoder."""
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits.float()


class EncoderGraph(torch.nn.Module):
    """An encoder run as one module, ``(input_ids, attention_mask) -> logits`` float32:
    what graph exporters trace."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return encoder_logits(
            self.model, {"input_ids": input_ids, "attention_mask": attention_mask}
        )


def encoder_chunk_logits(
    model, batch: dict[str, torch.Tensor], aggregation: str = "mean"
) -> torch.Tensor:
    """[texts, num_classes] float32 logits of a BERT-style encoder over each text's
    windows: each window's pooled [CLS] vector (the model's own pooler), aggregated, then
    the model's own dropout and classifier. ``batch`` as ``long_text.window_batch`` makes it."""
    pooled = model.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).pooler_output
    features, mask = group_windows(pooled, batch["window_counts"])
    vector = aggregate(features, mask, aggregation, getattr(model, ATTENTION_MODULE, None))
    return model.classifier(model.dropout(vector)).float()


def check_chunkable(model) -> None:
    """Chunks need the pooled vector the classifier reads: BERT-style models (a pooler,
    dropout, one linear classifier), such as minilm-l6."""
    if not (
        isinstance(getattr(model, "classifier", None), torch.nn.Linear)
        and isinstance(getattr(model, "dropout", None), torch.nn.Dropout)
        and getattr(model.base_model, "pooler", None) is not None
    ):
        raise LlmclfError(
            f"--long-text chunks needs a BERT-style encoder (a pooler and one linear "
            f"classifier, as minilm-l6 has); {type(model).__name__} is not one: use "
            "--long-text head-tail"
        )


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


class EncoderClassifier(LongTextTokens, ClassifierBase):
    """A BERT-class encoder fine-tuned end to end for classification.

    Options are the fields of ``EncoderClassifierConfig``'s sections; unset ones take
    ``ENCODER_DEFAULTS`` (model ``minilm-l6``, lr 1e-4, 5 epochs, ...).

    Example:
        >>> clf = EncoderClassifier("minilm-l6", epochs=3)  # doctest: +SKIP
        >>> clf.fit(texts, labels).predict(["Shares fell sharply on Monday"])  # doctest: +SKIP
        'business'
    """

    method = "encoder"
    config_class = EncoderClassifierConfig
    long_text_modes = ("truncate", "head-tail", "chunks")
    exporters = ("onnx", "merged")

    # -- training ----------------------------------------------------------------------

    def _fit(self, texts, labels, eval_texts, eval_labels, schema: LabelSchema, output_dir):
        targets = schema.encode(labels)
        weights = (
            balanced_weights(targets, schema.multi_label)
            if self.config_.encoder.class_weights == "balanced"
            else None
        )
        self.build_model(schema)
        self._warn_if_short(texts)
        loss = loss_function(schema, weights.to(self.device_) if weights is not None else None)
        eval_targets = schema.encode(eval_labels) if eval_texts else None
        self.train_targets(texts, targets, eval_texts, eval_targets, schema, output_dir, loss)
        if schema.multi_label:
            schema.thresholds = self._thresholds(
                self.config_.encoder.threshold, eval_texts, eval_labels, schema
            )

    def fit_targets(
        self,
        texts: list[str],
        targets: np.ndarray,
        eval_set: tuple[list[str], np.ndarray, list] | None,
        schema: LabelSchema,
        loss: Callable,
        gold_of: Callable[[np.ndarray], np.ndarray],
        output_dir: Path | None = None,
    ) -> EncoderClassifier:
        """Train on any target rows with any ``loss(logits, targets)`` (distillation: the
        teacher's logits packed with the gold labels) and return the fitted ``self``.

        ``eval_set`` is (texts, target rows, gold labels); ``gold_of`` recovers the gold
        labels from target rows for model selection.
        """
        self._config = self.resolve_config()
        self.build_model(schema)
        eval_texts, eval_targets, eval_labels = eval_set or (None, None, None)
        self.train_targets(
            texts, targets, eval_texts, eval_targets, schema, output_dir, loss, gold_of
        )
        if schema.multi_label:
            schema.thresholds = self._thresholds(
                self.config_.encoder.threshold, eval_texts, eval_labels, schema
            )
        self._set_fitted(schema)
        return self

    def build_model(self, schema: LabelSchema) -> None:
        """Load the encoder with a fresh classifier for ``schema``'s classes."""
        from transformers import AutoModelForSequenceClassification

        config = self.config_
        source = backbone.model_source(config.model.model)
        self.tokenizer_ = backbone.load_tokenizer(
            source, "right", trust_remote_code=config.model.trust_remote_code
        )
        torch.manual_seed(config.train.seed)  # the fresh classifier's initial weights
        self.placement_ = backbone.placement_for(config.model, source)
        self.device_, self.dtype_ = self.placement_.device, self.placement_.dtype
        self.model_ = backbone.load_model(
            AutoModelForSequenceClassification,
            source,
            config.model,
            self.placement_,
            keep_full_precision=[],
            # a hub classifier with another label count gets a fresh layer of the right size
            ignore_mismatched_sizes=True,
            **self._layer_kwargs(source, config.encoder),
            **backbone.label_kwargs(schema),
        )
        self._add_chunk_attention()

    def train_targets(
        self,
        texts: list[str],
        targets: np.ndarray,
        eval_texts: list[str] | None,
        eval_targets: np.ndarray | None,
        schema: LabelSchema,
        output_dir: Path | None,
        loss: Callable,
        gold_of: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """Train the built model on target rows with ``loss(logits, targets)``."""
        dtype = torch.long if targets.dtype == np.int64 else torch.float32
        pad_id = self.tokenizer_.pad_token_id
        if self.config_.long_text.chunked:  # every window of a text, back-propagated
            aggregation = self.config_.long_text.chunk_aggregation
            dataset, collator = window_dataset, WindowCollator(pad_id, dtype)
            encode = self._windows
            forward = lambda model, batch: encoder_chunk_logits(model, batch, aggregation)  # noqa: E731
        else:
            dataset, collator, encode = token_dataset, TargetCollator(pad_id, dtype), self._encode
            forward = encoder_logits
        train_set = dataset(encode(texts), targets)
        eval_set = dataset(encode(eval_texts), eval_targets) if eval_texts else None
        self.train_result_ = train_model(
            self.model_,
            train_set,
            eval_set,
            collator,
            forward=forward,
            loss=loss,
            schema=schema,
            config=self.config_.train,
            output_dir=output_dir,
            device=self.device_,
            dtype=self.dtype_,
            progress=self.progress,
            optimizer=self._optimizer(),
            gold_of=gold_of,
        )
        self.model_.eval()

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW with the head's learning rate for the fresh classifier and window scorer."""
        return head_and_body_optimizer(
            self.model_, lambda name: name.startswith(HEAD_PREFIXES), self.config_.train
        )

    @staticmethod
    def _layer_kwargs(source: str, encoder_cfg: EncoderConfig) -> dict:
        """``num_hidden_layers=N`` when only the first N layers are kept (the rest of the
        checkpoint is not loaded); the saved config then says N, so a plain load agrees."""
        if not encoder_cfg.encoder_layers:
            return {}
        from transformers import AutoConfig

        available = AutoConfig.from_pretrained(source, trust_remote_code=False).num_hidden_layers
        if encoder_cfg.encoder_layers > available:
            raise LlmclfError(
                f"--encoder-layers {encoder_cfg.encoder_layers}: the encoder has only {available}"
            )
        return {"num_hidden_layers": encoder_cfg.encoder_layers}

    # -- inference ---------------------------------------------------------------------

    def _add_chunk_attention(self) -> None:
        """With chunks: check the architecture, and add the window scorer of attention
        aggregation (saved in model.safetensors with the rest of the model)."""
        long_text = self.config_.long_text
        if not long_text.chunked:
            return
        check_chunkable(self.model_)
        if long_text.chunk_aggregation == "attention":
            scorer = chunk_attention(self.model_.config.hidden_size)
            device = next(self.model_.parameters()).device
            self.model_.add_module(ATTENTION_MODULE, scorer.to(device))

    def _logits(self, texts: list[str]) -> np.ndarray:
        self.model_.eval()
        if self.config_.long_text.chunked:
            aggregation = self.config_.long_text.chunk_aggregation
            return run_window_batches(
                self._windows(texts),
                lambda batch: encoder_chunk_logits(self.model_, batch, aggregation),
                self.tokenizer_.pad_token_id,
                self.config_.train.eval_batch_size,
                self.device_,
                progress=self.progress,
                invariant=self.config_.train.batch_invariant,
            )
        return run_batches(
            self._encode(texts),
            lambda batch: encoder_logits(self.model_, batch),
            self.tokenizer_.pad_token_id,
            self.config_.train.eval_batch_size,
            self.device_,
            progress=self.progress,
            invariant=self.config_.train.batch_invariant,
        )

    def export_module(self) -> torch.nn.Module:
        return EncoderGraph(self.model_).eval()

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

    def _check_files(self, folder: Path) -> None:
        check_tokenizer(folder)
        config = check_json_file(folder, "config.json")
        labels = config.get("id2label") if isinstance(config, dict) else None
        if not isinstance(labels, dict) or len(labels) != self.schema_.num_classes:
            raise damaged(
                folder,
                "config.json",
                f"does not name the {self.schema_.num_classes} classes of {LABELS_FILE}",
            )
        check_safetensors(folder, MODEL_WEIGHTS)

    def _load_model(self, folder: Path) -> None:
        from transformers import AutoModelForSequenceClassification

        model_cfg = self.config_.model
        self.tokenizer_ = backbone.load_tokenizer(
            str(folder), "right", trust_remote_code=model_cfg.trust_remote_code
        )
        self.placement_ = backbone.placement_for(model_cfg, str(folder))
        self.device_, self.dtype_ = self.placement_.device, self.placement_.dtype
        long_text = self.config_.long_text
        scorer = long_text.chunked and long_text.chunk_aggregation == "attention"
        self.model_ = backbone.load_model(
            AutoModelForSequenceClassification,
            str(folder),
            model_cfg,
            self.placement_,
            keep_full_precision=[],
            run_weights=MODEL_WEIGHTS,
            attached=(ATTENTION_MODULE,) if scorer else (),
        )
        self._add_chunk_attention()
        if scorer:  # not a transformers weight: read here, as strictly
            self._load_scorer(folder)
        self.model_.eval()

    def _load_scorer(self, folder: Path) -> None:
        """The window scorer of attention aggregation, from model.safetensors: every one of
        its tensors, in its shape (a missing one would stay random)."""
        from safetensors.torch import load_file

        scorer = getattr(self.model_, ATTENTION_MODULE)
        prefix = ATTENTION_MODULE + "."
        found = {
            k: shape
            for k, shape in tensor_shapes(folder, MODEL_WEIGHTS).items()
            if k.startswith(prefix)
        }
        expected = {prefix + k: list(v.shape) for k, v in scorer.state_dict().items()}
        check_tensors(folder, MODEL_WEIGHTS, found, expected)
        weights = load_file(str(folder / MODEL_WEIGHTS))
        scorer.load_state_dict({k[len(prefix) :]: weights[k] for k in found}, strict=True)

    def _count_parameters(self) -> tuple[int, int]:
        return backbone.count_parameters(self.model_)
