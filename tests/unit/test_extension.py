"""The extension point: a method defined in this file alone, registered, goes through every
command (train, evaluate, predict, serve; export refuses it in one line), and what a
method declares (long-text modes, int8, exporters) is what the core reads.

The method is a nearest-centroid classifier over hashed word counts: small enough to read
in one screen, a real ``ClassifierBase`` subclass with its own ``MethodConfig`` and a
section of its own options.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmclf.config import POSITIVE, MethodConfig, option, section, validate
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.long_text import LongTextConfig
from llmclf.methods.base import ClassifierBase
from llmclf.methods.registry import (
    method_class,
    method_classes,
    register_method,
    section_classes,
    unregister_method,
)
from llmclf.run_folder import atomic_path
from tests.conftest import make_texts

CENTROIDS_FILE = "centroids.npy"


@dataclass
class CentroidConfig:
    """Nearest class centroid over hashed word counts."""

    buckets: int = option(256, "hashed word-count features of a text", bound=POSITIVE)
    metric: str = option(
        "cosine",
        "how a text is compared with each class centroid",
        choices=("cosine", "euclidean"),
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class CentroidClassifierConfig(MethodConfig):
    """Every option of ``CentroidClassifier``: one section."""

    centroid: CentroidConfig = section(CentroidConfig)


class CentroidClassifier(ClassifierBase):
    """Each class is the mean of its texts' normalised hashed word counts; a text's logits
    are its similarity to each class mean. Declares no long text, no int8, no exporter."""

    method = "centroid"
    config_class = CentroidClassifierConfig

    def _features(self, texts: list[str]) -> np.ndarray:
        buckets = self.config_.centroid.buckets
        counts = np.zeros((len(texts), buckets))
        for row, text in enumerate(texts):
            for word in text.lower().split():  # md5, not hash(): the same in every process
                counts[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % buckets] += 1
        return counts / np.maximum(np.linalg.norm(counts, axis=1, keepdims=True), 1e-12)

    def _fit(self, texts, labels, eval_texts, eval_labels, schema: LabelSchema, output_dir):
        targets = schema.encode(labels)
        members = targets if schema.multi_label else np.eye(schema.num_classes)[targets]
        sums = members.T @ self._features(texts)
        self.centroids_ = sums / np.maximum(members.sum(axis=0), 1)[:, None]

    def _logits(self, texts: list[str]) -> np.ndarray:
        features = self._features(texts)
        if self.config_.centroid.metric == "cosine":
            norms = np.maximum(np.linalg.norm(self.centroids_, axis=1), 1e-12)
            return (10 * features @ self.centroids_.T / norms).astype(np.float32)
        gaps = features[:, None, :] - self.centroids_[None, :, :]
        return (-(gaps**2).sum(-1)).astype(np.float32)

    def input_tokens(self, texts: list[str]) -> list[int]:
        return [len(text.split()) for text in texts]  # words: it reads every one

    def _save_model(self, folder: Path) -> None:
        with atomic_path(folder / CENTROIDS_FILE) as partial, open(partial, "wb") as handle:
            np.save(handle, self.centroids_)

    def _load_model(self, folder: Path) -> None:
        self.centroids_ = np.load(folder / CENTROIDS_FILE)

    def _count_parameters(self) -> tuple[int, int]:
        return self.centroids_.size, self.centroids_.size


@pytest.fixture
def centroid():
    """The centroid method, registered for one test and removed after it."""
    register_method(CentroidClassifier)
    yield CentroidClassifier
    unregister_method("centroid")


@pytest.fixture
def data(tmp_path) -> Path:
    texts, labels = make_texts(90, seed=3)
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def test_a_method_defined_in_a_test_file_goes_through_every_command(
    centroid, data, tmp_path, capsys
):
    from fastapi.testclient import TestClient

    from llmclf.cli import main
    from llmclf.runs import load_classifier
    from llmclf.serve import create_app

    run = tmp_path / "run"
    # train: its section's flags are train flags, validated like any other
    args = ["train", "--method", "centroid", "--data", str(data), "--output", str(run)]
    with pytest.raises(SystemExit) as refused:  # argparse knows its choices
        main([*args, "--metric", "manhattan"])
    assert refused.value.code == 2 and "--metric" in capsys.readouterr().err
    assert main([*args, "--buckets", "128"]) == 0
    capsys.readouterr()
    clf = load_classifier(run)
    assert isinstance(clf, CentroidClassifier) and clf.config_.centroid.buckets == 128
    texts, labels = make_texts(30, seed=11)
    assert clf.score(texts, labels) > 0.8

    # evaluate
    assert main(["evaluate", str(run), "--output", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()

    # predict
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    args = ["predict", str(run), "--input", str(tmp_path / "in.csv")]
    assert main([*args, "--output", str(tmp_path / "out.csv")]) == 0
    assert pd.read_csv(tmp_path / "out.csv")["prediction"].tolist() == clf.predict(texts)

    # serve: one request through the app
    with TestClient(create_app({"toy": run})) as client:
        response = client.post("/v1/classify", json={"model": "toy", "input": texts[:3]})
    assert response.status_code == 200, response.text
    probs = np.array([row["probs"] for row in response.json()["data"]])
    np.testing.assert_allclose(probs, clf.predict_proba(texts[:3]), atol=1e-5)

    # export: it declares no exporter, so every format refuses it in one line
    capsys.readouterr()
    assert main(["export", str(run), "--format", "merged"]) == 2
    err = capsys.readouterr().err
    assert "is a centroid run: the merged export is for head and encoder runs" in err
    assert "centroid runs export to no format" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (run / "merged").exists()


def test_the_registry_is_live_and_restored(centroid):
    assert method_class("centroid") is CentroidClassifier
    assert CentroidConfig in section_classes()
    assert register_method(CentroidClassifier) is CentroidClassifier  # again: nothing changes
    unregister_method("centroid")
    assert "centroid" not in method_classes() and CentroidConfig not in section_classes()
    with pytest.raises(LlmclfError, match="--method must be one of head, instruct, encoder"):
        method_class("centroid")


def test_a_flag_two_methods_mean_differently_is_refused(centroid):
    @dataclass
    class ClashConfig:
        """A section whose --metric takes other values than the centroid's."""

        metric: str = option("l1", "distance", choices=("l1", "l2"))

        def __post_init__(self) -> None:
            validate(self)

    @dataclass
    class ClashClassifierConfig(MethodConfig):
        clash: ClashConfig = section(ClashConfig)

    class ClashClassifier(CentroidClassifier):
        method = "clash"
        config_class = ClashClassifierConfig

    with pytest.raises(LlmclfError) as refused:
        register_method(ClashClassifier)
    message = str(refused.value)
    assert "--method clash cannot be registered: its option --metric" in message
    assert "l1, l2" in message and "--method centroid" in message and "cosine, euclidean" in message
    assert "clash" not in method_classes()

    # a built-in's option with another type: --max-length is an int everywhere
    @dataclass
    class TypedConfig:
        """--max-length as words."""

        max_length: str = option("long", "how long")

    @dataclass
    class TypedClassifierConfig(MethodConfig):
        typed: TypedConfig = section(TypedConfig)

    class TypedClassifier(CentroidClassifier):
        method = "typed"
        config_class = TypedClassifierConfig

    with pytest.raises(LlmclfError, match=r"--max-length \(str\) means something else in "):
        register_method(TypedClassifier)

    class Taken(CentroidClassifier):
        method = "head"

    with pytest.raises(LlmclfError, match="--method head is taken by HeadClassifier"):
        register_method(Taken)


