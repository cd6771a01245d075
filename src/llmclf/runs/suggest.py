"""``llmclf suggest``: which unlabelled texts to label next (active learning).

A run reads a pool of unlabelled texts; each text gets an *uncertainty* from its
probabilities, and the ``number`` to label next are chosen among the most uncertain so
that they also differ from one another (a batch of near-duplicates teaches the model one
thing). Labelling those and training again is the cheapest way to a better classifier
when labels cost a person's time.

- **Uncertainty** (``--uncertainty``): ``margin`` (default) is 1 − (top probability −
  second), ``entropy`` the normalised entropy of the probabilities, ``least-confident``
  1 − top probability; a multi-label run scores each label's closeness to its threshold
  and takes the mean. All lie in [0, 1], 1 the most uncertain.
- **Diversity** (``--diversity λ``): among the ``oversample × number`` most uncertain
  texts, a greedy pick (k-center, Sener & Savarese 2018) takes the most uncertain first,
  then each time the text maximising ``(1 − λ) · uncertainty + λ · distance``, where
  distance is the cosine distance, in TF-IDF space, to the nearest text already picked.
  λ = 0 gives the ``number`` most uncertain texts.

The pool is read in chunks (``--chunk-rows``), so its size is bounded by disk, not memory:
only each row's uncertainty and the running candidates are kept.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from llmclf.config import (
    FRACTION,
    POSITIVE,
    REQUIRED,
    DataConfig,
    Options,
    PredictLoadOptions,
    option,
    same_as,
)
from llmclf.data import TableWriter, iter_table, read_texts, table_rows
from llmclf.errors import LlmclfError
from llmclf.runs.evaluate import data_config_for, load_classifier, prediction_frame
from llmclf.runs.predict import CHUNK_ROWS, check_output_file

log = logging.getLogger("llmclf")

UNCERTAINTIES = ("margin", "entropy", "least-confident")
OVERSAMPLE = 5  # candidates kept per suggestion before the diversity pick


@dataclasses.dataclass
class SuggestOptions(Options):
    """llmclf suggest: the unlabelled texts worth labelling next, by uncertainty and diversity."""

    run: str = option(REQUIRED, "a run folder written by `llmclf train`")
    pool: str = option(REQUIRED, "CSV / TSV / JSONL / Parquet file of unlabelled texts")
    output: str = option(
        REQUIRED, "where to write the suggested rows, most useful first (.csv, .jsonl, ...)"
    )
    number: int = option(50, "how many texts to suggest", bound=POSITIVE, short="-n")
    text_column: list[str] | None = same_as(
        DataConfig,
        "text_column",
        default=None,
        help="column(s) holding the text (default: the run's)",
    )
    uncertainty: str = option(
        "margin",
        "margin: 1 - (top - second probability); entropy: normalised entropy; "
        "least-confident: 1 - top probability (multi-label: closeness to each threshold)",
        choices=UNCERTAINTIES,
    )
    diversity: float = option(
        0.5,
        "weight of diversity (TF-IDF cosine distance to the texts already picked) against "
        "uncertainty, in [0, 1): 0 suggests the most uncertain texts only",
        bound=FRACTION,
    )
    chunk_rows: int = option(CHUNK_ROWS, "rows read and scored at a time", bound=POSITIVE)


def uncertainty_scores(
    proba: np.ndarray, kind: str = "margin", thresholds: list[float] | None = None
) -> np.ndarray:
    """[n, k] probabilities -> [n] uncertainties in [0, 1] (1: the most uncertain).

    Single-label (``thresholds`` None): ``margin``, ``entropy`` or ``least-confident`` as
    the module says. Multi-label (``thresholds``: the per-label decision thresholds): the
    mean over labels of ``1 - |p - t| / max(t, 1 - t)``, each label's closeness to its
    threshold, whatever ``kind``.

    Example:
        >>> uncertainty_scores(np.array([[0.5, 0.5], [0.9, 0.1]])).round(2).tolist()
        [1.0, 0.2]
    """
    proba = np.asarray(proba, dtype=np.float64)
    if thresholds is not None:
        t = np.asarray(thresholds, dtype=np.float64)
        return (1.0 - np.abs(proba - t) / np.maximum(t, 1.0 - t)).mean(axis=1)
    top2 = -np.sort(-proba, axis=1)[:, :2]
    if kind == "margin":
        return 1.0 - (top2[:, 0] - top2[:, 1])
    if kind == "least-confident":
        k = proba.shape[1]
        return (1.0 - top2[:, 0]) * k / (k - 1)  # 1 at the uniform distribution
    if kind == "entropy":
        logs = np.log(np.clip(proba, 1e-12, 1.0))
        return -(proba * logs).sum(axis=1) / np.log(proba.shape[1])
    raise LlmclfError(f"--uncertainty must be one of {', '.join(UNCERTAINTIES)}, not {kind!r}")


def diverse_pick(uncertainty: np.ndarray, vectors, number: int, diversity: float) -> list[int]:
    """Greedy k-center pick of ``number`` rows: the most uncertain first, then each time
    the row maximising ``(1 - diversity) * uncertainty + diversity * distance`` (cosine
    distance of L2-normalised ``vectors`` rows to the nearest row picked). Returns row
    indices in the order picked.

    Example:
        >>> v = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> diverse_pick(np.array([0.9, 0.8, 0.7]), v, 2, diversity=0.5)
        [0, 2]
    """
    n = len(uncertainty)
    number = min(number, n)
    if number == 0:
        return []
    first = int(np.argmax(uncertainty))
    picked = [first]
    if diversity == 0:
        return [int(i) for i in np.argsort(-uncertainty, kind="stable")[:number]]
    nearest = _distances(vectors, first)
    while len(picked) < number:
        score = (1 - diversity) * uncertainty + diversity * np.clip(nearest, 0.0, 1.0)
        score[picked] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        nearest = np.minimum(nearest, _distances(vectors, best))
    return picked


def suggest(options: SuggestOptions, load: PredictLoadOptions | None = None) -> int:
    """``llmclf suggest``: ``suggest_texts`` with the command's options."""
    load = load or PredictLoadOptions()
    return suggest_texts(
        options.run,
        options.pool,
        options.output,
        number=options.number,
        text_column=options.text_column,
        uncertainty=options.uncertainty,
        diversity=options.diversity,
        chunk_rows=options.chunk_rows,
        int8=load.int8,
        **load.overrides(),
    )


