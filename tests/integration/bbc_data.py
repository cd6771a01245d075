"""Small real data sets for the end-to-end tests: BBC articles of two topics."""

from pathlib import Path

import pandas as pd

from llmclf.catalog import DATASETS


def write_bbc_small(
    folder: Path, sizes: tuple[int, int, int], max_chars: int | None = None
) -> Path:
    """A CSV with a split column: per topic (sports, business), ``sizes`` train /
    validation / test articles from bbc-news's own splits, cut to ``max_chars``."""
    splits = DATASETS["bbc-news"].loader()
    parts = []
    for split, n in zip(("train", "validation", "test"), sizes):
        frame = splits[split]
        frame = frame[frame["label"].isin(["sports", "business"])].groupby("label").head(n).copy()
        if max_chars:
            frame["text"] = frame["text"].str.slice(0, max_chars)
        frame["split"] = split
        parts.append(frame)
    path = folder / "bbc_small.csv"
    pd.concat(parts).to_csv(path, index=False)
    return path
