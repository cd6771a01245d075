"""Distillation: train a fast encoder student on a trained run's (the teacher's) outputs.

The student (an ``EncoderClassifier``) learns from two signals (Hinton et al., 2015):

    loss = kd_weight · T² · KL(teacher_T ‖ student_T) + ce_weight · CE(student, gold)

``teacher_T`` and ``student_T`` are the softmax (per-label sigmoid for multi-label data)
of the logits divided by the temperature T. Dividing by T shrinks the KL gradients by
1/T², so the KL term is multiplied by T² to keep its weight independent of T. The
cross-entropy term uses the gold labels of the labelled rows; rows from ``--unlabeled``
contribute to the KL term only.

Teacher logits are computed once per text set and cached in ``RUN/teacher_logits/``, so a
resumed run does not recompute them. The finished student is an ordinary ``encoder`` run
folder; its ``metrics.json`` adds the teacher comparison (F1 and throughput, measured on
the same test split, machine and batch size, one after the other).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llmclf.classifier import ClassifierBase, read_config
from llmclf.config import DataConfig, _check_positive, flatten, option
from llmclf.data import Examples, content_hash, examples_by_split, read_table, read_texts, sample
from llmclf.encoder import EncoderClassifier
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.runs import (
    accounting,
    check_output_folder,
    evaluate_examples,
    load_classifier,
    write_run,
)

log = logging.getLogger("llmclf")

TEACHER_CACHE = "teacher_logits"


@dataclass
class DistillConfig:
    """Distillation: what the student learns from the teacher."""

    temperature: float = option(
        2.0, "softens the teacher's and the student's probabilities in the KL term (T)"
    )
    kd_weight: float = option(
        0.5, "weight of the T²-scaled KL divergence to the teacher's softened probabilities"
    )
    ce_weight: float = option(
        0.5, "weight of the cross-entropy to the gold labels (labelled rows only)"
    )
    unlabeled: str | None = option(
        None,
        "extra texts the student learns from the teacher alone: a CSV / TSV / JSONL / Parquet "
        "file with the text column, or a .txt file with one text per line",
    )

    def __post_init__(self) -> None:
        _check_positive(self, "temperature")
        _check_positive(self, "kd_weight", "ce_weight", allow_zero=True)
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise LlmclfError("--kd-weight and --ce-weight cannot both be 0")


# ---------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    gold: torch.Tensor,
    has_gold: torch.Tensor,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
    multi_label: bool,
) -> torch.Tensor:
    """``kd_weight · T² · KL + ce_weight · CE``, both averaged over rows.

    Args:
        student_logits, teacher_logits: [batch, k].
        gold: [batch, k] one-hot class (single-label) or 0/1 indicators (multi-label);
            ignored where ``has_gold`` is 0.
        has_gold: [batch] 1 for labelled rows, 0 for unlabelled ones.
        multi_label: KL between per-label Bernoulli distributions (summed over labels,
            like the softmax KL sums over classes) and binary cross-entropy (averaged).

    Example:
        >>> s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> gold, has = torch.tensor([[1.0, 0.0]]), torch.tensor([1.0])
        >>> round(float(distillation_loss(s, t, gold, has, 1.0, 1.0, 0.0, False)), 4)
        0.4621
    """
    t = temperature
    if multi_label:
        p_teacher = torch.sigmoid(teacher_logits / t)
        log_p = F.logsigmoid(student_logits / t)
        log_q = F.logsigmoid(-student_logits / t)
        # KL(p_t || p_s) per label = H(p_t, p_s) - H(p_t)
        entropy = F.binary_cross_entropy(p_teacher, p_teacher, reduction="none")
        cross = -(p_teacher * log_p + (1 - p_teacher) * log_q)
        kd = (cross - entropy).sum(dim=1).mean()
        ce_rows = F.binary_cross_entropy_with_logits(student_logits, gold, reduction="none").mean(1)
    else:
        kd = F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        ce_rows = F.cross_entropy(student_logits, gold.argmax(dim=1), reduction="none")
    labelled = has_gold.sum()
    ce = (ce_rows * has_gold).sum() / labelled if labelled > 0 else student_logits.sum() * 0.0
    return kd_weight * t * t * kd + ce_weight * ce


def pack_targets(gold: np.ndarray, has_gold: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """One float32 row per example, ``[gold (k) | has_gold (1) | teacher logits (k)]``: the
    Trainer carries one ``labels`` tensor, so the teacher's logits ride in it."""
    return np.concatenate([gold, has_gold[:, None], teacher], axis=1).astype(np.float32)


def unpack_targets(rows, k: int):
    """Inverse of ``pack_targets`` (tensors or arrays): (gold, has_gold, teacher)."""
    return rows[:, :k], rows[:, k], rows[:, k + 1 :]


