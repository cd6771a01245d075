"""llmclf predict --ray: Ray Data on a local instance with 2 workers, the tiny model."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmclf.cli import main
from llmclf.runs.predict import predict_file
from tests.conftest import make_texts

# the ray extra (in dev, so make test runs these); a machine without it skips them
pytest.importorskip("ray", reason="needs the ray extra: pip install 'llmclf[ray]'")


@pytest.fixture(scope="module")
def head_run(tiny_llama, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray")
    texts, labels = make_texts(60, seed=2)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / "d.csv", index=False)
    run = folder / "run"
    args = ["train", "--model", tiny_llama, "--data", str(folder / "d.csv"), "--epochs", "1"]
    assert main([*args, "--dtype", "float32", "--output", str(run)]) == 0
    return run


def shards(folder: Path) -> pd.DataFrame:
    """Three Parquet shards of 13, 20 and 7 rows (one empty text); their rows, in order."""
    folder.mkdir()
    frames = []
    for i, n in enumerate((13, 20, 7)):
        texts, _ = make_texts(n, seed=30 + i)
        frame = pd.DataFrame({"text": texts, "shard": i, "n": range(n)})
        frames.append(frame)
        frame.to_parquet(folder / f"part-{i}.parquet")
    whole = pd.concat(frames, ignore_index=True)
    whole.loc[15, "text"] = ""
    whole.iloc[13:33].to_parquet(folder / "part-1.parquet")
    return whole


@pytest.mark.slow  # a local Ray cluster
def test_ray_labels_every_row_as_predict_does_and_keeps_the_order(head_run, tmp_path, capsys):
    whole = shards(tmp_path / "shards")
    whole.to_parquet(tmp_path / "all.parquet")
    predict_file(head_run, tmp_path / "all.parquet", tmp_path / "expected.parquet")
    expected = pd.read_parquet(tmp_path / "expected.parquet")

    out = tmp_path / "labelled"
    code = main(
        ["predict", str(head_run), "--input", str(tmp_path / "shards" / "*.parquet")]
        + ["--output", str(out), "--ray", "--ray-workers", "2", "--chunk-rows", "8"]
    )
    assert code == 0, capsys.readouterr().err
    assert "wrote 40 predictions" in capsys.readouterr().out
    got = pd.concat([pd.read_parquet(p) for p in glob.glob(str(out / "*.parquet"))])
    got = got.sort_values("row_id").reset_index(drop=True)
    assert list(got["row_id"]) == list(range(40))
    pd.testing.assert_frame_equal(got[["text", "shard", "n"]], whole, check_dtype=False)
    assert list(got["prediction"].fillna("")) == list(expected["prediction"].fillna(""))
    assert got.loc[15, "prediction"] in ("", None)
    probabilities = [c for c in expected.columns if c.startswith("proba_")]
    # other batches than predict's (a batch's padding changes fp32 sums in the last bits)
    np.testing.assert_allclose(got[probabilities], expected[probabilities], atol=1e-6)
    assert not list(tmp_path.glob(".labelled*"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ray-workers", "2"], "--ray-workers needs --ray"),
        (["--ray", "--ray-workers", "0"], "--ray-workers must be > 0, not 0"),
        (["--ray", "--input", "nothing/*.parquet"], "--input nothing/*.parquet matches no file"),
    ],
)
def test_ray_mistakes_are_one_line_before_ray_starts(head_run, tmp_path, capsys, args, message):
    shards(tmp_path / "shards")
    given = ["--input", str(tmp_path / "shards" / "*.parquet"), "--output", str(tmp_path / "o")]
    if "--input" in args:
        given = given[2:]
    code = main(["predict", str(head_run), *given, *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists()
