"""Read examples: built-in sets, CSV / TSV / JSONL / Parquet files, Hugging Face datasets.

Everything a user can get wrong here ends in one ``LlmclfError`` line that says what to do:
a missing file, an unreadable format, a missing column, no rows, empty texts, one class.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmclf.catalog import DATASETS, stratified_split
from llmclf.config import DataConfig
from llmclf.errors import LlmclfError
from llmclf.run_folder import atomic_path

log = logging.getLogger("llmclf")

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
READERS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass
class Examples:
    """Texts with their labels (``None`` when unlabelled) and the rows they came from."""

    texts: list[str]
    labels: list | None
    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows: list[int]) -> Examples:
        labels = [self.labels[i] for i in rows] if self.labels is not None else None
        return Examples(
            [self.texts[i] for i in rows], labels, self.frame.iloc[rows].reset_index(drop=True)
        )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, TSV, JSONL (or JSON records) or Parquet file by its extension."""
    path = Path(path)
    kind = _check_readable(path)
    try:
        if kind in ("csv", "tsv"):
            sep = "," if kind == "csv" else "\t"
            _refuse_duplicate_columns(path, pd.read_csv(path, sep=sep, header=None, nrows=1))
            frame = pd.read_csv(path, sep=sep, keep_default_na=False, na_values=[""])
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        elif kind == "json":
            frame = _read_json(path)
        else:
            frame = pd.read_parquet(path)
    except LlmclfError:
        raise
    except Exception as exc:  # pandas / pyarrow raise many types for a malformed file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlmclfError(f"cannot read {path} as {kind.upper()}: {first}") from None
    if frame.empty:
        raise LlmclfError(f"{path} has no rows")
    return frame


def _check_readable(path: Path) -> str:
    """The reader kind of an existing table file (else one clear error)."""
    if not path.exists():
        raise LlmclfError(f"{path} does not exist")
    if path.is_dir():
        raise LlmclfError(f"{path} is a folder: give a CSV, TSV, JSONL or Parquet file")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise LlmclfError(
            f"cannot read {path.name}: the extension must be one of {', '.join(sorted(READERS))}"
        )
    return kind


def iter_table(
    path: str | Path, chunk_rows: int, columns: list[str] | None = None
) -> Iterator[pd.DataFrame]:
    """The rows of a table file in chunks of ``chunk_rows``, read as ``read_table`` reads
    them (so each row parses the same): CSV / TSV / JSONL and Parquet are streamed, a JSON
    array (one document) is read whole and cut. ``columns``: only these (Parquet, CSV).

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = f.write_text("text\\na\\nb\\nc\\n")
        >>> [len(chunk) for chunk in iter_table(f, 2)]
        [2, 1]
    """
    path = Path(path)
    kind = _check_readable(path)
    chunks = _raw_chunks(path, kind, chunk_rows, columns)
    rows = 0
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            break
        except LlmclfError:
            raise
        except Exception as exc:  # pandas / pyarrow raise many types for a malformed file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LlmclfError(
                f"cannot read {path} as {kind.upper()} (after row {rows:,}): {first}"
            ) from None
        if len(chunk):
            rows += len(chunk)
            yield chunk.reset_index(drop=True)
    if rows == 0:
        raise LlmclfError(f"{path} has no rows")


def _raw_chunks(path: Path, kind: str, chunk_rows: int, columns) -> Iterator[pd.DataFrame]:
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        _refuse_duplicate_columns(path, pd.read_csv(path, sep=sep, header=None, nrows=1))
        yield from pd.read_csv(
            path,
            sep=sep,
            keep_default_na=False,
            na_values=[""],
            chunksize=chunk_rows,
            usecols=columns,
        )
    elif kind == "jsonl":
        yield from pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows)
    elif kind == "json":
        frame = _read_json(path)
        for start in range(0, len(frame), chunk_rows):
            yield frame.iloc[start : start + chunk_rows]
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas()


