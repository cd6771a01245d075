"""``llmclf calibrate``: fit temperature scaling on a held-out split and store it in the
run, so that evaluate, predict and compare apply it from then on."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from llmclf.config import (
    REQUIRED,
    AbstainConfig,
    LoadOptions,
    Options,
    check_precision_bound,
    option,
    same_as,
)
from llmclf.errors import LlmclfError
from llmclf.evaluation.comparison import calibration_before_after
from llmclf.run_folder import TEST_PREDICTIONS, RunFolder, write_calibration
from llmclf.runs.compare import stored_evaluation
from llmclf.runs.evaluate import (
    EvaluationData,
    data_config_for,
    evaluation_split,
    load_classifier,
)

log = logging.getLogger("llmclf")


@dataclasses.dataclass
class CalibrateOptions(Options):
    """llmclf calibrate: temperature scaling fitted on a held-out split, stored in the run."""

    run: str = option(REQUIRED, "a run folder written by `llmclf train`")
    split: str | None = option(
        None,
        "the split to fit on (default: validation, or all of a file given with --data that "
        "has no split column); never the test split you report",
    )
    target_precision: float | None = same_as(
        AbstainConfig,
        "target_precision",
        help="also choose the run's abstention threshold on the same split, at the new "
        "temperature: the lowest one whose answers there are at least this often right",
    )
    target_coverage: float | None = same_as(
        AbstainConfig,
        "target_coverage",
        help="also choose the run's abstention threshold on the same split so that it "
        "answers this share of texts",
    )
    precision_bound: str = same_as(
        AbstainConfig,
        "precision_bound",
        help="how --target-precision judges a threshold on the split: estimate = the share "
        "right there; lower = the lower end of its 95 percent Clopper-Pearson interval",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_precision is not None and self.target_coverage is not None:
            raise LlmclfError("--target-precision and --target-coverage: give one")
        check_precision_bound(self.precision_bound, self.target_precision)


def calibrate(
    options: CalibrateOptions, data: EvaluationData | None = None, load: LoadOptions | None = None
) -> dict:
    """``llmclf calibrate``: ``calibrate_run`` with the command's options."""
    return calibrate_run(
        options.run,
        (data or EvaluationData()).given(),
        options.split,
        target_precision=options.target_precision,
        target_coverage=options.target_coverage,
        precision_bound=options.precision_bound,
        **(load or LoadOptions()).overrides(),
    )


def calibrate_run(
    run: str | Path,
    data_values: dict | None = None,
    split: str | None = None,
    *,
    target_precision: float | None = None,
    target_coverage: float | None = None,
    precision_bound: str = "estimate",
    **runtime,
) -> dict:
    """Fit temperature scaling on a split of the run's data (validation by default) and
    store it in the run's calibration.json, which evaluate / predict / compare then use.

    A run trained with ``--target-precision`` / ``--target-coverage`` chooses its
    abstention threshold again at the new temperature (judged by the run's own
    ``--precision-bound``); ``target_precision`` / ``target_coverage`` choose one here
    (stored in labels.json, its figures under ``abstention``), ``precision_bound="lower"``
    by the lower end of the precision's 95 % interval.

    ``split`` None: validation, or the whole of a file given as ``data_values["data"]``
    that has no ``split`` column.
    Returns what was stored: the temperature, before / after NLL, ECE and Brier on the
    calibration split, and on the stored test predictions (``test``) when the run has them.

    Example:
        >>> calibrate_run("runs/bbc")["temperature"]  # doctest: +SKIP
        1.84
    """
    check_precision_bound(precision_bound, target_precision)
    folder = RunFolder(run)
    config = data_config_for(run, data_values)
    classifier = load_classifier(folder.path, **runtime)
    # a held-out file given for calibration, without a split column, is used whole
    whole_file = "data" in (data_values or {}) and split is None
    split = split or "validation"
    examples = evaluation_split(config, split, classifier.schema_.multi_label, whole_file)
    if split in ("test", "all"):
        log.warning("calibrating on the %s split makes the test ECE look better than it is", split)
    where = f"{config.data} [{split}]"
    log.info("fitting the temperature on %s: %d examples", where, len(examples))
    classifier.calibrate(examples.texts, examples.labels, where=where)
    if target_precision is not None or target_coverage is not None:
        classifier.choose_abstention(
            examples.texts,
            examples.labels,
            precision=target_precision,
            coverage=target_coverage,
            precision_bound=precision_bound if target_precision is not None else None,
            where=where,
        )
    stored = dict(classifier.calibration_)
    abstention = getattr(classifier, "abstention_", None)
    if abstention is not None:
        stored["abstention"] = abstention
    if folder.finished and (folder / TEST_PREDICTIONS).is_file():
        test = calibration_before_after(
            stored_evaluation(folder.path, folder.path.name), classifier.temperature_
        )
        stored["test"] = {"before": test["before"], "after": test["after"]}
    if classifier.schema_.multi_label or abstention is not None:
        classifier.schema_.save(folder.path)  # thresholds moved with the temperature
    write_calibration(folder.path, stored)
    return stored
