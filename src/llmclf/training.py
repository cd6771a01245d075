"""Run the transformers Trainer for any llmclf method.

Each method supplies a ``forward(model, batch) -> logits`` and a ``loss(logits, labels)``;
everything else (evaluation every epoch, best checkpoint by the selection metric, early
stopping, progress bar, resume, seeds, mixed precision, ``accelerate launch``) is stock
Trainer behaviour.
"""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import ExportableState

from llmclf.config import TrainConfig
from llmclf.distributed import is_main_process, world_size
from llmclf.errors import LlmclfError
from llmclf.evaluation.calibration import to_proba
from llmclf.evaluation.metrics import classification_metrics, selection_metric
from llmclf.labels import LabelSchema
from llmclf.run_folder import CHECKPOINTS, TRACKER_LOGS, RunFolder

log = logging.getLogger("llmclf")


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
        # accelerate puts its mixed-precision autocast around model.forward; a method's
        # forward may call inner modules (the head pools the base model's hidden states)
        with self.accelerator.autocast():
            logits = self.forward_fn(model, inputs)
        loss = self.loss_fn(logits, labels)
        return (loss, {"logits": logits}) if return_outputs else loss


class RunClock(TrainerCallback, ExportableState):
    """Training time across resumes: the seconds trained before each checkpoint travel in
    the checkpoint's ``trainer_state.json`` (the Trainer's stateful-callback mechanism,
    as EarlyStoppingCallback's counter does), so a resumed run adds them to its own.
    Time after the last checkpoint of a killed process is work lost, not counted."""

    def __init__(self, seconds_before: float = 0.0):
        self.seconds_before = seconds_before
        self.tokens_at_start = 0
        self._start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self.tokens_at_start = state.num_input_tokens_seen or 0

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self._start

    def state(self) -> dict:
        return {"args": {"seconds_before": self.seconds()}, "attributes": {}}


class LogAtCheckpoints(TrainerCallback):
    """Log the running loss at every step a checkpoint is saved, so a resumed run's
    log is the uninterrupted run's: its first log averages the steps after the
    checkpoint, and no logged average straddles a kill."""

    def on_step_end(self, args, state, control, **kwargs):
        control.should_log = control.should_log or control.should_save

    on_epoch_end = on_step_end


TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # -> pip name


def check_tracker(report_to: str) -> None:
    """Before any data loads: the tracker ``--report-to`` names is installed."""
    if report_to == "none":
        return
    import transformers.integrations as integrations

    available = {
        "tensorboard": integrations.is_tensorboard_available,
        "mlflow": integrations.is_mlflow_available,
        "wandb": integrations.is_wandb_available,
    }[report_to]
    if not available():
        raise LlmclfError(
            f"--report-to {report_to} needs the {TRACKERS[report_to]} package: "
            f"pip install {TRACKERS[report_to]} (or llmclf[{report_to}])"
        )


class WhereLogsWent(TrainerCallback):
    """Records where ``--report-to`` sent the logs (kept in metrics.json ``tracking``):
    TensorBoard's folder, MLflow's tracking URI and run id, the W&B run's URL. Runs after
    the Trainer's own integration callbacks, which start the tracker's run."""

    def __init__(self, report_to: str, logs: Path | None):
        self.record: dict = {"report_to": report_to}
        if logs is not None:
            self.record["logs"] = str(logs)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.record["report_to"] == "mlflow":
            import mlflow

            run = mlflow.active_run()
            self.record["tracking_uri"] = mlflow.get_tracking_uri()
            if run is not None:
                self.record["run_id"] = run.info.run_id
        elif self.record["report_to"] == "wandb":
            import wandb

            if wandb.run is not None:
                self.record.update(url=wandb.run.url, dir=wandb.run.dir)


def tracking_callbacks(report_to: str, logs: Path | None) -> tuple[list[str], list]:
    """The Trainer's ``report_to`` and the callbacks for ``--report-to``.

    TensorBoard gets its own writer on ``logs`` (the Trainer's default folder is inside
    the checkpoints, which a finished run deletes), on the main process only.
    """
    if report_to == "none":
        return ["none"], []
    if report_to != "tensorboard":
        return [report_to], [WhereLogsWent(report_to, None)]
    from transformers.integrations import TensorBoardCallback

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboardX, as the Trainer's callback falls back to
        from tensorboardX import SummaryWriter

    callbacks: list = [WhereLogsWent(report_to, logs)]
    if is_main_process():
        writer = SummaryWriter(log_dir=str(logs)) if logs is not None else SummaryWriter()
        callbacks.insert(0, TensorBoardCallback(writer))
        callbacks[1].record["logs"] = writer.log_dir
    return ["none"], callbacks


@dataclass
class TrainResult:
    seconds: float
    steps: int
    examples_per_second: float
    tokens_per_second: float
    best_metric: float | None
    log_history: list[dict]
    resumed_from_step: int | None = None
    seconds_before_resume: float = 0.0  # trained by earlier processes, up to the checkpoint
    tracking: dict | None = None  # where --report-to sent the logs


