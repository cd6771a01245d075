"""The classical floor: TF-IDF features and logistic regression (scikit-learn).

Single-label data gets one multinomial logistic regression; multi-label data gets one
binary logistic regression per label (one-vs-rest). It trains in seconds on a CPU, and
every comparison report should show it: a method that does not beat it is not worth
its compute.

The fitted pipeline is saved with ``skops`` rather than pickle: loading a pickle runs
whatever code the file names, while ``skops.io.load`` refuses any type not on an allow
list (it trusts scikit-learn and numpy types by default). llmclf adds the few other types
its own pipeline holds (``TRUSTED_TYPES``), refuses a file that holds anything else, and
checks that what it loaded is a TF-IDF + logistic-regression pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmclf.config import (
    POSITIVE,
    MethodConfig,
    class_weights_option,
    option,
    section,
    seed_option,
    threshold_option,
    validate,
)
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.methods.base import ClassifierBase
from llmclf.run_folder import PIPELINE_FILE, atomic_path, check_zip

# The types a fitted TfidfClassifier pipeline holds; with skops' own defaults, the only ones
# a pipeline file may hold.
TRUSTED_TYPES = [
    "builtins.slice",
    "numpy.dtype",
    "numpy.float64",
    "numpy.int64",
    "numpy.ndarray",
    "scipy.sparse._csr.csr_matrix",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.multiclass.OneVsRestClassifier",
    "sklearn.multiclass._ConstantPredictor",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._label.LabelBinarizer",
]


@dataclass
class TfidfConfig:
    """TF-IDF + logistic regression: the classical baseline."""

    ngram_max: int = option(
        2, "use word n-grams up to this length (1 = single words)", bound=POSITIVE
    )
    min_df: int = option(
        2, "ignore terms found in fewer training documents than this", bound=POSITIVE
    )
    max_features: int | None = option(
        200_000, "keep at most this many terms, the most frequent (none: all)", bound=POSITIVE
    )
    sublinear_tf: bool = option(True, "use 1 + log(term count) rather than the raw count")
    logreg_c: float = option(
        10.0,
        "inverse regularisation strength of the logistic regression (larger = less)",
        bound=POSITIVE,
    )
    class_weights: str = class_weights_option()
    threshold: str = threshold_option()
    seed: int = seed_option()

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class TfidfClassifierConfig(MethodConfig):
    """Every option of ``TfidfClassifier``: one section."""

    tfidf: TfidfConfig = section(TfidfConfig)


def make_pipeline(config: TfidfConfig, multi_label: bool):
    """An unfitted scikit-learn pipeline: TfidfVectorizer -> (one-vs-rest) LogisticRegression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import Pipeline

    vectorizer = TfidfVectorizer(
        ngram_range=(1, config.ngram_max),
        min_df=config.min_df,
        max_features=config.max_features,
        sublinear_tf=config.sublinear_tf,
        strip_accents="unicode",
        dtype=np.float64,
    )
    regression = LogisticRegression(
        C=config.logreg_c,
        class_weight="balanced" if config.class_weights == "balanced" else None,
        max_iter=2000,
        random_state=config.seed,
    )
    model = OneVsRestClassifier(regression) if multi_label else regression
    return Pipeline([("tfidf", vectorizer), ("logreg", model)])


class TfidfClassifier(ClassifierBase):
    """TF-IDF + logistic regression with the same surface as the neural methods.

    Example:
        >>> clf = TfidfClassifier(ngram_max=2).fit(texts, labels)  # doctest: +SKIP
        >>> clf.predict("The striker scored twice")  # doctest: +SKIP
        'sport'
    """

    method = "tfidf"
    config_class = TfidfClassifierConfig
    long_text_modes = ()  # no --long-text: it reads every word, not tokens

    def _fit(self, texts, labels, eval_texts, eval_labels, schema: LabelSchema, output_dir):
        config = self.config_.tfidf
        targets = schema.encode(labels)
        pipeline = make_pipeline(config, schema.multi_label)
        try:
            pipeline.fit(texts, targets.astype(np.int64))
        except ValueError as exc:  # e.g. min_df larger than the corpus allows
            raise LlmclfError(f"TF-IDF fitting failed: {str(exc).splitlines()[0]}") from None
        self.pipeline_ = pipeline
        if schema.multi_label:
            schema.thresholds = self._thresholds(config.threshold, eval_texts, eval_labels, schema)

    # -- inference ---------------------------------------------------------------------

    def _logits(self, texts: list[str]) -> np.ndarray:
        """Decision-function values, [n, num_classes]: their softmax (sigmoid for
        multi-label) is the logistic regression's own ``predict_proba``."""
        if hasattr(self.pipeline_.named_steps["logreg"], "estimators_"):  # one-vs-rest
            # from the probabilities: a constant label's predictor has no decision function
            proba = np.clip(self.pipeline_.predict_proba(list(texts)), 1e-7, 1 - 1e-7)
            return np.log(proba / (1 - proba)).astype(np.float32)
        scores = np.asarray(self.pipeline_.decision_function(list(texts)), dtype=np.float64)
        if scores.ndim == 1:  # two classes: one score d, and softmax([-d/2, d/2]) = sigmoid(d)
            scores = np.stack([-scores / 2, scores / 2], axis=1)
        return scores.astype(np.float32)

    def input_tokens(self, texts: list[str]) -> list[int]:
        """Words (roughly as its analyzer splits them): it reads every one, nothing is cut."""
        return [len(text.split()) for text in texts]

    # -- persistence -------------------------------------------------------------------

    def _save_model(self, folder: Path) -> None:
        import skops.io

        with atomic_path(folder / PIPELINE_FILE) as partial:
            skops.io.dump(self.pipeline_, partial)

    def _check_files(self, folder: Path) -> None:
        check_zip(folder, PIPELINE_FILE)

    def _load_model(self, folder: Path) -> None:
        import skops.io

        path = folder / PIPELINE_FILE
        if not path.is_file():
            raise LlmclfError(f"{folder} holds no {PIPELINE_FILE}: it is not a finished tfidf run")
        untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
        if untrusted:
            raise LlmclfError(
                f"{path} holds types a TF-IDF pipeline never has ({', '.join(untrusted[:5])}): "
                "refusing to load it"
            )
        pipeline = skops.io.load(path, trusted=TRUSTED_TYPES)
        steps = getattr(pipeline, "named_steps", {})
        if "tfidf" not in steps or "logreg" not in steps:
            raise LlmclfError(f"{path} does not hold a TF-IDF + logistic regression pipeline")
        self.pipeline_ = pipeline

    def _count_parameters(self) -> tuple[int, int]:
        """Learned coefficients and intercepts (the vocabulary's idf weights are counted
        apart in ``vocabulary_size_``)."""
        model = self.pipeline_.named_steps["logreg"]
        estimators = getattr(model, "estimators_", [model])
        # a label present in every (or no) training row gets a constant, coefficient-free predictor
        n = sum(
            int(np.size(getattr(e, "coef_", ()))) + int(np.size(getattr(e, "intercept_", ())))
            for e in estimators
        )
        return n, n

    @property
    def vocabulary_size_(self) -> int:
        return len(self.pipeline_.named_steps["tfidf"].vocabulary_)
