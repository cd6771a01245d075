"""The corpus of bad inputs: every mistake a user can make, through the CLI, gets one
`llmclf ...: error:` line naming the problem (asserted by a fragment of it), exit 2, no
traceback, and nothing new written anywhere in the working folder (an existing target
untouched). TF-IDF runs and the tiny model keep each case at well under a second, since
every check runs before a model loads or training starts.

Each case is (id, argv, expected fragment). Paths are relative to a working folder that
holds the files made by ``workspace``: ``good.csv`` (train/validation/test), ``run`` (a
finished TF-IDF run), ``texts.csv`` (texts to predict), and the bad files named below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llmclf.cli import main
from tests.conftest import make_texts

TFIDF = ["--method", "tfidf", "--min-df", "1"]


def _table(n: int, seed: int = 0, **columns) -> pd.DataFrame:
    texts, labels = make_texts(n, seed=seed)
    return pd.DataFrame({"text": texts, "label": labels, **columns})


def make_workspace(root: Path, tiny_llama: str) -> None:
    splits = ["train"] * 30 + ["validation"] * 6 + ["test"] * 6
    _table(42, split=splits).to_csv(root / "good.csv", index=False)
    _table(30).to_csv(root / "nosplit.csv", index=False)
    pd.DataFrame({"text": ["bank stock", "goal match"]}).to_csv(root / "texts.csv", index=False)
    pd.DataFrame({"body": ["bank stock"]}).to_csv(root / "body.csv", index=False)
    assert main(["train", *TFIDF, "--data", "good.csv", "--output", "run"]) == 0
    shutil.copytree(root / "run", root / "run2")
    shutil.copytree(root / "run", root / "broken-run")
    (root / "broken-run" / "pipeline.skops").write_bytes(b"PK\x03\x04 cut")
    (root / "not-a-run").mkdir()
    (root / "not-a-run" / "notes.txt").write_text("hello")
    (root / "empty-folder").mkdir()
    (root / "model-folder").mkdir()
    (root / "taken.txt").write_text("keep me")
    (root / "x.csv").mkdir()
    (root / "empty.csv").write_text("")
    (root / "header-only.csv").write_text("text,label\n")
    (root / "data.xlsx").write_bytes(b"PK\x03\x04 not really")
    (root / "garbage.parquet").write_bytes(b"\x00\x01 not parquet")
    (root / "garbage.jsonl").write_text('{"text": "a", "label": \n')
    (root / "latin1.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1") * 1)
    (root / "dup.csv").write_text("text,text,label\na,b,c\n")
    _table(30).rename(columns={"text": "body"}).to_csv(root / "no-text.csv", index=False)
    _table(30).rename(columns={"label": "topic"}).to_csv(root / "no-label.csv", index=False)
    one = _table(30)
    one["label"] = "sport"
    one.to_csv(root / "one-class.csv", index=False)
    bad_split = _table(12, split=["train"] * 10 + ["holdout"] * 2)
    bad_split.to_csv(root / "bad-split.csv", index=False)
    empty_split = _table(12, split=["train"] * 10 + ["", "test"])
    empty_split.to_csv(root / "empty-split.csv", index=False)
    test_only = _table(36, split=["train"] * 30 + ["test"] * 6)
    test_only.loc[35, "label"] = "weather"
    test_only.to_csv(root / "test-only-label.csv", index=False)
    empty_texts = _table(30)
    empty_texts.loc[[0, 3], "text"] = ""
    empty_texts.to_csv(root / "empty-texts.csv", index=False)
    all_empty = _table(6)
    all_empty["text"] = ""
    all_empty.to_csv(root / "all-empty.csv", index=False)
    half_json = _table(30)
    half_json.loc[0, "label"] = '["sport", '
    half_json.to_csv(root / "half-json.csv", index=False)
    unseen = pd.DataFrame({"text": ["bank stock", "rain"], "label": ["money", "weather"]})
    unseen.to_csv(root / "unseen.csv", index=False)
    (root / "epochs-two.yaml").write_text("epochs: two\n")
    (root / "list.yaml").write_text("- epochs\n- 3\n")
    (root / "broken.yaml").write_text("epochs: [1, 2\n")
    (root / "unknown-key.yaml").write_text("epochz: 3\n")
    (root / "lr-text.yaml").write_text("learning_rate: fast\n")
    (root / "nested.yaml").write_text("train: {batch_size: -4}\n")
    (root / "bool.yaml").write_text("resume: maybe\n")
    (root / "grid-unknown.yaml").write_text(
        yaml.safe_dump({"data": "good.csv", "methods": {"nope": {}}})
    )
    (root / "grid-list.yaml").write_text("- a\n")
    (root / "grid-model.yaml").write_text(
        yaml.safe_dump(
            {"data": "good.csv", "models": [tiny_llama, "org/not-here"], "methods": {"head": {}}}
        )
    )
    (root / "config.json").write_text(json.dumps({"not": "a model"}))
    (root / "typo.yaml").write_text("learning_rat: 0.1\n")
    (root / "poolingg.yaml").write_text("poolingg: mean\n")
    (root / "chunks.yaml").write_text("long_text: chunks\nchunk_stride: 8\n")


CASES = [
    # train: the command line and the config file
    ("train-no-output", ["train", *TFIDF, "--data", "good.csv"], "train needs --output"),
    ("train-unknown-method", ["train", "--method", "nope", "--output", "o"], "nope"),
    ("train-epochs-zero", ["train", "--epochs", "0", "--output", "o"], "--epochs must be > 0"),
    ("train-epochs-word", ["train", "--epochs", "two", "--output", "o"], "invalid float value"),
    ("train-bad-choice", ["train", "--pooling", "maxx", "--output", "o"], "invalid choice"),
    ("train-abbreviated", ["train", "--epo", "2", "--output", "o"], "unrecognized arguments"),
    ("train-lora-r-negative", ["train", "--lora-r", "-1", "--output", "o"], "--lora-r must be"),
    ("train-train-limit-zero", ["train", "--train-limit", "0", "--output", "o"], "--train-limit"),
    ("train-lr-word", ["train", "--learning-rate", "fast", "--output", "o"], "invalid float"),
    (
        "train-chunk-stride-too-long",
        [
            "train",
            "--long-text",
            "chunks",
            "--chunk-stride",
            "64",
            "--max-length",
            "64",
            "--output",
            "o",
        ],
        "--chunk-stride 64 must be smaller than --max-length 64",
    ),
    (
        "train-max-chunks-zero",
        ["train", "--long-text", "chunks", "--max-chunks", "0", "--output", "o"],
        "--max-chunks must be > 0",
    ),
    (
        "train-chunks-instruct",
        ["train", "--method", "instruct", "--long-text", "chunks", "--output", "o"],
        "--long-text chunks applies to --method head and encoder, not instruct",
    ),
    (
        "train-long-text-tfidf",
        ["train", *TFIDF, "--long-text", "head-tail", "--data", "good.csv", "--output", "o"],
        "--long-text does not apply to --method tfidf",
    ),
    (
        "train-head-tail-ratio",
        ["train", "--head-tail-ratio", "2", "--output", "o"],
        "--head-tail-ratio must be between 0 and 1",
    ),
    (
        "train-option-of-another-method",
        ["train", *TFIDF, "--lora-r", "4", "--data", "good.csv", "--output", "o"],
        "--lora-r does not apply to --method tfidf",
    ),
    ("config-missing", ["train", "--config", "none.yaml", "--output", "o"], "does not exist"),
    (
        "config-word-for-int",
        ["train", "--config", "epochs-two.yaml", "--output", "o"],
        "--epochs must be a number",
    ),
    (
        "config-word-for-float",
        ["train", "--config", "lr-text.yaml", "--output", "o"],
        "--learning-rate must be a number",
    ),
    ("config-list", ["train", "--config", "list.yaml", "--output", "o"], "must hold a mapping"),
    (
        "config-broken-yaml",
        ["train", "--config", "broken.yaml", "--output", "o"],
        "is not valid YAML",
    ),
    (
        "config-unknown-key",
        ["train", "--config", "unknown-key.yaml", "--output", "o"],
        "--epochz does not apply",
    ),
    (
        "config-nested-negative",
        ["train", "--config", "nested.yaml", "--output", "o"],
        "--batch-size must be > 0",
    ),
    (
        "config-not-bool",
        ["train", "--config", "bool.yaml", "--output", "o"],
        "--resume must be true or false",
    ),
    # train: the data
    (
        "data-missing",
        ["train", *TFIDF, "--data", "none.csv", "--output", "o"],
        "none.csv does not exist",
    ),
    (
        "data-unknown-name",
        ["train", *TFIDF, "--data", "no-such-set", "--output", "o"],
        "unknown data 'no-such-set'",
    ),
    (
        "data-extension",
        ["train", *TFIDF, "--data", "data.xlsx", "--output", "o"],
        "the extension must be one of",
    ),
    ("data-folder", ["train", *TFIDF, "--data", "not-a-run", "--output", "o"], "is a folder"),
    ("data-empty-file", ["train", *TFIDF, "--data", "empty.csv", "--output", "o"], "cannot read"),
    (
        "data-header-only",
        ["train", *TFIDF, "--data", "header-only.csv", "--output", "o"],
        "has no rows",
    ),
    (
        "data-garbage-parquet",
        ["train", *TFIDF, "--data", "garbage.parquet", "--output", "o"],
        "cannot read garbage.parquet as PARQUET",
    ),
    (
        "data-garbage-jsonl",
        ["train", *TFIDF, "--data", "garbage.jsonl", "--output", "o"],
        "as JSONL",
    ),
    ("data-not-utf8", ["train", *TFIDF, "--data", "latin1.csv", "--output", "o"], "cannot read"),
    (
        "data-duplicate-columns",
        ["train", *TFIDF, "--data", "dup.csv", "--output", "o"],
        "names the column 'text' more than once",
    ),
    (
        "data-no-text-column",
        ["train", *TFIDF, "--data", "no-text.csv", "--output", "o"],
        "--text-column",
    ),
    (
        "data-no-label-column",
        ["train", *TFIDF, "--data", "no-label.csv", "--output", "o"],
        "--label-column",
    ),
    (
        "data-wrong-text-column",
        ["train", *TFIDF, "--data", "good.csv", "--text-column", "body", "--output", "o"],
        "body",
    ),
    ("data-one-class", ["train", *TFIDF, "--data", "one-class.csv", "--output", "o"], "one class"),
    (
        "data-bad-split-value",
        ["train", *TFIDF, "--data", "bad-split.csv", "--output", "o"],
        "has values holdout: use train, validation or test",
    ),
    (
        "data-empty-split-cell",
        ["train", *TFIDF, "--data", "empty-split.csv", "--output", "o"],
        "'split' column is empty in 1",
    ),
    (
        "data-label-only-in-test",
        ["train", *TFIDF, "--data", "test-only-label.csv", "--output", "o"],
        "(not in its training split)",
    ),
    (
        "data-empty-texts-error",
        ["train", *TFIDF, "--data", "empty-texts.csv", "--empty-text", "error", "--output", "o"],
        "--empty-text drop",
    ),
    (
        "data-all-texts-empty",
        ["train", *TFIDF, "--data", "all-empty.csv", "--output", "o"],
        "no rows left",
    ),
    (
        "data-half-json-label",
        ["train", *TFIDF, "--data", "half-json.csv", "--output", "o"],
        "starts like a JSON list",
    ),
    # train: the output folder and the model
    (
        "output-is-a-file",
        ["train", *TFIDF, "--data", "good.csv", "--output", "taken.txt"],
        "is a file, not a folder",
    ),
    (
        "output-not-empty",
        ["train", *TFIDF, "--data", "good.csv", "--output", "not-a-run"],
        "is not empty",
    ),
    (
        "output-finished-run",
        ["train", *TFIDF, "--data", "good.csv", "--output", "run"],
        "already holds a finished run",
    ),
    (
        "model-not-cached-offline",
        ["train", "--model", "org/not-here", "--data", "good.csv", "--output", "o"],
        "HF_HUB_OFFLINE",
    ),
    (
        "model-not-an-id",
        ["train", "--model", "two words", "--data", "good.csv", "--output", "o"],
        "not a valid Hugging Face hub id",
    ),
    (
        "model-gguf-missing",
        ["train", "--model", "m.gguf", "--data", "good.csv", "--output", "o"],
        "m.gguf does not exist",
    ),
    (
        "model-folder-without-config",
        ["train", "--model", "model-folder", "--data", "good.csv", "--output", "o"],
        "without config.json",
    ),
    (
        "model-a-data-file",
        ["train", "--model", "good.csv", "--data", "good.csv", "--output", "o"],
        "is not a built-in name",
    ),
    # evaluate
    ("evaluate-missing-run", ["evaluate", "none"], "none does not exist"),
    ("evaluate-file-as-run", ["evaluate", "good.csv"], "is a file, not a run folder"),
    ("evaluate-not-a-run", ["evaluate", "not-a-run"], "holds no config.yaml"),
    ("evaluate-damaged-run", ["evaluate", "broken-run"], "broken-run is damaged: pipeline.skops"),
    ("evaluate-unseen-label", ["evaluate", "run", "--data", "unseen.csv"], "never saw: 'weather'"),
    ("evaluate-output-a-file", ["evaluate", "run", "--output", "taken.txt"], "is a file"),
    ("evaluate-unknown-split", ["evaluate", "run", "--split", "holdout"], "holdout"),
    ("evaluate-data-missing", ["evaluate", "run", "--data", "none.csv"], "does not exist"),
    ("evaluate-no-label-column", ["evaluate", "run", "--data", "texts.csv"], "--label-column"),
    ("evaluate-train-option", ["evaluate", "run", "--epochs", "3"], "unrecognized arguments"),
    # predict
    ("predict-no-input", ["predict", "run", "--output", "p.csv"], "--input"),
    (
        "predict-input-missing",
        ["predict", "run", "--input", "none.csv", "--output", "p.csv"],
        "none.csv does not exist",
    ),
    (
        "predict-output-under-a-file",
        ["predict", "run", "--input", "texts.csv", "--output", "taken.txt/p.csv"],
        "is a file",
    ),
    (
        "predict-output-a-folder",
        ["predict", "run", "--input", "texts.csv", "--output", "x.csv"],
        "is a folder",
    ),
    (
        "predict-output-extension",
        ["predict", "run", "--input", "texts.csv", "--output", "p.xlsx"],
        "use a .csv, .jsonl, .tsv or .parquet name",
    ),
    (
        "predict-no-text-column",
        ["predict", "run", "--input", "body.csv", "--output", "p.csv"],
        "--text-column",
    ),
    (
        "predict-damaged-run",
        ["predict", "broken-run", "--input", "texts.csv", "--output", "p.csv"],
        "is damaged",
    ),
    (
        "predict-input-is-run",
        ["predict", "run", "--input", "run", "--output", "p.csv"],
        "is a folder",
    ),
    # calibrate, compare, export, experiment, distill
    ("calibrate-missing-run", ["calibrate", "none"], "none does not exist"),
    ("calibrate-unseen-label", ["calibrate", "run", "--data", "unseen.csv"], "never saw"),
    ("compare-one-run", ["compare", "run", "--output", "r"], "two"),
    (
        "compare-split-without-data",
        ["compare", "run", "run", "--split", "all", "--output", "r"],
        "--data",
    ),
    ("compare-missing-run", ["compare", "run", "none", "--output", "r"], "none does not exist"),
    ("compare-output-a-file", ["compare", "run", "run", "--output", "taken.txt"], "taken.txt"),
    ("export-tfidf", ["export", "run", "--output", "onnx-out"], "encoder"),
    ("export-missing-run", ["export", "none", "--output", "onnx-out"], "none does not exist"),
    ("experiment-missing-grid", ["experiment", "none.yaml", "--output", "g"], "does not exist"),
    (
        "experiment-unknown-method",
        ["experiment", "grid-unknown.yaml", "--output", "g"],
        "unknown method 'nope'",
    ),
    ("experiment-not-a-mapping", ["experiment", "grid-list.yaml", "--output", "g"], "mapping"),
    (
        "experiment-unknown-model",
        ["experiment", "grid-model.yaml", "--output", "g"],
        "'org/not-here' is not a built-in",
    ),
    (
        "distill-unknown-student",
        ["distill", "run", "--student", "org/not-here", "--output", "s"],
        "HF_HUB_OFFLINE",
    ),
    ("distill-missing-teacher", ["distill", "none", "--output", "s"], "none does not exist"),
    # an unknown --config key is refused by every command, as train refuses it
    (
        "evaluate-config-typo",
        ["evaluate", "run", "--config", "poolingg.yaml"],
        "--poolingg does not apply to llmclf evaluate",
    ),
    (
        "predict-config-typo",
        ["predict", "run", "--input", "texts.csv", "--output", "o.csv", "--config", "typo.yaml"],
        "--learning-rat does not apply to llmclf predict",
    ),
    (
        "calibrate-config-typo",
        ["calibrate", "run", "--config", "typo.yaml"],
        "--learning-rat does not apply to llmclf calibrate",
    ),
    (
        "compare-config-typo",
        ["compare", "run", "run", "--output", "r", "--config", "typo.yaml"],
        "--learning-rat does not apply to llmclf compare",
    ),
    (
        "export-config-typo",
        ["export", "run", "--config", "typo.yaml"],
        "--learning-rat does not apply to llmclf export",
    ),
    (
        "serve-config-typo",
        ["serve", "run", "--config", "typo.yaml"],
        "--learning-rat does not apply to llmclf serve",
    ),
    (
        "distill-config-typo",
        ["distill", "run", "--output", "s", "--config", "poolingg.yaml"],
        "--poolingg does not apply to",
    ),
    (
        "experiment-config-typo",
        ["experiment", "grid-list.yaml", "--config", "typo.yaml"],
        "--learning-rat does not apply to llmclf experiment",
    ),
    (
        "predict-input-missing-in-config",
        ["predict", "run", "--output", "o.csv"],
        "needs --input",
    ),
    # --ray writes a folder of Parquet parts: a table name is refused before Ray starts
    (
        "predict-ray-file-output",
        ["predict", "run", "--input", "texts.csv", "--output", "preds.csv", "--ray"],
        "with --ray the output is a folder",
    ),
    # compare refusing data it cannot score leaves no report folder behind
    (
        "compare-unseen-class-leaves-nothing",
        ["compare", "run", "run2", "--data", "unseen.csv", "--output", "rep"],
        "weather",
    ),
    # serve: its options are checked before any run loads
    ("serve-missing-run", ["serve", "none"], "none does not exist"),
    ("serve-port-zero", ["serve", "run", "--port", "0"], "--port"),
    ("serve-batch-zero", ["serve", "run", "--max-batch-size", "0"], "--max-batch-size"),
    ("serve-bad-wait", ["serve", "run", "--max-wait-ms", "-1"], "--max-wait-ms"),
    ("export-unknown-format", ["export", "run", "--format", "nope"], "invalid choice"),
    ("calibrate-no-run", ["calibrate"], "RUN"),
    # long-text options belong to training: a loaded run keeps how it reads texts
    (
        "evaluate-long-text-in-config",
        ["evaluate", "run", "--config", "chunks.yaml"],
        "does not apply to llmclf evaluate",
    ),
    ("predict-long-text-flag", ["predict", "run", "--long-text", "chunks"], "unrecognized"),
    (
        "distill-chunk-stride-too-long",
        ["distill", "run", "--output", "s", "--long-text", "chunks", "--chunk-stride", "999"],
        "--chunk-stride 999 must be smaller than --max-length",
    ),
    ("serve-eval-batch-zero", ["serve", "run", "--eval-batch-size", "0"], "--eval-batch-size"),
    ("calibrate-unknown-split", ["calibrate", "run", "--split", "holdout"], "holdout"),
    (
        "compare-confidence-one",
        ["compare", "run", "run2", "--output", "r", "--confidence", "1"],
        "--confidence",
    ),
    (
        "distill-file-as-teacher",
        ["distill", "good.csv", "--output", "s"],
        "is a file, not a run folder",
    ),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("corpus")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        make_workspace(root, tiny_llama)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(workspace, monkeypatch, capsys, argv, expected):
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("llmclf") and ": error:" in line]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert snapshot(workspace) == before, "the case wrote or changed files"


def test_argparse_mistakes_read_like_llmclf_mistakes(capsys):
    """argparse's own errors (a bad choice, an unknown flag) print the same
    ``llmclf: error: ...`` form as llmclf's, with exit status 2."""
    for argv in (["train", "--pooling", "maxx", "--output", "o"], ["predict", "--nope"], []):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2
        assert [line for line in err.splitlines() if "error:" in line][0].startswith(
            "llmclf: error: "
        ), err


def test_the_corpus_is_broad():
    """Every command is covered, by more than a token case or two."""
    commands = {argv[0] for _, argv, _ in CASES}
    assert commands >= {
        "train",
        "evaluate",
        "predict",
        "calibrate",
        "compare",
        "export",
        "experiment",
        "distill",
        "serve",
    }
    assert len(CASES) >= 70
