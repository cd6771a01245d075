"""Property-based tests (hypothesis): whatever bytes a data file holds and whatever mapping
a config file holds, llmclf either gives a valid result or one clean ``LlmclfError``,
never another exception."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmclf.cli import main
from llmclf.config import DataConfig, field_names, flatten
from llmclf.data import examples_by_split, read_table
from llmclf.errors import LlmclfError
from llmclf.methods.registry import method_class, method_classes

# max_examples comes from the profile (tests/conftest.py: 60 by default,
# --hypothesis-profile deep for 1000)
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = [".csv", ".tsv", ".jsonl", ".json", ".parquet"]


def valid_examples(splits: dict, multi_label: bool) -> None:
    """What a successful read promises: named splits of non-empty texts with a label
    (a string, or a list of strings for multi-label) each."""
    assert splits and set(splits) <= {"train", "validation", "test", "all"}
    for part in splits.values():
        assert len(part.texts) == len(part.labels) > 0
        assert all(isinstance(t, str) and t.strip() for t in part.texts)
        for label in part.labels:
            if multi_label:
                assert isinstance(label, list) and all(isinstance(v, str) for v in label)
            else:
                assert isinstance(label, str) and label == label.strip() and label


def read(path: Path, **options) -> None:
    try:
        splits, multi_label = examples_by_split(DataConfig(data=str(path), **options))
    except LlmclfError as error:
        assert str(error).strip() and "\n" not in str(error).strip()
        return
    valid_examples(splits, multi_label)


@SETTINGS
@given(content=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_are_read_or_refused_cleanly(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        read(path)


CELLS = st.one_of(
    st.text(max_size=12),
    st.none(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=False, width=32),
    st.booleans(),
)
LABELS = st.one_of(
    st.sampled_from(["sport", " sport", "sport ", "money", "a|b", '["a", "b"]', "[", "", " "]),
    st.text(max_size=6),
    st.none(),
    st.integers(0, 3),
    st.floats(0, 3, width=32),
    st.lists(st.sampled_from(["a", "b", " c"]), max_size=3),
)
SPLITS = st.sampled_from(["train", "test", "validation", "dev", "TRAIN ", "bogus", ""])


@st.composite
def tables(draw):
    rows = draw(st.integers(1, 25))
    frame = {
        "text": draw(st.lists(CELLS, min_size=rows, max_size=rows)),
        "label": draw(st.lists(LABELS, min_size=rows, max_size=rows)),
    }
    if draw(st.booleans()):
        frame["split"] = draw(st.lists(SPLITS, min_size=rows, max_size=rows))
    return pd.DataFrame(frame)


def write(frame: pd.DataFrame, path: Path, encoding: str) -> None:
    if path.suffix in (".csv", ".tsv"):
        frame.to_csv(
            path, sep="," if path.suffix == ".csv" else "\t", index=False, encoding=encoding
        )
    elif path.suffix == ".jsonl":
        path.write_text(frame.to_json(orient="records", lines=True), encoding=encoding)
    elif path.suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")), encoding=encoding)
    else:
        frame.astype(str).to_parquet(path)


@SETTINGS
@given(
    frame=tables(),
    suffix=st.sampled_from(SUFFIXES),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]),
    label_sep=st.sampled_from([None, "|", ","]),
)
def test_random_tables_give_valid_examples_or_one_clean_error(frame, suffix, encoding, label_sep):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        try:
            write(frame, path, encoding)
        except (UnicodeEncodeError, ValueError, TypeError):
            return  # a table this encoding (or pyarrow) cannot hold: nothing to read
        read(path, label_sep=label_sep)


def test_a_table_read_back_keeps_its_rows(tmp_path):
    """The positive case the properties above rest on: a clean table reads whole."""
    frame = pd.DataFrame({"text": ["a b", "c d", "e f"], "label": ["x", "y", "x"]})
    write(frame, tmp_path / "d.csv", "utf-8")
    assert len(read_table(tmp_path / "d.csv")) == 3


# ---------------------------------------------------------------------------------------
# The config layer
# ---------------------------------------------------------------------------------------

OPTION_NAMES = sorted(
    set().union(*(cls.config_class.option_names() for cls in method_classes().values()))
    | field_names(DataConfig)
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 1000),
    st.floats(-1, 10, allow_nan=False, width=32),
    st.text(max_size=8),
    st.sampled_from(["auto", "none", "4bit", "mean", "last", "two", "1e-3", "all-linear"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=2)
    ),
    max_leaves=4,
)
KEYS = st.one_of(st.sampled_from(OPTION_NAMES), st.text(min_size=1, max_size=10))
MAPPINGS = st.dictionaries(KEYS, VALUES, max_size=6)
METHODS = st.sampled_from([*method_classes(), "no-such-method", 3])


def valid_config(config) -> None:
    """Every option of a resolved config has its declared type."""
    for section in config.sections():
        part = getattr(config, section)
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            kinds = str(f.type)
            if value is None:
                assert "None" in kinds, (f.name, value)
            elif kinds.startswith("bool"):
                assert isinstance(value, bool)
            elif kinds.startswith("int"):
                assert isinstance(value, int) and not isinstance(value, bool), (f.name, value)
            elif kinds.startswith("float"):
                assert isinstance(value, float), (f.name, value)
            elif kinds.startswith("list"):
                assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            else:
                assert isinstance(value, str), (f.name, value)


@SETTINGS
@given(mapping=MAPPINGS, method=METHODS)
def test_random_config_mappings_resolve_or_give_one_clean_error(mapping, method):
    values = flatten(mapping)
    try:
        cls = method_class(method)
        options = {k: v for k, v in values.items() if k in cls.config_class.option_names()}
        config = cls(**options).resolve_config()
        DataConfig(**{k: v for k, v in values.items() if k in field_names(DataConfig)})
    except LlmclfError as error:
        assert str(error).strip() and "\n" not in str(error).strip()
        return
    valid_config(config)


@settings(deadline=None)
@given(mapping=MAPPINGS)
def test_random_config_files_give_one_error_line_from_the_cli(mapping):
    """Through `llmclf train --config`: a random file never gives a traceback. The data
    flag names a missing file, so a config that resolves still stops before training,
    with one `llmclf: error:` line."""
    mapping.pop("model", None)  # a random model name would go to the hub when online
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "c.yaml"
        config.write_text(yaml.safe_dump(mapping, allow_unicode=True))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(
                [
                    "train",
                    "--config",
                    str(config),
                    "--data",
                    str(Path(folder) / "none.csv"),
                    "--output",
                    str(Path(folder) / "run"),
                ]
            )
        lines = [line for line in err.getvalue().splitlines() if line.startswith("llmclf: error:")]
        assert code == 2 and len(lines) == 1, err.getvalue()
        assert not (Path(folder) / "run").exists()