def table_rows(path: str | Path) -> int | None:
    """The number of rows a Parquet file holds (from its footer); None for text formats,
    which would have to be read to count."""
    path = Path(path)
    if READERS.get(path.suffix.lower()) != "parquet":
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _csv_quoting(frame: pd.DataFrame) -> int:
    """Quote every text field of a chunk holding a bare carriage return: Python's csv
    module before 3.11.9 / 3.12.3 leaves such a field unquoted, and it reads back as two
    rows (CPython gh-67044). Other chunks keep the minimal quoting."""
    import csv

    texts = frame.select_dtypes(include=["object", "string"])
    bare_cr = texts.apply(lambda c: c.astype(str).str.contains("\r", regex=False)).to_numpy()
    return csv.QUOTE_NONNUMERIC if bare_cr.any() else csv.QUOTE_MINIMAL


def _as_text_where(frame: pd.DataFrame, names: set[str]) -> pd.DataFrame:
    """``frame`` with the columns ``names`` (text in the file's schema) as strings or
    None: a CSV reads a column that is empty in a chunk as NaN, and digits as numbers."""
    changed = {
        name: [None if pd.isna(v) else str(v) for v in frame[name]]
        for name in names
        if name in frame and frame[name].dtype != object
    }
    return frame.assign(**changed) if changed else frame


class TableWriter:
    """Appends chunks of rows to a CSV / TSV / JSONL / Parquet file as they come, into a
    temporary file beside it that is renamed over it when the ``with`` block ends
    normally and removed when it raises: the file is whole or absent.

    Parquet keeps the first chunk's column types for the whole file (a column empty in
    the first chunk is taken as text).
    """

    def __init__(self, path: str | Path, header: bool = True):
        self.path = Path(path)
        self.header = header  # CSV / TSV: a header line before the first row
        self.kind = READERS.get(self.path.suffix.lower())
        if self.kind not in ("csv", "tsv", "jsonl", "parquet"):
            raise LlmclfError(
                f"cannot write {self.path.name}: use a .csv, .tsv, .jsonl or .parquet name"
            )
        self.rows = 0
        self._parquet = None
        self._schema = None

    def __enter__(self) -> TableWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._atomic = atomic_path(self.path)
        self._partial = self._atomic.__enter__()
        if self.kind != "parquet":
            self._file = open(self._partial, "w", encoding="utf-8", newline="")
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind in ("csv", "tsv"):
            sep = "," if self.kind == "csv" else "\t"
            frame.to_csv(
                self._file,
                sep=sep,
                index=False,
                header=self.header and self.rows == 0,
                quoting=_csv_quoting(frame),
            )
        elif self.kind == "jsonl":
            text = frame.to_json(orient="records", lines=True, force_ascii=False)
            self._file.write(text if text.endswith("\n") else text + "\n")
        else:
            self._write_parquet(frame)
        self.rows += len(frame)

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet is None:
            schema = pa.Schema.from_pandas(frame, preserve_index=False)
            for i, field in enumerate(schema):  # empty so far (a CSV reads it as NaN): text
                empty = field.name in frame and frame[field.name].isna().all()
                if pa.types.is_null(field.type) or (empty and pa.types.is_floating(field.type)):
                    schema = schema.set(i, pa.field(field.name, pa.string()))
            self._schema = schema
            self._parquet = pq.ParquetWriter(self._partial, schema)
        frame = _as_text_where(frame, {f.name for f in self._schema if pa.types.is_string(f.type)})
        try:
            table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise LlmclfError(
                f"cannot write {self.path.name}: a column's type changes after row "
                f"{self.rows:,} ({first}); write a .jsonl or .csv file instead"
            ) from None
        self._parquet.write_table(table)

    def __exit__(self, kind, value, traceback) -> bool:
        if self._parquet is not None:
            self._parquet.close()
        elif self.kind != "parquet":
            self._file.close()
        elif value is None:  # no rows: an empty Parquet file is still a Parquet file
            pd.DataFrame().to_parquet(self._partial)
        return bool(self._atomic.__exit__(kind, value, traceback))


def _refuse_duplicate_columns(path: Path, header: pd.DataFrame) -> None:
    """pandas would rename a repeated column name to ``NAME.1`` and read whichever it
    kept: a header naming a column twice is refused instead."""
    names = [str(v) for v in header.iloc[0]] if len(header) else []
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise LlmclfError(
            f"{path} names the column {', '.join(repr(n) for n in repeated)} more than once: "
            "give every column its own name"
        )


