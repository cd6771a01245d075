"""Run the transformers Trainer for any llmclf method.

Each method supplies a ``forward(model, batch) -> logits`` and a ``loss(logits, labels)``;
everything else (evaluation every epoch, best checkpoint by the selection metric, early
stopping, progress bar, resume, seeds, mixed precision, ``accelerate launch``) is stock
Trainer behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import math
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

from llmclf import speed
from llmclf.config import TrainConfig
from llmclf.distributed import is_main_process, unwrap, world_size
from llmclf.errors import LlmclfError
from llmclf.evaluation.calibration import to_proba
from llmclf.evaluation.metrics import classification_metrics, selection_metric
from llmclf.labels import LabelSchema
from llmclf.run_folder import CHECKPOINTS, TRACKER_LOGS, RunFolder

log = logging.getLogger("llmclf")


MIN_BUDGET_STEPS = 50  # --batch-tokens warns below this many optimizer steps in a run


class TokenBudgetBatches(torch.utils.data.Sampler):
    """Training batches of at most ``budget`` padded tokens (rows × longest row) each.

    Every epoch the rows are sorted by length, ties in a fresh random order, cut into
    batches greedily, and the batches shuffled. The cuts depend on the sorted lengths
    alone, so every epoch has the same number of batches (what the Trainer's schedule is
    computed from) while the texts that share a batch change. A row longer than the
    budget is a batch by itself. ``set_epoch`` (called by accelerate's data loader) picks
    the epoch's order, so a resumed run sees the same batches.

    Example:
        >>> batches = TokenBudgetBatches([30, 32, 31, 120, 128], budget=128, seed=0)
        >>> len(batches), sorted(len(b) for b in batches)
        (3, [1, 1, 3])
    """

    def __init__(self, lengths: list[int], budget: int, seed: int = 0):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.budget = int(budget)
        self.seed = seed
        self.epoch = 0
        self.sizes = self._sizes(np.sort(self.lengths))

    def _sizes(self, ascending: np.ndarray) -> list[int]:
        sizes, rows = [], 0
        for length in ascending:  # ascending: the row added is the batch's longest
            if rows and (rows + 1) * length > self.budget:
                sizes.append(rows)
                rows = 0
            rows += 1
        return [*sizes, rows] if rows else sizes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = np.lexsort((rng.random(len(self.lengths)), self.lengths))
        batches = np.split(order, np.cumsum(self.sizes)[:-1])
        for index in rng.permutation(len(batches)):
            yield batches[index].tolist()

    @property
    def mean_rows(self) -> float:
        return len(self.lengths) / max(1, len(self.sizes))


class ClassifierTrainer(Trainer):
    """The Trainer with the loss computed by a method's own forward and loss functions.

    ``compute_loss`` is overridden (the documented extension point), so checkpoints are
    ordinary PEFT adapter folders and resuming / best-model loading stay stock; given
    ``batches`` (``TokenBudgetBatches``), ``get_train_dataloader`` (documented for custom
    behaviour too) batches by them.
    """

    def __init__(
        self,
        *args,
        forward: Callable,
        loss: Callable,
        batches: TokenBudgetBatches | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.forward_fn = forward
        self.loss_fn = loss
        self.batches = batches
        # Our loss is a mean over the batch: let the Trainer scale it for accumulation.
        self.model_accepts_loss_kwargs = False

    def get_train_dataloader(self):
        if self.batches is None:
            return super().get_train_dataloader()
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_sampler=self.batches, collate_fn=self.data_collator
        )
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        # accelerate puts its mixed-precision autocast around model.forward; a method's
        # forward may call inner modules (the head pools the base model's hidden states)
        with (
            self.accelerator.autocast(),
            adapters_compute_in_autocast(model, self.args),
            fastest_attention(model, inputs, self.args),
        ):
            logits = self.forward_fn(model, inputs)
        loss = self.loss_fn(logits, labels)
        return (loss, {"logits": logits}) if return_outputs else loss


def adapters_compute_in_autocast(model, args: TrainingArguments):
    """Under bf16 / fp16 autocast, LoRA reads its input in the compute dtype: PEFT would
    first cast each adapted layer's input to the adapter weights' float32 (a copy of the
    activations, cast back by autocast for the matmul, and both again in the backward pass:
    a tenth of a bf16 step on a CPU, measured). The weights stay float32 (the master
    copy the optimizer updates); autocast casts them, small, for each matmul. PEFT's own
    switch, ``peft.helpers.disable_input_dtype_casting``; a no-op in float32."""
    if not (args.bf16 or args.fp16):
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model)


def fastest_attention(model, inputs: dict, args: TrainingArguments):
    """On a CPU, SDPA attention with the kernel the probe measured fastest, forward and
    backward, at this batch's shape and dtype (``speed.attention_backend``; the math
    kernel stays allowed as the fallback where flash cannot run). Elsewhere, with another
    attention implementation or without token ids: no change."""
    ids = inputs.get("input_ids")
    config = getattr(unwrap(model), "config", None)
    if not args.use_cpu or config is None or not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        return contextlib.nullcontext()
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return contextlib.nullcontext()
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    backend = speed.attention_backend(ids.shape[0], heads, ids.shape[1], head_dim, dtype)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(list(dict.fromkeys([backend, SDPBackend.MATH])))


def _training_compiled(forward: Callable) -> Callable:
    """``forward`` compiled for the training steps; evaluation passes (no gradients) run
    it as it is rather than paying a compilation of their own for a few batches."""
    compiled = torch.compile(forward)

    def run(*args, **kwargs):
        return (compiled if torch.is_grad_enabled() else forward)(*args, **kwargs)

    return run


@contextlib.contextmanager
def compiled_blocks(model, active: bool = True):
    """Within the context, each repeated block of ``model`` (the classes its
    ``_no_split_modules`` names: decoder or encoder layers) runs ``torch.compile``'s
    forward; the blocks share one compiled graph (their code is the same, their weights
    are its inputs), so the compilation is that of one block. On leaving, the blocks get
    their own forward back (saved runs and prediction are untouched)."""
    if not active:
        yield []
        return
    inner = unwrap(model)
    names = set()
    for module in inner.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    blocks = [m for m in inner.modules() if type(m).__name__ in names]
    if not blocks:
        raise LlmclfError(
            f"--compile found no repeated blocks to compile in {type(inner).__name__}: "
            "train without --compile"
        )
    for block in blocks:
        block.forward = _training_compiled(block.forward)
    try:
        yield blocks
    finally:
        for block in blocks:
            del block.forward  # the class's own forward again


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
    token_budget: dict | None = None  # --batch-tokens: budget, mean texts per step, lr scale


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


def token_budget_batches(dataset, budget: int, seed: int) -> TokenBudgetBatches:
    """``TokenBudgetBatches`` over a dataset's ``length`` column."""
    return TokenBudgetBatches(list(dataset["length"]), budget, seed)