# ---------------------------------------------------------------------------------------
# Declarations the core reads
# ---------------------------------------------------------------------------------------


@dataclass
class WindowedConfig(MethodConfig):
    """The centroid with a --long-text option."""

    centroid: CentroidConfig = section(CentroidConfig)
    long_text: LongTextConfig = section(LongTextConfig)


class Windowed(CentroidClassifier):
    """Reads chunks, quantizes to int8: its declarations say so."""

    method = "windowed"
    config_class = WindowedConfig
    long_text_modes = ("truncate", "chunks")
    supports_int8 = True


class Truncating(CentroidClassifier):
    method = "truncating"
    config_class = WindowedConfig  # has --long-text, declares only the default truncate


@pytest.fixture
def declared(centroid):
    register_method(Windowed)
    register_method(Truncating)
    yield
    unregister_method("windowed")
    unregister_method("truncating")


def test_long_text_modes_are_read_from_the_method(declared):
    assert Windowed(long_text="chunks").resolve_config().long_text.chunked
    with pytest.raises(LlmclfError) as refused:
        Truncating(long_text="chunks").resolve_config()
    assert str(refused.value) == (
        "--long-text chunks applies to --method head, encoder and windowed, not truncating "
        "(it reads truncate)"
    )
    with pytest.raises(LlmclfError, match="head-tail applies to --method head, instruct and"):
        Windowed(long_text="head-tail").resolve_config()