def suggest_texts(
    run: str | Path,
    pool: str | Path,
    output: str | Path,
    *,
    number: int = 50,
    text_column: list[str] | None = None,
    uncertainty: str = "margin",
    diversity: float = 0.5,
    chunk_rows: int = CHUNK_ROWS,
    int8: bool = False,
    **runtime,
) -> int:
    """Write the ``number`` rows of ``pool`` most worth labelling next to ``output``, most
    useful first, with ``suggest_rank``, ``uncertainty``, the run's ``prediction`` and
    ``proba_<class>`` columns. Rows with an empty text are skipped. Returns the rows written.

    Example:
        >>> suggest_texts("runs/bbc", "unlabelled.csv", "label_next.csv", number=50)  # doctest: +SKIP
        50
    """
    SuggestOptions(  # a Python caller's values are checked as the flags are
        run=str(run), pool=str(pool), output=str(output), number=number,
        text_column=text_column, uncertainty=uncertainty, diversity=diversity,
        chunk_rows=chunk_rows,
    )  # fmt: skip
    pool, output = Path(pool), Path(output)
    check_output_file(output)
    columns = text_column or data_config_for(run).text_column
    chunks = iter_table(pool, chunk_rows)
    first = next(chunks)
    read_texts(first.head(1), columns, str(pool))  # a missing column: before loading
    classifier = load_classifier(run, int8=int8, **runtime)
    schema = classifier.schema_
    thresholds = None
    if schema.multi_label:
        thresholds = schema.thresholds or [0.5] * schema.num_classes
    keep = OVERSAMPLE * number
    candidates: list[tuple[float, int, dict]] = []  # a min-heap of the most uncertain
    seen = 0
    bar = tqdm(total=table_rows(pool), desc="score pool", unit="row", leave=False,
               disable=not classifier.progress)  # fmt: skip
    try:
        for chunk in chain([first], chunks):
            texts = read_texts(chunk, columns, str(pool))
            rows = [i for i, t in enumerate(texts) if t is not None]
            if rows:
                proba = classifier.predict_proba([texts[i] for i in rows])
                scores = uncertainty_scores(proba, uncertainty, thresholds)
                for i, score, p in zip(rows, scores, proba):
                    item = (float(score), -(seen + i), {"row": chunk.iloc[i], "proba": p})
                    if len(candidates) < keep:
                        heapq.heappush(candidates, item)
                    elif item[:2] > candidates[0][:2]:
                        heapq.heapreplace(candidates, item)
            seen += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    if not candidates:
        raise LlmclfError(f"{pool} has no text to suggest (every row is empty)")
    candidates.sort(key=lambda item: item[:2], reverse=True)
    frame = pd.DataFrame([item[2]["row"] for item in candidates]).reset_index(drop=True)
    vectors = text_vectors(read_texts(frame, columns, str(pool)))
    scores = np.array([item[0] for item in candidates])
    order = diverse_pick(scores, vectors, number, diversity)
    proba = np.stack([candidates[i][2]["proba"] for i in order])
    chosen = frame.iloc[order].reset_index(drop=True)
    out = prediction_frame(chosen, schema, proba, schema.decide(proba))
    out.insert(0, "suggest_rank", range(1, len(out) + 1))
    out.insert(1, "uncertainty", scores[order])
    with TableWriter(output) as writer:
        writer.write(out)
    log.info(
        "suggested %d of %d texts (%s uncertainty, diversity %.2f): mean uncertainty %.3f "
        "against %.3f over the candidates",
        len(out), seen, uncertainty, diversity, float(scores[order].mean()), float(scores.mean()),
    )  # fmt: skip
    return len(out)


def _distances(vectors, row: int) -> np.ndarray:
    """Cosine distances of every row of L2-normalised ``vectors`` (dense or sparse) to ``row``."""
    similarity = vectors @ vectors[row].T
    if hasattr(similarity, "toarray"):
        similarity = similarity.toarray()
    return 1.0 - np.asarray(similarity).reshape(-1)


def text_vectors(texts: list[str]):
    """L2-normalised TF-IDF rows of ``texts`` (sparse); texts without a single word give
    zero rows, equally far from everything."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        return TfidfVectorizer(sublinear_tf=True).fit_transform(texts)
    except ValueError:  # no word in any text: an empty vocabulary
        return np.zeros((len(texts), 1))
