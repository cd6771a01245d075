"""llmclf predict streams: chunks in, chunks out, the output whole or absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmclf.cli import main
from llmclf.data import TableWriter, iter_table
from llmclf.errors import LlmclfError
from llmclf.runs.predict import predict_file
from tests.conftest import make_texts


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stream")
    texts, labels = make_texts(90, seed=7)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / "d.csv", index=False)
    run = folder / "run"
    assert (
        main(["train", "--method", "tfidf", "--data", str(folder / "d.csv"), "--output", str(run)])
        == 0
    )
    return run


def table(n: int = 50) -> pd.DataFrame:
    texts, _ = make_texts(n, seed=11)
    texts[3] = texts[17] = ""  # empty texts inside chunks
    return pd.DataFrame({"id": np.arange(n), "text": texts, "note": ["x"] * n})


def write(frame: pd.DataFrame, path: Path) -> Path:
    with TableWriter(path) as writer:
        writer.write(frame)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_chunked_prediction_equals_prediction_in_one_chunk(tfidf_run, tmp_path, suffix):
    source = write(table(), tmp_path / f"in{suffix}")
    whole, chunked = tmp_path / f"whole{suffix}", tmp_path / f"chunked{suffix}"
    assert predict_file(tfidf_run, source, whole, chunk_rows=10_000) == 50
    assert predict_file(tfidf_run, source, chunked, chunk_rows=7) == 50  # 8 chunks, last of 1
    a, b = (pd.concat(list(iter_table(p, 1000))) for p in (whole, chunked))
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    assert list(b["id"]) == list(range(50))
    assert (b.loc[[3, 17], "prediction"].fillna("") == "").all()
    assert b.drop(index=[3, 17])["prediction"].str.len().gt(0).all()
    assert not list(tmp_path.glob(".*partial*"))


def test_a_bad_row_late_in_the_input_leaves_no_output(tfidf_run, tmp_path):
    source = tmp_path / "in.jsonl"
    write(table(), source)
    with source.open("a") as f:
        f.write("{not json\n")
    out = tmp_path / "out.csv"
    with pytest.raises(LlmclfError, match=r"cannot read .* as JSONL \(after row 49\)"):
        predict_file(tfidf_run, source, out, chunk_rows=7)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_empty_texts_are_refused_before_anything_is_written(tfidf_run, tmp_path, capsys):
    source = write(table(), tmp_path / "in.csv")
    code = main(
        ["predict", str(tfidf_run), "--input", str(source), "--output", str(tmp_path / "o.csv")]
        + ["--empty-text", "error", "--chunk-rows", "5"]
    )
    assert code == 2 and "has 2 rows with an empty text" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_parquet_output_keeps_its_types_across_chunks(tfidf_run, tmp_path):
    frame = table()
    frame["maybe"] = [None] * 10 + ["v"] * 40  # empty in the first chunk, text after
    source = write(frame, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    predict_file(tfidf_run, source, out, chunk_rows=10)
    back = pd.read_parquet(out)
    assert list(back["maybe"][8:12].isna()) == [True, True, False, False]
    assert list(back["maybe"][10:12]) == ["v", "v"]
    assert back["proba_sport"].dtype == np.float32


def test_chunk_rows_below_one_is_refused(tfidf_run, tmp_path, capsys):
    source = write(table(), tmp_path / "in.csv")
    code = main(
        ["predict", str(tfidf_run), "--input", str(source), "--output", str(tmp_path / "o.csv")]
        + ["--chunk-rows", "0"]
    )
    assert code == 2 and "--chunk-rows must be > 0, not 0" in capsys.readouterr().err


def test_a_python_caller_gets_the_flags_checks(tfidf_run, tmp_path):
    """predict_file's keywords go through PredictOptions as the flags do."""
    source = write(table(), tmp_path / "in.csv")
    with pytest.raises(LlmclfError, match="--chunk-rows must be > 0, not 0"):
        predict_file(tfidf_run, source, tmp_path / "o.csv", chunk_rows=0)
    with pytest.raises(LlmclfError, match="--empty-text must be one of drop, error"):
        predict_file(tfidf_run, source, tmp_path / "o.csv", empty_text="skip")
    assert not (tmp_path / "o.csv").exists()