def _read_json(path: Path) -> pd.DataFrame:
    text = path.read_text(encoding="utf-8")
    try:
        return pd.DataFrame(json.loads(text))
    except json.JSONDecodeError:
        return pd.read_json(path, lines=True, dtype=False)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write CSV, TSV, JSONL or Parquet by extension, atomically (no half-written file)."""
    path = Path(path)
    kind = READERS.get(path.suffix.lower())
    if kind not in ("csv", "tsv", "jsonl", "parquet"):
        raise LlmclfError(f"cannot write {path.name}: use a .csv, .tsv, .jsonl or .parquet name")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        if kind == "csv":
            frame.to_csv(partial, index=False)
        elif kind == "tsv":
            frame.to_csv(partial, sep="\t", index=False)
        elif kind == "jsonl":
            frame.to_json(partial, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(partial, index=False)


# ---------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------


def load_frames(config: DataConfig, split_files: bool = True) -> dict[str, pd.DataFrame]:
    """Raw rows of every split of ``config.data``: built-in, ``hf:`` or a file. A file
    without a ``split`` column is split 80/10/10, or with ``split_files=False`` (a file
    to evaluate) kept whole as one split named ``all``."""
    spec = config.data
    if spec in DATASETS:
        entry = DATASETS[spec]
        return entry.loader()
    if spec.startswith("hf:"):
        return _load_hf(spec[3:], config)
    path = Path(spec)
    if not path.exists() and path.suffix.lower() not in READERS:
        raise LlmclfError(
            f"unknown data {spec!r}: give a built-in name ({', '.join(DATASETS)}), "
            "a CSV / TSV / JSONL / Parquet file, or hf:NAME[:CONFIG]"
        )
    frame = read_table(path)
    if not split_files and "split" not in frame.columns:
        return {"all": frame}
    return _split_file(frame, config)


def _split_file(frame: pd.DataFrame, config: DataConfig) -> dict[str, pd.DataFrame]:
    if "split" in frame.columns:
        empty = [i for i, v in enumerate(frame["split"]) if _missing(v) or not str(v).strip()]
        if empty:
            rows = ", ".join(str(i + 1) for i in empty[:5])
            raise LlmclfError(
                f"the 'split' column is empty in {len(empty)} of {len(frame)} rows (data rows "
                f"{rows}, counted from 1): give each row train, validation or test"
            )
        names = [_SPLIT_ALIASES.get(str(v).strip().lower()) for v in frame["split"]]
        unknown = sorted({str(v) for v, name in zip(frame["split"], names) if name is None})
        if unknown:
            raise LlmclfError(
                f"the 'split' column has values {', '.join(unknown)}: use train, validation or test"
            )
        names = pd.Series(names, index=frame.index, dtype=object)
        splits = {name: frame[names == name].reset_index(drop=True) for name in SPLITS}
        splits = {k: v for k, v in splits.items() if len(v)}
        return _carve_missing(splits, config)
    keys = _stratify_keys(frame, config)
    parts = stratified_split(keys, (0.8, 0.1, 0.1), config.split_seed)
    return {
        name: frame.iloc[rows].reset_index(drop=True) for name, rows in zip(SPLITS, parts) if rows
    }


def _stratify_keys(frame: pd.DataFrame, config: DataConfig) -> list:
    """The cleaned label of every row (a label set for multi-label data), so labels that
    differ only by surrounding whitespace stratify as the one class they become."""
    if config.label_column not in frame.columns:
        return ["" for _ in range(len(frame))]
    multi_label = detect_multi_label(frame, config)
    keys = []
    for value in frame[config.label_column]:
        try:
            label = parse_label(value, multi_label, config.label_sep)
        except LlmclfError:  # refused with its row number when the examples are made
            label = str(value)
        keys.append(tuple(label) if isinstance(label, list) else ("" if label is None else label))
    return keys


def _carve_missing(splits: dict[str, pd.DataFrame], config: DataConfig) -> dict[str, pd.DataFrame]:
    """Make a validation (and, if absent, a test) split out of train, stratified."""
    if "train" not in splits:
        return splits
    wanted = [name for name in ("validation", "test") if name not in splits]
    if not wanted:
        return splits
    train = splits["train"]
    fractions = (1.0 - 0.1 * len(wanted), *([0.1] * len(wanted)))
    parts = stratified_split(_stratify_keys(train, config), fractions, config.split_seed)
    splits["train"] = train.iloc[parts[0]].reset_index(drop=True)
    for name, rows in zip(wanted, parts[1:]):
        log.info("no %s split in %s: using a stratified 10%% of train", name, config.data)
        splits[name] = train.iloc[rows].reset_index(drop=True)
    return splits


def _load_hf(spec: str, config: DataConfig) -> dict[str, pd.DataFrame]:
    import datasets

    name, _, subset = spec.partition(":")
    try:
        loaded = datasets.load_dataset(name, subset or None)
    except Exception as exc:  # hub, network, or unknown-name errors of many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlmclfError(f"cannot load the Hugging Face dataset {spec!r}: {first}") from None
    splits = {}
    for split_name, part in loaded.items():
        canonical = _SPLIT_ALIASES.get(split_name.lower())
        if canonical and canonical not in splits:
            splits[canonical] = _hf_to_frame(part, config.label_column)
    if not splits:
        raise LlmclfError(f"the dataset {spec!r} has none of the splits train / validation / test")
    return _carve_missing(splits, config)


def _hf_to_frame(part, label_column: str) -> pd.DataFrame:
    """A datasets.Dataset as a frame, with ClassLabel ids turned into their names."""
    import datasets

    frame = part.to_pandas()
    feature = part.features.get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        frame[label_column] = [feature.int2str(int(v)) for v in frame[label_column]]
    elif isinstance(feature, (datasets.Sequence, datasets.List)) and isinstance(
        getattr(feature, "feature", None), datasets.ClassLabel
    ):
        names = feature.feature
        frame[label_column] = [[names.int2str(int(v)) for v in row] for row in frame[label_column]]
    return frame


def examples_by_split(
    config: DataConfig, multi_label: bool | None = None, split_files: bool = True
) -> tuple[dict[str, Examples], bool]:
    """Every split as ``Examples``; multi-label is detected from the training labels.
    ``split_files``: as ``load_frames``. ``validation_limit`` / ``test_limit`` cut those
    splits to a stratified sample (``sample``), the same one on every read; ``train_limit``
    is applied by the callers that train."""
    frames = load_frames(config, split_files)
    if multi_label is None:
        first = frames.get("train", next(iter(frames.values())))
        multi_label = detect_multi_label(first, config)
    out = {}
    for name, frame in frames.items():
        out[name] = to_examples(frame, config, multi_label, where=f"{config.data} [{name}]")
    limits = {"validation": config.validation_limit, "test": config.test_limit}
    for name, limit in limits.items():
        if limit and name in out:  # the same stratified sample every time the data is read
            out[name] = sample(out[name], limit, config.split_seed, multi_label)
    return out, multi_label


# ---------------------------------------------------------------------------------------
# Columns, labels and bad rows
# ---------------------------------------------------------------------------------------


def is_label_list(value) -> bool:
    """Several labels in one cell: a list, tuple, set or array (numpy scalars are not)."""
    return isinstance(value, (list, tuple, set, frozenset, np.ndarray))


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def check_columns(frame: pd.DataFrame, columns: list[str], where: str, flag: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        shown = ", ".join(str(c) for c in frame.columns[:20])
        raise LlmclfError(
            f"{where} has no column {', '.join(repr(m) for m in missing)} (its columns: {shown}); "
            f"name the right one with {flag}"
        )


def read_texts(frame: pd.DataFrame, columns: list[str], where: str) -> list[str | None]:
    """The text of each row, several columns joined by a blank line; None when empty."""
    check_columns(frame, columns, where, "--text-column")
    texts: list[str | None] = []
    for values in zip(*(frame[c].tolist() for c in columns)):
        parts = [str(v).strip() for v in values if not _missing(v)]
        texts.append("\n\n".join(parts) if parts else None)
    return texts


def _as_label(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_label(value, multi_label: bool, label_sep: str | None):
    """One cell -> a label string, or (multi-label) a list of label strings; None if missing."""
    if multi_label:
        if is_label_list(value):
            return sorted({_as_label(v) for v in value if not _missing(v)})
        if _missing(value):
            return []
        text = str(value).strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                raise LlmclfError(
                    f"the label {text[:60]!r} starts like a JSON list but is not one"
                ) from None
            return sorted({_as_label(v) for v in parsed if not _missing(v)})
        parts = text.split(label_sep) if label_sep else [text]
        return sorted({p.strip() for p in parts if p.strip()})
    if _missing(value):
        return None
    if is_label_list(value):
        raise LlmclfError(
            f"the label {value!r} is a list: this looks like multi-label data; the model is single-label"
        )
    return _as_label(value)


def detect_multi_label(frame: pd.DataFrame, config: DataConfig) -> bool:
    """Multi-label when a separator is given or the labels are lists / JSON lists."""
    if config.label_sep:
        return True
    if config.label_column not in frame.columns:
        return False
    for value in frame[config.label_column].head(200):
        if is_label_list(value):
            return True
        if isinstance(value, str) and value.strip().startswith("["):
            return True
    return False


def to_examples(
    frame: pd.DataFrame,
    config: DataConfig,
    multi_label: bool,
    where: str,
    labelled: bool = True,
) -> Examples:
    """Pull texts (and labels) out of ``frame``; drop or refuse rows without text / label."""
    if frame.empty:
        raise LlmclfError(f"{where} has no rows")
    texts = read_texts(frame, config.text_column, where)
    labels = None
    if labelled:
        check_columns(frame, [config.label_column], where, "--label-column")
        labels = [parse_label(v, multi_label, config.label_sep) for v in frame[config.label_column]]
    bad_text = [i for i, t in enumerate(texts) if t is None]
    bad_label = [i for i, lab in enumerate(labels or []) if lab is None]
    bad = sorted(set(bad_text) | set(bad_label))
    if bad:
        what = []
        if bad_text:
            what.append(f"{len(bad_text)} rows with an empty or missing text")
        if bad_label:
            what.append(f"{len(bad_label)} rows with no label")
        message = f"{where} has {' and '.join(what)} (of {len(frame)})"
        if config.empty_text == "error":
            raise LlmclfError(f"{message}: fix them, or pass --empty-text drop to skip them")
        log.warning("%s: dropped them", message)
        dropped = set(bad)
        keep = [i for i in range(len(frame)) if i not in dropped]
        if not keep:
            raise LlmclfError(f"{where} has no rows left after dropping empty ones")
        frame = frame.iloc[keep].reset_index(drop=True)
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep] if labels is not None else None
    return Examples(texts=texts, labels=labels, frame=frame.reset_index(drop=True))


def sample(examples: Examples, limit: int, seed: int, multi_label: bool) -> Examples:
    """A stratified sample of ``limit`` examples (label sets stratify multi-label data)."""
    if limit >= len(examples):
        return examples
    keys = [json.dumps(lab) if multi_label else lab for lab in examples.labels]
    fraction = limit / len(examples)
    _, chosen = stratified_split(keys, (1 - fraction, fraction), seed)
    rng = random.Random(seed)
    if len(chosen) > limit:
        chosen = sorted(rng.sample(chosen, limit))
    elif len(chosen) < limit:
        rest = sorted(set(range(len(examples))) - set(chosen))
        chosen = sorted(chosen + rng.sample(rest, limit - len(chosen)))
    return examples.subset(chosen)


def content_hash(texts: list[str], labels: list | None = None) -> str:
    """A fingerprint of a data split's content, to tell whether two runs saw the same test set."""
    digest = hashlib.sha256()
    for i, text in enumerate(texts):
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
        if labels is not None:
            digest.update(json.dumps(labels[i]).encode("utf-8"))
        digest.update(b"\x01")
    return digest.hexdigest()