def test_int8_is_refused_for_a_method_that_does_not_declare_it(declared):
    texts, labels = make_texts(12)
    with pytest.raises(LlmclfError) as refused:
        CentroidClassifier().fit(texts, labels).quantize_int8()
    assert str(refused.value) == "--int8 applies to head, instruct and windowed runs, not centroid"


def test_predict_time_options_come_from_the_config_marks():
    from llmclf.methods.instruct.model import InstructClassifier

    assert "predict_mode" in InstructClassifier.predict_time_options()
    assert "epochs" not in InstructClassifier.predict_time_options()
    assert CentroidClassifier.predict_time_options() == set()
    assert all(
        f.metadata["predict_time"]
        for f in dataclasses.fields(InstructClassifier.config_class.sections()["instruct"])
        if f.name in InstructClassifier.predict_time_options()
    )


# ---------------------------------------------------------------------------------------
# An exporter defined here too
# ---------------------------------------------------------------------------------------


class Exportable(CentroidClassifier):
    """The centroid method, with a format of its own."""

    method = "exportable"
    exporters = ("centroids",)


def _centroids_refusal(clf) -> str | None:
    if clf.config_.centroid.metric != "cosine":
        return "compares with --metric euclidean: the centroids format stores cosine centroids"
    return None


def _write_centroids(clf, folder: Path, options) -> dict:
    np.save(folder / CENTROIDS_FILE, clf.centroids_)
    return {"buckets": clf.config_.centroid.buckets}


def _check_centroids(clf, folder: Path, examples) -> dict:
    same = np.array_equal(np.load(folder / CENTROIDS_FILE), clf.centroids_)
    if not same:
        raise LlmclfError("the written centroids differ from the run's: not exported")
    return {"texts": len(examples.texts), "same_predictions": True, "max_abs_logit_diff": 0.0}


@pytest.fixture
def exporter(centroid):
    from llmclf.runs.export import Exporter, register_exporter, unregister_exporter

    register_method(Exportable)
    register_exporter(
        Exporter(
            name="centroids",
            title="the centroids export",
            help="the class centroids as one .npy array",
            folder="centroids",
            refusal=_centroids_refusal,
            write=_write_centroids,
            check=_check_centroids,
        )
    )
    yield
    unregister_exporter("centroids")
    unregister_method("exportable")


def test_an_exporter_registered_anywhere_is_a_format(exporter, tmp_path, capsys):
    from llmclf.cli import main
    from llmclf.runs.export import ExportOptions, export_run

    texts, labels = make_texts(30)
    run = Exportable(buckets=64).fit(texts, labels).save(tmp_path / "run")
    assert main(["export", str(run), "--format", "centroids"]) == 0
    folder = run / "centroids"
    assert {"centroids.npy", "labels.json", "calibration.json", "llmclf_export.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert ExportOptions(run=str(run), format="centroids").format == "centroids"

    # the exporter refuses a run it cannot express, with its reason, before anything loads
    other = Exportable(metric="euclidean").fit(texts, labels).save(tmp_path / "euclidean")
    capsys.readouterr()
    assert main(["export", str(other), "--format", "centroids"]) == 2
    err = capsys.readouterr().err
    assert f"{other} compares with --metric euclidean: the centroids format stores" in err
    assert not (other / "centroids").exists()

    # a format the method does not declare: the line names what it does export to
    with pytest.raises(LlmclfError) as refused:
        export_run(run, "onnx")
    assert str(refused.value).startswith(
        f"{run} is an exportable run: ONNX export is for head, encoder and setfit runs"
    )
    assert str(refused.value).endswith("or export it with --format centroids")
    with pytest.raises(LlmclfError, match="--format must be one of onnx, gguf, merged, centroids"):
        export_run(run, "tflite")