def training_arguments(
    config: TrainConfig,
    output_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    metric: str | None,
    progress: bool = True,
    token_inputs: bool = True,
    report_to: list[str] | None = None,
) -> TrainingArguments:
    """TrainingArguments for one run; ``metric`` None means no validation split.

    ``token_inputs`` False (batches of cached features) turns off length grouping and
    the count of real tokens seen. ``report_to``: the Trainer's integrations (none).
    """
    report_to = report_to or ["none"]
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
        report_to=report_to,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=device.type == "cpu",
        # bf16 autocast over bf16 base weights, on CUDA and CPU alike: the trainable LoRA
        # weights and head stay fp32 (PEFT's autocast_adapter_dtype, keep_full_precision),
        # so the optimizer state and the loss are fp32 too
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16 and device.type == "cuda",
        train_sampling_strategy="group_by_length" if token_inputs else "random",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding" if token_inputs else "no",
        label_names=["labels"],
        disable_tqdm=not progress,
        # a resumed run continues its clock and its early-stopping patience
        restore_callback_states_from_checkpoint=True,
    )


def checkpoint_to_resume(output_dir: Path, resume: bool) -> str | None:
    """The last checkpoint when resuming; refuse to silently overwrite an unfinished run."""
    folder = output_dir / CHECKPOINTS
    last = RunFolder(output_dir).last_checkpoint(processes=world_size())
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
    extra_callbacks: list[TrainerCallback] | None = None,
) -> TrainResult:
    """Train with evaluation, early stopping and best-checkpoint loading; return timings."""
    callbacks: list[TrainerCallback] = [RunClock(), LogAtCheckpoints(), *(extra_callbacks or [])]
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
    # A resumed run's Trainer state is restored, the clock with it (a new instance).
    clock = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RunClock))
    tokens = (trainer.state.num_input_tokens_seen or 0) - clock.tokens_at_start
    return TrainResult(
        seconds=seconds,
        steps=trainer.state.global_step,
        # rates of this process: its examples and tokens over its own time
        examples_per_second=float(metrics.get("train_samples_per_second", 0.0)),
        tokens_per_second=tokens / metrics["train_runtime"]
        if metrics.get("train_runtime")
        else 0.0,
        seconds_before_resume=clock.seconds_before if resume_from else 0.0,
        best_metric=trainer.state.best_metric,
        log_history=list(trainer.state.log_history),
        resumed_from_step=int(Path(resume_from).name.rsplit("-", 1)[-1]) if resume_from else None,
        tracking=next((cb.record for cb in callbacks if isinstance(cb, WhereLogsWent)), None),
    )


def train_model(
    model,
    train_set,
    eval_set,
    collator,
    *,
    forward: Callable,
    loss: Callable,
    schema: LabelSchema,
    config: TrainConfig,
    output_dir: Path | None,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
    token_inputs: bool = True,
    gold_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TrainResult:
    """Train ``model`` with the Trainer, the one way every method trains.

    Checkpoints go to ``output_dir/checkpoints`` (a scratch folder without ``output_dir``)
    and are resumed from with ``config.resume``; with an ``eval_set`` the best epoch by
    the selection metric (macro- or micro-F1) is kept. ``token_inputs`` False: batches of
    cached features (no length grouping, no token count).
    """
    resume_from = checkpoint_to_resume(output_dir, config.resume) if output_dir else None
    metric = selection_metric(schema.multi_label) if eval_set is not None else None
    check_tracker(config.report_to)
    logs = output_dir / TRACKER_LOGS / config.report_to if output_dir else None
    report_to, callbacks = tracking_callbacks(config.report_to, logs)
    with tempfile.TemporaryDirectory(prefix="llmclf-") as scratch:
        folder = (output_dir or Path(scratch)) / CHECKPOINTS
        args = training_arguments(
            config,
            folder,
            device,
            dtype,
            metric,
            progress=progress,
            token_inputs=token_inputs,
            report_to=report_to,
        )
        return run_trainer(
            model,
            train_set,
            eval_set,
            collator,
            forward=forward,
            loss=loss,
            compute_metrics=metrics_function(schema, gold_of),
            config=config,
            args=args,
            optimizer=optimizer,
            resume_from=resume_from,
            progress=progress,
            extra_callbacks=callbacks,
        )


def token_dataset(ids: list[list[int]], targets: np.ndarray):
    """A ``datasets.Dataset`` of token ids and their targets, with the lengths the
    Trainer groups batches by."""
    import datasets

    return datasets.Dataset.from_dict(
        {"input_ids": ids, "labels": targets.tolist(), "length": [len(x) for x in ids]}
    )


def head_and_body_optimizer(
    model, is_head: Callable[[str], bool], config: TrainConfig
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; those ``is_head(name)`` picks (the freshly
    initialised classifier) get ``head_learning_rate``, the rest ``learning_rate``."""
    head, body = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if is_head(name) else body).append(param)
    groups = [{"params": body, "lr": config.learning_rate}]
    if head:
        groups.append({"params": head, "lr": config.head_learning_rate or config.learning_rate})
    return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)


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