def scale_for_token_budget(
    optimizer: torch.optim.Optimizer | None, args: TrainingArguments, scale: float
) -> None:
    """Multiply the peak learning rates (the optimizer's groups, or the Trainer's own
    rate when it builds the optimizer) by ``scale`` before the schedule reads them."""
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] *= scale
    args.learning_rate *= scale


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
    batch_tokens: int | None = None,
) -> TrainResult:
    """Train with evaluation, early stopping and best-checkpoint loading; return timings.

    ``batch_tokens``: token-budget batches (``TokenBudgetBatches``), the learning rates
    scaled by the square root of the mean texts per step over ``config.batch_size``."""
    budget, batches = None, None
    if batch_tokens is not None:
        if world_size() > 1:
            raise LlmclfError(
                "--batch-tokens batches one process's data: with several processes use "
                "--batch-size (each process then holds the same number of texts per step)"
            )
        batches = token_budget_batches(train_dataset, batch_tokens, args.seed)
        scale = math.sqrt(batches.mean_rows / config.batch_size)
        scale_for_token_budget(optimizer, args, scale)
        budget = {
            "batch_tokens": batch_tokens,
            "steps_per_epoch": len(batches),
            "mean_texts_per_step": round(batches.mean_rows, 2),
            "learning_rate_scale": round(scale, 4),
        }
        steps = math.ceil(len(batches) * args.num_train_epochs)
        if steps < MIN_BUDGET_STEPS:
            log.warning(
                "--batch-tokens %d leaves %d optimizer steps in this run (%.0f texts each): too "
                "few to learn from (240 texts of 128 tokens trained 14 steps and lost 0.27 "
                "macro-F1, docs/training.md); lower --batch-tokens or leave it out",
                batch_tokens, steps, batches.mean_rows,
            )  # fmt: skip
        log.info(
            "--batch-tokens %d: %d steps per epoch of %.1f texts on average; learning rates "
            "x%.3f (the square root of %.1f / --batch-size %d)",
            batch_tokens, len(batches), batches.mean_rows, scale, batches.mean_rows,
            config.batch_size,
        )  # fmt: skip
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
        batches=batches,
    )
    if not progress:  # without a progress bar the Trainer prints every log line instead
        trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    with compiled_blocks(model, config.compile):
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
        token_budget=budget,
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
            # cached features (token_inputs False) are one vector per text: no budget to fill
            batch_tokens=config.batch_tokens if token_inputs else None,
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
