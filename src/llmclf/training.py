"""Run the transformers Trainer for any llmclf method.

Each method supplies a ``forward(model, batch) -> logits`` and a ``loss(logits, labels)``;
everything else (evaluation every epoch, best checkpoint by the selection metric, early
stopping, progress bar, resume, seeds, mixed precision, ``accelerate launch``) is stock
Trainer behaviour.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments

from llmclf.calibration import to_proba
from llmclf.config import TrainConfig
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.metrics import classification_metrics

log = logging.getLogger("llmclf")

CHECKPOINTS = "checkpoints"


class ClassifierTrainer(Trainer):
    """The Trainer with the loss computed by a method's own forward and loss functions.

    Only ``compute_loss`` is overridden (the documented extension point), so checkpoints
    are ordinary PEFT adapter folders and resuming / best-model loading stay stock.
    """

    def __init__(self, *args, forward: Callable, loss: Callable, **kwargs):
        super().__init__(*args, **kwargs)
        self.forward_fn = forward
        self.loss_fn = loss
        # Our loss is a mean over the batch: let the Trainer scale it for accumulation.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        logits = self.forward_fn(model, inputs)
        loss = self.loss_fn(logits, labels)
        return (loss, {"logits": logits}) if return_outputs else loss


@dataclass
class TrainResult:
    seconds: float
    steps: int
    examples_per_second: float
    tokens_per_second: float
    best_metric: float | None
    log_history: list[dict]
    resumed_from_step: int | None = None


def training_arguments(
    config: TrainConfig,
    output_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    metric: str | None,
    progress: bool = True,
    token_inputs: bool = True,
) -> TrainingArguments:
    """TrainingArguments for one run; ``metric`` None means no validation split.

    ``token_inputs`` False (batches of cached features) turns off length grouping and
    the count of real tokens seen.
    """
    strategy = "no" if metric is None else ("steps" if config.save_steps else "epoch")
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        eval_strategy=strategy,
        save_strategy="steps" if config.save_steps else "epoch",
        eval_steps=config.save_steps,
        save_steps=config.save_steps or 500,
        save_total_limit=2,
        load_best_model_at_end=metric is not None,
        metric_for_best_model=metric,
        greater_is_better=True,
        logging_steps=10,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16 and device.type == "cuda",
        fp16=dtype == torch.float16 and device.type == "cuda",
        train_sampling_strategy="group_by_length" if token_inputs else "random",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding" if token_inputs else "no",
        label_names=["labels"],
        disable_tqdm=not progress,
    )


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing (trainer_state.json is its last
    file); one cut short by a kill is skipped."""
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    partial = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p not in complete]
    if partial:
        log.warning("skipping incomplete checkpoint(s): %s", ", ".join(p.name for p in partial))
    if not complete:
        return None
    return str(max(complete, key=lambda p: int(p.name.rsplit("-", 1)[-1])))


def checkpoint_to_resume(output_dir: Path, resume: bool) -> str | None:
    """The last checkpoint when resuming; refuse to silently overwrite an unfinished run."""
    folder = output_dir / CHECKPOINTS
    last = last_complete_checkpoint(folder)
    if resume:
        if last is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", folder)
        else:
            log.info("resuming from %s", last)
        return last
    if last is not None:
        raise LlmclfError(
            f"{output_dir} holds checkpoints of an unfinished run: pass --resume to continue it, "
            "or choose another --output"
        )
    return None


def run_trainer(
    model,
    train_dataset,
    eval_dataset,
    collator,
    forward: Callable,
    loss: Callable,
    compute_metrics: Callable | None,
    config: TrainConfig,
    args: TrainingArguments,
    optimizer: torch.optim.Optimizer | None = None,
    resume_from: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train with evaluation, early stopping and best-checkpoint loading; return timings."""
    callbacks = []
    if eval_dataset is not None and config.early_stopping_patience > 0:
        callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)
        )
    trainer = ClassifierTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        optimizers=(optimizer, None),
        forward=forward,
        loss=loss,
    )
    if not progress:  # without a progress bar the Trainer prints every log line instead
        trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    metrics = output.metrics
    tokens = trainer.state.num_input_tokens_seen or 0
    return TrainResult(
        seconds=seconds,
        steps=trainer.state.global_step,
        examples_per_second=float(metrics.get("train_samples_per_second", 0.0)),
        tokens_per_second=tokens / metrics["train_runtime"]
        if metrics.get("train_runtime")
        else 0.0,
        best_metric=trainer.state.best_metric,
        log_history=list(trainer.state.log_history),
        resumed_from_step=int(Path(resume_from).name.rsplit("-", 1)[-1]) if resume_from else None,
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mb() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def metrics_function(
    schema: LabelSchema, gold_of: Callable[[np.ndarray], np.ndarray] | None = None
):
    """The Trainer's ``compute_metrics``: F1 figures of the logits against the gold labels
    (``gold_of`` turns the batches' label arrays into gold labels; default: as they are)."""

    def compute(prediction) -> dict:
        proba = to_proba(np.asarray(prediction.predictions), schema.multi_label)
        gold = np.asarray(prediction.label_ids)
        gold = (gold_of(gold) if gold_of else gold).astype(np.int64)
        figures = classification_metrics(gold, schema.decide(proba), schema.classes)
        return {k: v for k, v in figures.items() if isinstance(v, float)}

    return compute