def packed_loss(config: DistillConfig, schema: LabelSchema):
    """``loss(student_logits, packed_targets)`` for the Trainer."""
    k = schema.num_classes

    def loss(logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        gold, has_gold, teacher = unpack_targets(packed, k)
        return distillation_loss(
            logits,
            teacher,
            gold,
            has_gold,
            config.temperature,
            config.kd_weight,
            config.ce_weight,
            schema.multi_label,
        )

    return loss


def gold_matrix(schema: LabelSchema, labels: list | None, n: int) -> np.ndarray:
    """[n, k] one-hot / indicator rows of the gold labels (zeros when unlabelled)."""
    if labels is None:
        return np.zeros((n, schema.num_classes), dtype=np.float32)
    encoded = schema.encode(labels)
    if schema.multi_label:
        return encoded.astype(np.float32)
    return np.eye(schema.num_classes, dtype=np.float32)[encoded]


# ---------------------------------------------------------------------------------------
# Teacher outputs, cached
# ---------------------------------------------------------------------------------------


def cached_teacher_logits(
    teacher: ClassifierBase, texts: list[str], folder: Path, part: str
) -> np.ndarray:
    """The teacher's logits for ``texts``, from ``folder/part.npz`` when it holds the same
    texts, else computed and saved there (atomically)."""
    path = folder / f"{part}.npz"
    fingerprint = content_hash(texts)
    if path.is_file():
        stored = np.load(path)
        if str(stored["texts_hash"]) == fingerprint:
            log.info("teacher logits for %s: reusing %s", part, path)
            return stored["logits"]
        log.warning("%s was computed for other texts: computing it again", path)
    log.info("teacher logits for %s: %d texts", part, len(texts))
    logits = teacher.predict_logits(texts)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{part}.partial.npz"
    np.savez(partial, logits=logits, texts_hash=np.array(fingerprint))
    partial.replace(path)
    return logits


def read_unlabeled(path: str, text_columns: list[str]) -> list[str]:
    """Texts of an unlabelled file: a table (its text column) or .txt, one text per line."""
    file = Path(path)
    if file.suffix.lower() == ".txt":
        if not file.is_file():
            raise LlmclfError(f"--unlabeled {path} does not exist")
        texts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    else:
        texts = read_texts(read_table(file), text_columns, f"--unlabeled {path}")
    texts = [t for t in texts if t]
    if not texts:
        raise LlmclfError(f"--unlabeled {path} holds no texts")
    return texts


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def distill_run(
    teacher_run: str | Path,
    options: dict,
    data_config: DataConfig,
    config: DistillConfig,
    output: str | Path,
    progress: bool = True,
) -> dict:
    """Train an encoder student on ``teacher_run``'s outputs, compare the two on the test
    split and write the student's run folder. Returns its metrics.

    Example:
        >>> distill_run("runs/demo", {"model": "minilm-l6"}, DataConfig("bbc-news"),
        ...             DistillConfig(temperature=2.0), "runs/student")  # doctest: +SKIP
    """
    output = Path(output)
    resume = bool(options.get("resume"))
    if (output / TEACHER_CACHE).is_dir() and not (output / "metrics.json").exists() and not resume:
        raise LlmclfError(
            f"{output} holds an unfinished distillation: pass --resume to continue it "
            "(its cached teacher outputs are reused), or choose another --output"
        )
    check_output_folder(output, resume)
    student = EncoderClassifier(progress=progress, **student_options(teacher_run, options))
    batch_size = student._configs()[1].eval_batch_size
    teacher = load_classifier(teacher_run, progress=progress, eval_batch_size=batch_size)
    schema = LabelSchema(list(teacher.schema_.classes), teacher.schema_.multi_label)

    train, validation, test = _splits(data_config, schema)
    unlabeled = (
        read_unlabeled(config.unlabeled, data_config.text_column) if config.unlabeled else []
    )
    log.info(
        "distilling %s into %s: %d labelled + %d unlabelled texts",
        teacher_run,
        student._configs()[0].model,
        len(train),
        len(unlabeled),
    )
    texts = train.texts + unlabeled
    targets, eval_targets = teacher_targets(
        teacher, train, unlabeled, validation, schema, output / TEACHER_CACHE
    )
    eval_texts = validation.texts if validation is not None else None

    start = time.perf_counter()
    _fit_student(
        student, texts, targets, eval_texts, eval_targets, validation, schema, config, output
    )
    student.fit_seconds_ = time.perf_counter() - start
    student.distillation_ = {
        "teacher": str(Path(teacher_run).resolve()),
        **dataclasses.asdict(config),
    }

    metrics: dict = {}
    predictions = None
    if test is not None:
        metrics, predictions = compare_on_test(teacher, student, test, f"{data_config.data} [test]")
    else:
        log.warning("%s has no test split: no teacher / student comparison", data_config.data)
    metrics.update(accounting(student, len(texts)))
    metrics.update(
        {
            "method": student.method,
            "data": data_config.data,
            "split": "test",
            "teacher_run": str(Path(teacher_run).resolve()),
            "labelled_examples": len(train),
            "unlabeled_examples": len(unlabeled),
        }
    )
    write_run(
        student, output, data_config, metrics, predictions, options.get("keep_checkpoints", False)
    )
    return metrics


def student_options(teacher_run: str | Path, options: dict) -> dict:
    """The student's options; its max_length defaults to the teacher's input budget."""
    teacher_max_length = flatten(read_config(Path(teacher_run))).get("max_length")
    if teacher_max_length and "max_length" not in options:
        return {**options, "max_length": teacher_max_length}
    return dict(options)


def teacher_targets(
    teacher: ClassifierBase,
    train: Examples,
    unlabeled: list[str],
    validation: Examples | None,
    schema: LabelSchema,
    cache: Path,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Packed targets for the training texts (labelled, then unlabelled) and for the
    validation split, from the (cached) teacher logits and the gold labels."""
    scale = 1.0 / teacher.temperature_  # a calibrated teacher passes on its calibrated logits
    logits = cached_teacher_logits(teacher, train.texts + unlabeled, cache, "train") * scale
    has_gold = np.array([1.0] * len(train) + [0.0] * len(unlabeled), dtype=np.float32)
    gold = np.concatenate(
        [gold_matrix(schema, train.labels, len(train)), gold_matrix(schema, None, len(unlabeled))]
    )
    targets = pack_targets(gold, has_gold, logits)
    if validation is None:
        return targets, None
    val_logits = cached_teacher_logits(teacher, validation.texts, cache, "validation") * scale
    val_gold = gold_matrix(schema, validation.labels, len(validation))
    return targets, pack_targets(val_gold, np.ones(len(validation), np.float32), val_logits)


def _splits(data_config: DataConfig, schema: LabelSchema):
    splits, _ = examples_by_split(data_config, multi_label=schema.multi_label)
    if "train" not in splits:
        raise LlmclfError(f"{data_config.data} has no training rows")
    train = splits["train"]
    if data_config.train_limit:
        train = sample(train, data_config.train_limit, data_config.split_seed, schema.multi_label)
    for name, part in (
        ("train", train),
        *((n, splits[n]) for n in ("validation", "test") if n in splits),
    ):
        schema.check_known(part.labels, f"{data_config.data} [{name}] (the teacher's classes)")
    return train, splits.get("validation"), splits.get("test")


def _fit_student(
    student, texts, targets, eval_texts, eval_targets, validation, schema, config, output
):
    """Build and train the student on packed targets; tune its multi-label thresholds."""
    k = schema.num_classes

    def gold_of(rows: np.ndarray) -> np.ndarray:
        gold = unpack_targets(rows, k)[0]
        return gold if schema.multi_label else gold.argmax(axis=1)

    student.build_model(schema)
    student.train_targets(
        texts,
        targets,
        eval_texts,
        eval_targets,
        schema,
        output,
        packed_loss(config, schema),
        gold_of,
    )
    if schema.multi_label:
        student.schema_ = schema  # _thresholds predicts with the fitted model
        schema.thresholds = student._thresholds(
            student._configs()[2],
            validation.texts if validation is not None else None,
            validation.labels if validation is not None else None,
            schema,
        )
    student.schema_ = schema
    student.classes_ = np.array(schema.classes)
    student.temperature_ = 1.0
    student.trainable_params_, student.total_params_ = student._count_parameters()


def compare_on_test(
    teacher: ClassifierBase, student: ClassifierBase, test: Examples, where: str
) -> tuple[dict, object]:
    """Student metrics on ``test`` plus the teacher's, timed one after the other in this
    process with the same batch size; each first predicts one batch to warm up."""
    warm = test.texts[: max(1, min(len(test), 16))]
    teacher.predict_proba(warm)
    teacher_metrics, _ = evaluate_examples(teacher, test, where)
    student.predict_proba(warm)
    metrics, predictions = evaluate_examples(student, test, where)
    teacher_f1, student_f1 = teacher_metrics["macro_f1"], metrics["macro_f1"]
    teacher_speed, student_speed = (
        teacher_metrics["eval_examples_per_s"],
        metrics["eval_examples_per_s"],
    )
    metrics.update(
        {
            "teacher_macro_f1": teacher_f1,
            "student_macro_f1": student_f1,
            "f1_ratio": round(student_f1 / teacher_f1, 4) if teacher_f1 else None,
            "teacher_examples_per_s": teacher_speed,
            "student_examples_per_s": student_speed,
            "throughput_ratio": round(student_speed / teacher_speed, 2)
            if teacher_speed and student_speed
            else None,
            "teacher_accuracy": teacher_metrics["accuracy"],
            "teacher_eval_seconds": teacher_metrics["eval_seconds"],
        }
    )
    return metrics, predictions
