import json

import numpy as np
import pytest

from llmclf.cli import main
from llmclf.methods.encoder import EncoderClassifier
from llmclf.methods.onnx import OnnxClassifier
from llmclf.runs.export import export_onnx
from tests.conftest import make_texts


@pytest.fixture(scope="module")
def encoder_run(tiny_bert, tmp_path_factory):
    texts, labels = make_texts(60)
    clf = EncoderClassifier(
        tiny_bert, progress=False, epochs=2, max_length=32, learning_rate=5e-3, batch_size=8
    ).fit(texts, labels)
    return clf.save(tmp_path_factory.mktemp("runs") / "encoder"), clf


def test_onnx_runtime_gives_the_same_predictions_as_pytorch(encoder_run):
    run, clf = encoder_run
    info = export_onnx(run)
    assert info["parity"]["same_predictions"] and info["parity"]["max_abs_logit_diff"] < 1e-4
    exported = OnnxClassifier(run / "onnx", batch_size=5)
    texts, _ = make_texts(40, seed=7)
    texts.append(" ".join(["bank"] * 100))  # longer than max_length: truncated the same way
    assert exported.predict(texts) == clf.predict(texts)
    assert np.allclose(exported.predict_proba(texts), clf.predict_proba(texts), atol=1e-5)
    assert exported.predict(texts[0]) == clf.predict(texts[0])
    assert list(exported.classes_) == list(clf.classes_)


def test_cli_export_refuses_to_overwrite_and_non_encoder_runs(encoder_run, tmp_path, capsys):
    import pandas as pd

    run, _ = encoder_run
    target = tmp_path / "onnx"
    assert main(["export", str(run), "--format", "onnx", "--output", str(target)]) == 0
    assert "same predictions" in capsys.readouterr().out
    info = json.loads((target / "llmclf_export.json").read_text())
    assert info["max_length"] == 32 and info["opset"] == 18
    assert {"model.onnx", "tokenizer.json", "labels.json", "config.json"} <= {
        p.name for p in target.iterdir()
    }
    assert main(["export", str(run), "--output", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err

    texts, labels = make_texts(30)
    data = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
    tfidf = tmp_path / "tfidf"
    assert main(["train", "--method", "tfidf", "--data", str(data), "--output", str(tfidf)]) == 0
    assert main(["export", str(tfidf)]) == 2
    assert "is a tfidf run: ONNX export is for encoder runs" in capsys.readouterr().err
    assert not (tfidf / "onnx").exists() and not (tfidf / ".onnx.partial").exists()


@pytest.fixture(scope="module")
def head_run(tiny_llama, tmp_path_factory):
    import pandas as pd

    folder = tmp_path_factory.mktemp("merged")
    texts, labels = make_texts(60, seed=4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / "d.csv", index=False)
    args = ["train", "--model", tiny_llama, "--data", str(folder / "d.csv"), "--epochs", "2"]
    assert main([*args, "--max-length", "24", "--output", str(folder / "run")]) == 0
    return folder / "run"


def test_merged_export_is_a_plain_transformers_classifier(head_run, tmp_path):
    """AutoModelForSequenceClassification and pipeline() on the merged folder give
    llmclf's logits and labels, with no PEFT and no llmclf in the loop."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from llmclf.runs import load_classifier
    from llmclf.runs.export import export_merged

    info = export_merged(head_run, tmp_path / "merged")
    assert info["parity"]["same_predictions"]
    folder = tmp_path / "merged"
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "money", "1": "sport", "2": "tech"}
    assert config["pad_token_id"] is not None
    assert not (folder / "adapter_config.json").exists()
    texts, _ = make_texts(12, seed=8)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        plain = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    clf = load_classifier(head_run, dtype="float32")
    np.testing.assert_allclose(plain, clf.predict_logits(texts), atol=1e-4)
    classify = pipeline("text-classification", model=str(folder), device="cpu")
    assert [answer["label"] for answer in classify(texts)] == clf.predict(texts)


def test_merged_export_refuses_what_transformers_cannot_reproduce(head_run, tmp_path, capsys):
    import shutil

    mean = tmp_path / "mean"
    shutil.copytree(head_run, mean)
    config = (mean / "config.yaml").read_text().replace("pooling: last", "pooling: mean")
    (mean / "config.yaml").write_text(config)
    assert main(["export", str(mean), "--format", "merged"]) == 2
    assert "only --pooling last runs" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    args = ["export", str(head_run), "--format", "merged", "--output", str(tmp_path / "taken")]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken" / "x").read_text() == "keep"
