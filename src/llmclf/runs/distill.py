"""``llmclf distill``: train a fast encoder student on a trained run's (the teacher's)
outputs and compare the two (the loss: ``methods/distill.py``).

Teacher logits are computed once per text set and cached in ``RUN/teacher_logits/``, so a
resumed run does not recompute them. The finished student is an ordinary ``encoder`` run
folder; its ``metrics.json`` adds the teacher comparison (F1 and throughput, measured on
the same test split, machine and batch size, one after the other).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from llmclf.backbone import check_model_ref
from llmclf.config import REQUIRED, DataConfig, Options, build, field_names, flag, flatten, option
from llmclf.data import Examples, content_hash, examples_by_split, read_table, read_texts, sample
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.methods.base import ClassifierBase
from llmclf.methods.distill import (
    DistillConfig,
    gold_matrix,
    pack_targets,
    packed_loss,
    unpack_targets,
)
from llmclf.methods.encoder import EncoderClassifier
from llmclf.run_folder import TEACHER_CACHE, RunFolder, atomic_path
from llmclf.runs.evaluate import evaluate_examples, load_classifier
from llmclf.runs.train import accounting, write_run

log = logging.getLogger("llmclf")


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
    with atomic_path(path) as partial:
        np.savez(partial, logits=logits, texts_hash=np.array(fingerprint))
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


@dataclasses.dataclass
class DistillOptions(Options):
    """llmclf distill: the teacher, the student and where it goes. What the student learns
    is ``DistillConfig``; its own training options are the encoder method's."""

    teacher: str = option(REQUIRED, "a finished run folder (TEACHER_RUN)")
    output: str = option(REQUIRED, "the new run folder")
    student: str | None = option(
        None, "the student encoder: a built-in name, hub id or folder (default: minilm-l6)"
    )


def teacher_data_config(teacher_run: str | Path, data_values: dict) -> DataConfig:
    """The data the student learns from: ``data_values`` when they name ``data``, else the
    teacher's own data read the way it was read (overridden by the column options given)."""
    if "data" not in data_values:
        stored = RunFolder(teacher_run).data_values()
        if "data" not in stored:
            raise LlmclfError(
                f"{teacher_run} does not say what data it was trained on: give --data"
            )
        data_values = {**stored, **data_values}
    return build(DataConfig, data_values)


def distill(options: DistillOptions, config: DistillConfig | None = None, **values) -> dict:
    """``llmclf distill``: ``distill_run`` with ``values``, data options (on the teacher's
    data unless they name other ``data``) and the encoder student's (``epochs``, ...)."""
    data_names = field_names(DataConfig)
    data_values = {k: v for k, v in values.items() if k in data_names}
    student_options = {k: v for k, v in values.items() if k not in data_names}
    allowed = EncoderClassifier.config_class.option_names() - {"model"}
    unknown = sorted(set(student_options) - allowed)
    if unknown:
        raise LlmclfError(f"{', '.join(flag(u) for u in unknown)} does not apply to distill")
    if options.student is not None:
        student_options["model"] = options.student
    return distill_run(
        options.teacher,
        student_options,
        teacher_data_config(options.teacher, data_values),
        config or DistillConfig(),
        options.output,
    )


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
    wall_start = time.perf_counter()
    output = Path(output)
    student = EncoderClassifier(progress=progress, **student_options(teacher_run, options))
    student_config = student.resolve_config()  # a bad option fails before anything loads
    resume = student_config.train.resume
    folder = RunFolder(output)
    if (output / TEACHER_CACHE).is_dir() and not folder.finished and not resume:
        raise LlmclfError(
            f"{output} holds an unfinished distillation: pass --resume to continue it "
            "(its cached teacher outputs are reused), or choose another --output"
        )
    folder.check_new(resume)
    check_model_ref(student_config.model.model)
    batch_size = student_config.train.eval_batch_size
    teacher = load_classifier(teacher_run, progress=progress, eval_batch_size=batch_size)
    schema = LabelSchema(list(teacher.schema_.classes), teacher.schema_.multi_label)

    train, validation, test = _splits(data_config, schema)
    unlabeled = (
        read_unlabeled(config.unlabeled, data_config.text_column) if config.unlabeled else []
    )
    log.info(
        "distilling %s into %s: %d labelled + %d unlabelled texts",
        teacher_run,
        student_config.model.model,
        len(train),
        len(unlabeled),
    )
    texts = train.texts + unlabeled
    targets, eval_targets = teacher_targets(
        teacher, train, unlabeled, validation, schema, output / TEACHER_CACHE
    )
    eval_set = None
    if validation is not None:
        eval_set = (validation.texts, eval_targets, validation.labels)

    def gold_of(rows: np.ndarray) -> np.ndarray:  # the gold labels, for model selection
        gold = unpack_targets(rows, schema.num_classes)[0]
        return gold if schema.multi_label else gold.argmax(axis=1)

    start = time.perf_counter()
    student.fit_targets(
        texts, targets, eval_set, schema, packed_loss(config, schema), gold_of, output
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
            "wall_seconds": round(time.perf_counter() - wall_start, 2),
        }
    )
    keep = student_config.train.keep_checkpoints
    write_run(student, output, data_config, metrics, predictions, keep_checkpoints=keep)
    return metrics


def student_options(teacher_run: str | Path, options: dict) -> dict:
    """The student's options; its max_length defaults to the teacher's input budget."""
    teacher_max_length = flatten(RunFolder(teacher_run).config()).get("max_length")
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
