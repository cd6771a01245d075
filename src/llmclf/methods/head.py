"""Approach 1: a linear head on the pooled hidden state of a causal LM, LoRA-tuned.

The model is transformers' own ``AutoModelForSequenceClassification`` (its ``score``
layer is the head) wrapped by PEFT with ``task_type="SEQ_CLS"``, so a saved run is a
plain PEFT adapter folder. llmclf pools with the attention mask (``pooling.py``) rather
than with the pad id, which keeps left padding and pad == eos right; ``--pooling token``
reads a learned token appended to each text (``pool_token.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import llmclf.backbone as backbone
from llmclf.batching import packed_batch, pad_batch, run_batches
from llmclf.config import (
    POSITIVE,
    AdapterConfig,
    MethodConfig,
    ModelConfig,
    TrainConfig,
    class_weights_option,
    option,
    section,
    threshold_option,
    validate,
)
from llmclf.distributed import is_wrapped, unwrap
from llmclf.errors import LlmclfError
from llmclf.evaluation.metrics import selection_metric
from llmclf.labels import LabelSchema
from llmclf.long_text import (
    ATTENTION_MODULE,
    LongTextConfig,
    LongTextTokens,
    WindowCollator,
    WindowFeatureCollator,
    aggregate,
    check_long_text,
    chunk_attention,
    feature_groups,
    group_windows,
    run_window_batches,
    window_dataset,
)
from llmclf.losses import balanced_weights, loss_function
from llmclf.methods.base import ClassifierBase
from llmclf.methods.block_cache import (
    CHECK_TEXTS,
    HiddenStateCollator,
    cache_record,
    cached_datasets,
    cached_head_logits,
    check_block_cache,
    check_cached_path,
    check_processes,
    fill_block_cache,
    split_decoder,
    training_dropout,
)
from llmclf.methods.features import FeatureCollator, cached_features, feature_key, feature_rows
from llmclf.methods.pool_token import POOL_TOKEN_MODULE, pool_token, token_inputs
from llmclf.methods.pooling_auto import (
    CANDIDATES,
    FITTED,
    HOW_FROZEN,
    HOW_LORA,
    NO_VALIDATION,
    PoolingChoice,
    check_auto,
    with_pooling,
)
from llmclf.pooling import POOLERS, pool_last, pool_packed, position_ids
from llmclf.run_folder import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    HEAD_WEIGHTS,
    atomic_path,
    check_json_file,
    check_safetensors,
    check_tensors,
    check_tokenizer,
    tensor_shapes,
)
from llmclf.training import head_and_body_optimizer, token_dataset, train_model

log = logging.getLogger("llmclf")

HEAD_MODULE = "score"
# --packing: a packed row holds up to max(this, --max-length) tokens; attention over a
# row of 256 costs little beside its linear layers (by FLOP count ~8 % of SmolLM2-135M's step), wider rows more
PACK_ROW_TOKENS = 256


@dataclass
class HeadConfig:
    """Approach 1: a linear head on a pooled hidden state."""

    pooling: str = option(
        "last",
        "last = hidden state of the final real token (an EOS is appended); mean = mean over "
        "real tokens; max = per-dimension max over real tokens; token = a learned token "
        "([CLS]-like, trained and saved with the head) appended after the text, read there "
        "(needs --lora on); auto = last or mean, whichever scores higher on the validation "
        "split (with LoRA: a full run with each, twice the training; --lora none: a head on "
        "each one's cached features); metrics.json keeps the figures. Only last exports to "
        "a plain transformers folder",
        choices=("last", "mean", "max", "token", "auto"),
    )
    class_weights: str = class_weights_option()
    num_layers: int | None = option(
        None,
        "keep only the first K decoder blocks and pool from block K (less compute)",
        bound=POSITIVE,
    )
    threshold: str = threshold_option()
    packing: bool = option(
        False,
        "training packs each batch's texts several to a row (rows of up to max(256, "
        "--max-length) tokens; attention stays within each text, positions restart) "
        "instead of padding every text to the batch's longest: less padding computed, "
        "for short texts of varied length; the same loss and gradients (docs/training.md)",
    )
    cache_lower_blocks: bool = option(
        False,
        "with --lora-layers K: run the N - K frozen blocks below LoRA once per text before "
        "training, not once per epoch, and train the top K blocks on their cached output. "
        "Held in memory: tokens x hidden x 2 bytes in bf16 (4 in float32), e.g. 240 texts "
        "of 128 tokens of SmolLM2-135M ~35 MB, 10,000 of 256 tokens of a 1B model (hidden "
        "2048) ~10 GB. Checked against the full forward on the first texts (an architecture "
        "where they differ trains the usual way); saved runs are unchanged "
        "(docs/training.md)",
        runtime=True,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class HeadClassifierConfig(MethodConfig):
    """Every option of ``HeadClassifier``, by section (the sections of config.yaml)."""

    model: ModelConfig = section(ModelConfig)
    adapter: AdapterConfig = section(AdapterConfig)
    train: TrainConfig = section(TrainConfig)
    head: HeadConfig = section(HeadConfig)
    long_text: LongTextConfig = section(LongTextConfig)

    def __post_init__(self) -> None:
        check_long_text(self.long_text, self.model.max_length)
        if self.head.pooling == "auto":
            check_auto(self)
        if self.head.packing:
            check_packing(self)
        if self.head.cache_lower_blocks:
            check_block_cache(self)
        if self.head.pooling == "token" and self.adapter.lora == "none":
            raise LlmclfError(
                "--pooling token learns a token that the whole model reads, so --lora none "
                "cannot cache its features: use --lora on, or --pooling last, mean or max"
            )


def check_packing(config: HeadClassifierConfig) -> None:
    """--packing packs the token rows LoRA trains on: refused where there are none."""
    if config.adapter.lora == "none":
        raise LlmclfError(
            "--packing packs the texts LoRA trains on; --lora none trains the head on cached "
            "features, which have no padding to save: drop --packing"
        )
    if config.long_text.chunked:
        raise LlmclfError(
            "--packing and --long-text chunks both shape the rows of a batch: drop --packing"
        )
    if config.head.pooling == "token":
        raise LlmclfError(
            "--pooling token appends its token after each padded text: use --pooling last, "
            "mean, max or auto with --packing"
        )


def pooled_hidden(model, batch: dict[str, torch.Tensor], pooling: str = "last") -> torch.Tensor:
    """The pooled final hidden state of each row, [batch, hidden].

    Args:
        model: a ``*ForSequenceClassification`` model, PEFT-wrapped or not.
        batch: ``input_ids`` and ``attention_mask``, [batch, seq], padded on either side.
        pooling: ``last`` (final real token), ``mean`` / ``max`` (over real tokens) or
            ``token`` (the model's learned ``pool_token``, appended after the real tokens).
    """
    mask = batch["attention_mask"]
    if pooling == "token":
        embeds, mask = token_inputs(_sequence_classifier(model), batch["input_ids"], mask)
        inputs, pool = {"inputs_embeds": embeds}, pool_last  # the token is the last real one
    else:
        inputs, pool = {"input_ids": batch["input_ids"]}, POOLERS[pooling]
    inputs.update(attention_mask=mask, position_ids=position_ids(mask))
    return pool(final_hidden(model, inputs), mask)


def final_hidden(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The base model's final hidden states, [rows, seq, hidden], for ``inputs`` (token
    ids or embeddings, mask and / or positions)."""
    if is_wrapped(model):
        # several processes: through DDP's forward (it arms the gradient all-reduce),
        # keeping only the final hidden state (transformers ties it to last_hidden_state);
        # its unused logits warn that they cannot find padding in inputs_embeds (token)
        with backbone.quiet_transformers():
            return model(**inputs, use_cache=False, output_hidden_states=[-1]).hidden_states[-1]
    return _sequence_classifier(model).base_model(**inputs, use_cache=False).last_hidden_state


def packed_head_logits(model, batch: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
    """``head_logits`` of texts packed several to a row (``batching.packed_batch``):
    ``input_ids``, ``position_ids`` and ``segments`` [rows, width]; one row of logits per
    text, in the order of ``segments``' numbers."""
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    pooled = pool_packed(final_hidden(model, inputs), batch["segments"], pooling)
    head = getattr(_sequence_classifier(model), HEAD_MODULE)
    return head(pooled.to(next(head.parameters()).dtype)).float()


def _sequence_classifier(model):
    """The ``*ForSequenceClassification`` model inside DDP and PEFT's wrappers."""
    model = unwrap(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_logits(model, batch: dict[str, torch.Tensor], pooling: str = "last") -> torch.Tensor:
    """Logits of the head on the pooled final hidden states, [batch, num_classes] float32."""
    head = getattr(_sequence_classifier(model), HEAD_MODULE)
    pooled = pooled_hidden(model, batch, pooling)
    return head(pooled.to(next(head.parameters()).dtype)).float()


def chunk_head_logits(
    model, batch: dict[str, torch.Tensor], pooling: str = "last", aggregation: str = "mean"
) -> torch.Tensor:
    """Logits of the head on each text's aggregated window vectors, [texts, num_classes].

    Args:
        batch: ``input_ids`` / ``attention_mask`` of every window, [windows, seq], and
            ``window_counts`` [texts] (``long_text.window_batch``: a text's windows in a row).
    """
    seq_cls = _sequence_classifier(model)  # also inside DDP's wrapper
    head = getattr(seq_cls, HEAD_MODULE)
    pooled = pooled_hidden(model, batch, pooling)
    features, mask = group_windows(pooled, batch["window_counts"])
    vector = aggregate(features, mask, aggregation, getattr(seq_cls, ATTENTION_MODULE, None))
    return head(vector.to(next(head.parameters()).dtype)).float()


class HeadGraph(torch.nn.Module):
    """A head run as one module, ``(input_ids, attention_mask) -> logits`` float32: the
    backbone (LoRA merged), the run's pooling computed from the attention mask (so left
    and right padding give the same answer) and the head. What graph exporters trace."""

    def __init__(self, model, pooling: str):
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        return head_logits(self.model, batch, self.pooling)


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


@dataclass
class PackingCollator:
    """Packs a batch's ``input_ids`` several to a row (``--packing``; ``packed_batch``)
    and stacks the labels in the batch's own order, which ``segments`` numbers."""

    pad_id: int
    multi_label: bool
    width: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = packed_batch([r["input_ids"] for r in rows], self.pad_id, self.width)
        dtype = torch.float32 if self.multi_label else torch.long
        batch["labels"] = torch.tensor(np.array([r["labels"] for r in rows]), dtype=dtype)
        return batch


def _label_dtype(schema: LabelSchema) -> torch.dtype:
    return torch.float32 if schema.multi_label else torch.long


class HeadClassifier(LongTextTokens, ClassifierBase):
    """A causal LM with a linear head on a pooled hidden state (final token, mean, max or
    a learned appended token).

    Options are the fields of ``HeadClassifierConfig``'s sections (the same names as the
    CLI flags, with underscores); ``config_`` holds them resolved after ``fit`` / ``load``.

    Example:
        >>> clf = HeadClassifier("smollm2-135m", epochs=2, lora_r=8)  # doctest: +SKIP
        >>> clf.fit(texts, labels).predict(["Shares fell sharply on Monday"])  # doctest: +SKIP
        ['business']
        >>> clf.config_.head.pooling  # doctest: +SKIP
        'last'
    """

    method = "head"
    config_class = HeadClassifierConfig
    long_text_modes = ("truncate", "head-tail", "chunks")
    supports_int8 = True
    exporters = ("onnx", "gguf", "merged")

    # -- training ----------------------------------------------------------------------

    def _fit(
        self, texts, labels, eval_texts, eval_labels, schema: LabelSchema, output_dir: Path | None
    ):
        self.pooling_choice_, self.fit_choices_, self.block_cache_ = None, {}, None
        if self.config_.head.cache_lower_blocks:
            check_processes()
        if self.config_.head.pooling == "auto":
            self._fit_auto(texts, labels, eval_texts, eval_labels, schema, output_dir)
        else:
            self._fit_pooling(texts, labels, eval_texts, eval_labels, schema, output_dir)
        if self.block_cache_ is not None:  # --cache-lower-blocks: used or not, and its cost
            self.fit_choices_["block_cache"] = self.block_cache_

    def _fit_pooling(self, texts, labels, eval_texts, eval_labels, schema, output_dir):
        """Train with the config's own pooling (never auto)."""
        config = self.config_
        torch.manual_seed(config.train.seed)
        self._build(schema)
        self._warn_if_short(texts)
        targets = schema.encode(labels)
        weights = None
        if config.head.class_weights == "balanced":
            weights = balanced_weights(targets, schema.multi_label).to(self.device_)
        eval_targets = schema.encode(eval_labels) if eval_texts else None
        make_inputs = self._frozen_inputs if self.frozen_ else self._lora_inputs
        model, train_set, eval_set, collator, forward, optimizer = make_inputs(
            texts, targets, eval_texts, eval_targets, schema
        )
        self.train_result_ = train_model(
            model,
            train_set,
            eval_set,
            collator,
            forward=forward,
            loss=loss_function(schema, weights),
            schema=schema,
            config=config.train,
            output_dir=output_dir,
            device=self.device_,
            dtype=self.dtype_,
            progress=self.progress,
            optimizer=optimizer,
            token_inputs=not self.frozen_,
        )
        self.model_ = backbone.merge_for_inference(self.model_).eval()
        if schema.multi_label:
            schema.thresholds = self._thresholds(
                config.head.threshold, eval_texts, eval_labels, schema
            )

    def _fit_auto(self, texts, labels, eval_texts, eval_labels, schema, output_dir):
        """``--pooling auto``: last or mean, whichever scores higher on the validation texts
        (macro-F1, micro-F1 for multi-label). ``--lora none``: the head trained on each
        pooling's cached features (``_probe_pooling``: the run's own training, so exact and
        cheap), then the run with the better. LoRA: a full run with each pooling, the better
        kept (twice the training; a frozen-feature probe misjudges last-token pooling, whose
        features only LoRA makes useful: BENCHMARKS.md). Sets ``pooling_choice_`` and
        ``fit_choices_`` (what metrics.json keeps)."""
        if not eval_texts:
            raise LlmclfError(NO_VALIDATION)
        start, user = time.perf_counter(), self.config_
        if user.adapter.lora == "none":
            data = (texts, schema.encode(labels), eval_texts, schema.encode(eval_labels))
            scores = {p: self._probe_pooling(p, data, schema) for p in CANDIDATES}
            how, seconds = HOW_FROZEN, time.perf_counter() - start
        else:
            fitted, scores = {}, {}
            for pooling in CANDIDATES:  # scratch checkpoints: --resume is refused with auto
                self._config = with_pooling(user, pooling)
                self._fit_pooling(texts, labels, eval_texts, eval_labels, schema, None)
                scores[pooling] = self.train_result_.best_metric
                fitted[pooling] = {name: getattr(self, name) for name in FITTED}
                fitted[pooling]["thresholds"] = schema.thresholds
                fitted[pooling]["block_cache_"] = self.block_cache_
            how, seconds = HOW_LORA, time.perf_counter() - start
        choice = PoolingChoice.pick(scores, selection_metric(schema.multi_label), how, seconds)
        log.info(choice.describe())
        self.pooling_choice_ = choice
        self.fit_choices_["pooling_auto"] = choice.record()
        self._config = with_pooling(user, choice.chosen)
        if user.adapter.lora == "none":  # features cached: the probe's training, once more
            self._fit_pooling(texts, labels, eval_texts, eval_labels, schema, output_dir)
            return
        kept = fitted.pop(choice.chosen)
        schema.thresholds = kept.pop("thresholds")
        for name, value in kept.items():
            setattr(self, name, value)

    def _probe_pooling(self, pooling: str, data: tuple, schema: LabelSchema) -> float | None:
        """The best validation figure (macro-F1, micro-F1 for multi-label) of this
        ``--lora none`` run's head trained on ``pooling``'s cached features, exactly as the
        run trains it. ``data``: training texts and targets, validation texts and targets."""
        texts, targets, eval_texts, eval_targets = data
        user = self.config_
        # the probe's Trainer keeps no checkpoints and reports to no tracker: the run does
        train = dataclasses.replace(user.train, resume=False, report_to="none")
        self._config = dataclasses.replace(with_pooling(user, pooling), train=train)
        try:
            torch.manual_seed(train.seed)  # as the run itself starts
            self._build(schema)
            weights = None
            if user.head.class_weights == "balanced":
                weights = balanced_weights(targets, schema.multi_label).to(self.device_)
            model, train_set, eval_set, collator, forward, optimizer = self._frozen_inputs(
                texts, targets, eval_texts, eval_targets, schema
            )
            result = train_model(
                model,
                train_set,
                eval_set,
                collator,
                forward=forward,
                loss=loss_function(schema, weights),
                schema=schema,
                config=train,
                output_dir=None,
                device=self.device_,
                dtype=self.dtype_,
                progress=self.progress,
                optimizer=optimizer,
                token_inputs=False,
            )
        finally:
            self._config = user
        return result.best_metric

    def _lora_inputs(self, texts, targets, eval_texts, eval_targets, schema):
        """What the Trainer needs to train LoRA + head end to end on token ids."""
        pooling = self.config_.head.pooling
        if self.config_.long_text.chunked:  # every window of a text, back-propagated
            aggregation = self.config_.long_text.chunk_aggregation
            train_set = window_dataset(self._windows(texts), targets)
            eval_set = (
                window_dataset(self._windows(eval_texts), eval_targets) if eval_texts else None
            )
            collator = WindowCollator(self.tokenizer_.pad_token_id, _label_dtype(schema))
            forward = lambda model, batch: chunk_head_logits(model, batch, pooling, aggregation)  # noqa: E731
            return self.model_, train_set, eval_set, collator, forward, self._optimizer()
        ids = self._encode(texts)
        eval_ids = self._encode(eval_texts) if eval_texts else None
        if self.config_.head.cache_lower_blocks:
            cached = self._block_cache_inputs(ids, targets, eval_ids, eval_targets, schema)
            if cached is not None:
                return self.model_, *cached, self._optimizer()
        train_set = token_dataset(ids, targets)
        eval_set = token_dataset(eval_ids, eval_targets) if eval_texts else None
        if self.config_.head.packing:
            width = max(PACK_ROW_TOKENS, self.config_.model.max_length)
            collator = PackingCollator(self.tokenizer_.pad_token_id, schema.multi_label, width)
            forward = lambda model, batch: packed_head_logits(model, batch, pooling)  # noqa: E731
        else:
            collator = PaddingCollator(self.tokenizer_.pad_token_id, schema.multi_label)
            forward = lambda model, batch: head_logits(model, batch, pooling)  # noqa: E731
        return self.model_, train_set, eval_set, collator, forward, self._optimizer()

    def _block_cache_inputs(self, ids, targets, eval_ids, eval_targets, schema):
        """``--cache-lower-blocks``: the training and validation sets, collator and forward
        that train the top ``--lora-layers`` blocks on the cached output of the frozen ones
        below (``block_cache.py``); None, with one warning line, where this model cannot
        (``block_cache_`` says which, for metrics.json)."""
        decoder = _sequence_classifier(self.model_).base_model
        name = type(decoder).__name__
        dropout = training_dropout(decoder.config)
        if dropout:
            return self._no_block_cache(f"{name} uses dropout in training ({', '.join(dropout)})")
        lower, top = split_decoder(decoder, self.config_.adapter.lora_layers)
        pad_id, pooling = self.tokenizer_.pad_token_id, self.config_.head.pooling
        head = self._head()
        differs = check_cached_path(
            self.model_,
            lambda batch: head_logits(self.model_, batch, pooling),
            lower,
            top,
            head,
            ids[:CHECK_TEXTS],
            pad_id,
            pooling,
            self.device_,
            self.dtype_,
        )
        if differs:
            return self._no_block_cache(f"{name}: {differs}")
        start = time.perf_counter()
        hidden = fill_block_cache(
            lower,
            ids + (eval_ids or []),
            pad_id,
            self.config_.train.eval_batch_size,
            self.device_,
            self.dtype_,
            progress=self.progress,
        )
        record = self.block_cache_ = cache_record(lower, top, hidden, time.perf_counter() - start)
        log.info(
            "--cache-lower-blocks: the %d frozen blocks ran once over %d texts (%d tokens, "
            "%.0f MiB held) in %.1f s; training runs the top %d",
            record["blocks_cached"], record["texts"], record["tokens"], record["megabytes"],
            record["fill_seconds"], len(top.layers),
        )  # fmt: skip
        train_set, eval_set = cached_datasets(ids, targets, eval_ids, eval_targets)
        collator = HiddenStateCollator(hidden, pad_id, schema.multi_label)
        forward = lambda model, batch: cached_head_logits(top, head, batch, pooling)  # noqa: E731
        return train_set, eval_set, collator, forward

    def _no_block_cache(self, reason: str) -> None:
        log.warning(
            "--cache-lower-blocks: %s, so the cache cannot stand in for the blocks below "
            "LoRA; training the usual way",
            reason,
        )
        self.block_cache_ = {"used": False, "reason": reason}

    def _frozen_inputs(self, texts, targets, eval_texts, eval_targets, schema):
        """What the Trainer needs to train the head alone on cached pooled features (with
        chunks: the head and the aggregation on every window's cached features)."""
        head = self._head()
        train = self.config_.train
        if self.config_.long_text.chunked:
            model, collator, forward = self._frozen_chunk_head(schema)
            train_set = self._window_feature_rows(texts, targets)
            eval_set = self._window_feature_rows(eval_texts, eval_targets) if eval_texts else None
        else:
            model, collator = head, FeatureCollator(schema.multi_label)
            forward = lambda model, batch: model(batch["features"]).float()  # noqa: E731
            train_set = feature_rows(self._features(texts), targets)
            eval_set = (
                feature_rows(self._features(eval_texts), eval_targets) if eval_texts else None
            )
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=train.head_learning_rate or train.learning_rate,
            weight_decay=train.weight_decay,
        )
        return model, train_set, eval_set, collator, forward, optimizer

    def _frozen_chunk_head(self, schema: LabelSchema):
        """The trainable part over cached window features: the head and, for attention,
        the window scorer (the model's own modules, so training them trains the model)."""
        seq_cls = self.model_
        parts = {HEAD_MODULE: self._head()}
        if hasattr(seq_cls, ATTENTION_MODULE):
            parts[ATTENTION_MODULE] = getattr(seq_cls, ATTENTION_MODULE)
        model = torch.nn.ModuleDict(parts)
        aggregation = self.config_.long_text.chunk_aggregation

        def forward(model, batch):
            vector = aggregate(
                batch["features"],
                batch["feature_mask"],
                aggregation,
                getattr(model, ATTENTION_MODULE, None),
            )
            return model[HEAD_MODULE](vector).float()

        return model, WindowFeatureCollator(_label_dtype(schema)), forward

    def _window_feature_rows(self, texts: list[str], targets: np.ndarray) -> list[dict]:
        windows = self._windows(texts)
        features = self._sequence_features([w for ws in windows for w in ws])
        groups = feature_groups(features, windows)
        return [{"features": f, "labels": t} for f, t in zip(groups, targets)]

    def _build(self, schema: LabelSchema):
        """Load base + fresh head, then wrap in LoRA unless ``lora`` is none."""
        adapter = self.config_.adapter
        self.frozen_ = adapter.lora == "none"
        model = self._load_base(schema)
        if self.frozen_:
            self.model_ = model
            model.requires_grad_(False)
            self._head().requires_grad_(True)
            if hasattr(model, ATTENTION_MODULE):
                getattr(model, ATTENTION_MODULE).requires_grad_(True)
        else:  # the learned modules besides the head train and are saved with it
            extra = [m for m in (ATTENTION_MODULE, POOL_TOKEN_MODULE) if hasattr(model, m)]
            self.model_ = backbone.add_lora(
                model, adapter, "SEQ_CLS", modules_to_save=extra or None
            )

    def _load_base(self, schema: LabelSchema, tokenizer_source: str | None = None):
        """The base ``*ForSequenceClassification`` model with a fresh full-precision head."""
        from transformers import AutoModelForSequenceClassification

        model_cfg, head_cfg = self.config_.model, self.config_.head
        source = backbone.model_source(model_cfg.model)
        self.tokenizer_ = backbone.load_tokenizer(
            tokenizer_source or source,
            "right",
            append_eos=head_cfg.pooling == "last",
            trust_remote_code=model_cfg.trust_remote_code,
        )
        self.placement_ = backbone.placement_for(model_cfg, source)
        self.device_, self.dtype_ = self.placement_.device, self.placement_.dtype
        model = backbone.load_model(
            AutoModelForSequenceClassification,
            source,
            model_cfg,
            self.placement_,
            keep_full_precision=[HEAD_MODULE],
            num_layers=head_cfg.num_layers,
            **backbone.label_kwargs(schema, pad_token_id=self.tokenizer_.pad_token_id),
        )
        long_text = self.config_.long_text
        if long_text.chunked and long_text.chunk_aggregation == "attention":
            # fresh here; trained with the head, and read back from the run on load
            hidden = model.config.get_text_config().hidden_size
            device = next(model.parameters()).device
            model.add_module(ATTENTION_MODULE, chunk_attention(hidden).to(device))
        if head_cfg.pooling == "token":  # fresh here too; a loaded run's is read back
            model.add_module(POOL_TOKEN_MODULE, pool_token(model, self.tokenizer_.eos_token_id))
        return model

    def _head(self) -> torch.nn.Module:
        seq_cls = (
            self.model_.get_base_model() if hasattr(self.model_, "get_base_model") else self.model_
        )
        return getattr(seq_cls, HEAD_MODULE)

    def _features(self, texts: list[str]) -> np.ndarray:
        """Pooled features of ``texts`` (one window each) from the frozen base, cached."""
        return self._sequence_features(self._encode(texts))

    def _sequence_features(self, sequences: list[list[int]]) -> np.ndarray:
        """Pooled features of token-id ``sequences`` from the frozen base, cached on disk."""
        config = self.config_
        description = {
            "model": backbone.model_source(config.model.model),
            "pooling": config.head.pooling,
            "num_layers": config.head.num_layers,
            "dtype": str(self.dtype_),
            "quantize": config.model.quantize,
        }
        self.model_.eval()
        return cached_features(
            sequences,
            lambda batch: pooled_hidden(self.model_, batch, config.head.pooling),
            feature_key(description, sequences),
            self.tokenizer_.pad_token_id,
            config.train.eval_batch_size,
            self.device_,
            progress=self.progress,
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW with a higher learning rate for the freshly initialised head (and the
        pooling token of ``--pooling token`` and the window scorer of chunks' attention,
        trained as part of the head, as ``--lora none`` trains them)."""
        head_parts = (f".{HEAD_MODULE}.", f".{POOL_TOKEN_MODULE}.", f".{ATTENTION_MODULE}.")
        return head_and_body_optimizer(
            self.model_, lambda name: any(part in name for part in head_parts), self.config_.train
        )

    # -- inference ---------------------------------------------------------------------

    def _logits(self, texts: list[str]) -> np.ndarray:
        pooling = self.config_.head.pooling
        self.model_.eval()
        if self.config_.long_text.chunked:
            aggregation = self.config_.long_text.chunk_aggregation
            return run_window_batches(
                self._windows(texts),
                lambda batch: chunk_head_logits(self.model_, batch, pooling, aggregation),
                self.tokenizer_.pad_token_id,
                self.config_.train.eval_batch_size,
                self.device_,
                progress=self.progress,
                invariant=self.config_.train.batch_invariant,
            )
        return run_batches(
            self._encode(texts),
            lambda batch: head_logits(self.model_, batch, pooling),
            self.tokenizer_.pad_token_id,
            self.config_.train.eval_batch_size,
            self.device_,
            progress=self.progress,
            invariant=self.config_.train.batch_invariant,
        )

    def export_module(self) -> torch.nn.Module:
        """The run as ``HeadGraph``: the adapter merged into the (full-precision) base."""
        model = self.model_
        if hasattr(model, "merge_and_unload"):  # a PEFT model: the adapter is merged already
            with warnings.catch_warnings():  # "All adapters are already merged": as meant
                warnings.simplefilter("ignore")
                model = model.merge_and_unload()
        return HeadGraph(model, self.config_.head.pooling).eval()

    def export_refusal(self, format: str) -> str | None:
        pooling = self.config_.head.pooling
        if format == "merged" and pooling != "last":
            return (
                f"pools with --pooling {pooling}: transformers' sequence classifiers read "
                "the last input token's hidden state (no mean, max or learned pooling token), "
                "so only --pooling last runs export to a plain folder; predict with llmclf instead"
            )
        return None

    # -- persistence -------------------------------------------------------------------

    def _save_model(self, folder: Path) -> None:
        if self.frozen_:  # no adapter: the head's weights alone, loadable into the base model
            from safetensors.torch import save_file

            tensors = {  # the head, and the window scorer saved with it
                f"{module}.{name}": value.detach().float().cpu().contiguous()
                for module in self._frozen_modules(self.model_)
                for name, value in getattr(self.model_, module).state_dict().items()
            }
            with atomic_path(folder / HEAD_WEIGHTS) as partial:
                save_file(tensors, str(partial))
        else:
            self.model_.save_pretrained(folder)
        self.tokenizer_.save_pretrained(folder)

    def _check_files(self, folder: Path) -> None:
        check_tokenizer(folder)
        rows = {f"{HEAD_MODULE}.weight": self.schema_.num_classes}
        if (folder / HEAD_WEIGHTS).is_file():
            check_safetensors(folder, HEAD_WEIGHTS, rows)
        else:
            check_json_file(folder, ADAPTER_CONFIG)
            check_safetensors(folder, ADAPTER_WEIGHTS, rows)

    def _load_model(self, folder: Path) -> None:
        self.frozen_ = (folder / HEAD_WEIGHTS).is_file()
        base = self._load_base(self.schema_, tokenizer_source=str(folder))
        if self.frozen_:
            self.model_ = self._load_head(base, folder)
        else:
            self.model_ = backbone.load_adapter_for_inference(base, str(folder))
        self.model_.requires_grad_(False)
        self.model_.eval()

    @staticmethod
    def _frozen_modules(model) -> list[str]:
        """The modules a ``--lora none`` run learns and saves in head.safetensors: the head,
        and the window scorer of attention aggregation (and a pooling token, were there
        one: ``--pooling token`` needs LoRA)."""
        return [m for m in (HEAD_MODULE, ATTENTION_MODULE, POOL_TOKEN_MODULE) if hasattr(model, m)]

    def _load_head(self, base, folder: Path):
        """``base`` with head.safetensors loaded strictly: every tensor of the file fills a
        parameter of the head (or window scorer), and every one of theirs is in the file;
        anything else is damage, named (a tensor left out would stay random)."""
        from safetensors.torch import load_file

        modules = self._frozen_modules(base)
        expected = {
            f"{module}.{name}": list(value.shape)
            for module in modules
            for name, value in getattr(base, module).state_dict().items()
        }
        check_tensors(folder, HEAD_WEIGHTS, tensor_shapes(folder, HEAD_WEIGHTS), expected)
        tensors = load_file(str(folder / HEAD_WEIGHTS))
        for module in modules:
            prefix = f"{module}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            getattr(base, module).load_state_dict(state, strict=True)
        return base

    def _count_parameters(self) -> tuple[int, int]:
        trainable, total = backbone.count_parameters(self.model_)
        if self.frozen_:  # only the head learns in frozen-feature mode
            trainable = sum(p.numel() for p in self._head().parameters())
        return trainable, total
