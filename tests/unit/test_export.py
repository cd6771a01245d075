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


def test_an_encoder_run_exports_quantized_too(encoder_run, tmp_path):
    info = export_onnx(encoder_run[0], tmp_path / "int8", quantize="int8")
    assert info["file"] == "onnx/model_int8.onnx" and info["parity"]["agreement"] >= 0.99
    exported = OnnxClassifier(tmp_path / "int8")
    assert exported.quantize_ == "int8"
    texts = [" ".join(["goal"] * 5), "bank stock"]
    assert np.allclose(exported.predict_proba(texts).sum(axis=1), 1.0)


def test_cli_export_refuses_to_overwrite_and_non_encoder_runs(encoder_run, tmp_path, capsys):
    import pandas as pd

    run, _ = encoder_run
    target = tmp_path / "onnx"
    assert main(["export", str(run), "--format", "onnx", "--output", str(target)]) == 0
    assert "same predictions" in capsys.readouterr().out
    info = json.loads((target / "llmclf_export.json").read_text())
    assert info["max_length"] == 32 and info["opset"] == 18
    assert info["file"] == "onnx/model.onnx" and (target / "onnx" / "model.onnx").is_file()
    assert {"tokenizer.json", "labels.json", "config.json", "config.yaml"} <= {
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
    err = capsys.readouterr().err
    assert "is a tfidf run: ONNX export is for head, encoder and setfit runs" in err
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


# ---------------------------------------------------------------------------------------
# ONNX exports of head runs
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pooled_runs(tiny_llama, tmp_path_factory):
    """A tiny float32 head run per pooling llmclf has."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("pooled")
    texts, labels = make_texts(60, seed=4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / "d.csv", index=False)
    runs = {}
    for pooling in ("last", "mean", "max", "token"):
        args = ["train", "--model", tiny_llama, "--data", str(folder / "d.csv"), "--epochs", "2"]
        args += ["--max-length", "24", "--pooling", pooling, "--dtype", "float32"]
        assert main([*args, "--output", str(folder / pooling)]) == 0
        runs[pooling] = folder / pooling
    return runs


def _padded(ids: list[list[int]], pad: int, side: str) -> dict:
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        input_ids[row, cols], mask[row, cols] = seq, 1
    return {"input_ids": input_ids, "attention_mask": mask}


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "token"])
def test_a_head_run_exports_to_onnx_with_its_pooling_inside_the_graph(pooled_runs, pooling):
    """ONNX Runtime gives the run's labels and logits, and the pooling reads the attention
    mask: left and right padding give the same logits."""
    from llmclf.runs import load_classifier
    from llmclf.runs.export import export_run

    run = pooled_runs[pooling]
    info = export_run(run, "onnx")
    assert info["parity"]["same_predictions"] and info["parity"]["max_abs_logit_diff"] < 1e-4
    assert info["file"] == "onnx/model.onnx" and info["quantize"] == "none"
    config = json.loads((run / "onnx" / "config.json").read_text())
    assert config["id2label"] == {"0": "money", "1": "sport", "2": "tech"}
    exported = OnnxClassifier(run / "onnx", batch_size=5)
    clf = load_classifier(run)
    texts, _ = make_texts(25, seed=9)
    texts.append(" ".join(["bank"] * 60))  # past max_length: cut as the run cuts (EOS kept)
    assert exported.predict(texts) == clf.predict(texts)
    np.testing.assert_allclose(exported.predict_logits(texts), clf.predict_logits(texts), atol=1e-4)
    ids = exported._encode(texts[:6])
    if pooling == "last":  # the run's tokenizer appends EOS, read as the last token
        assert all(seq[-1] == clf.tokenizer_.eos_token_id for seq in ids)
    right, left = (_padded(ids, exported.pad_id_, side) for side in ("right", "left"))
    run_graph = lambda feed: exported.session_.run(["logits"], feed)[0]  # noqa: E731
    np.testing.assert_allclose(run_graph(left), run_graph(right), atol=1e-5)


def test_quantized_onnx_exports_are_checked_on_the_run_test_set(pooled_runs, tmp_path, capsys):
    import llmclf.runs.export as export
    from llmclf.runs import load_classifier

    run = pooled_runs["last"]
    full = export.export_run(run, "onnx", tmp_path / "full")
    info = export.export_run(run, "onnx", tmp_path / "int8", quantize="int8")
    parity = info["parity"]
    assert info["file"] == "onnx/model_int8.onnx" and info["quantize"] == "int8"
    assert not (tmp_path / "int8" / "onnx" / "model.onnx").exists()  # one variant: the checked one
    assert parity["agreement"] >= 0.99 and "macro_f1" in parity and "macro_f1_pytorch" in parity
    assert abs(parity["macro_f1"] - parity["macro_f1_pytorch"]) <= 0.01
    assert parity["texts"] == len((run / "test_predictions.jsonl").read_text().splitlines())
    assert "head kept float32" in info["recipe"] and info["kept_float32"]
    assert info["bytes"] < full["bytes"]
    # 4 bits on a model 64 wide: kept here whatever it keeps (the tiny model is not what
    # the check is for), and the figures it reports are the ones ONNX Runtime gives
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "QUANTIZED_AGREEMENT", 0.0)
        patch.setattr(export, "QUANTIZED_F1_DROP", 1.0)
        args = ["export", str(run), "--quantize", "int4", "--output", str(tmp_path / "q4")]
        assert main(args) == 0
    assert "int4 keeps" in capsys.readouterr().out
    q4 = json.loads((tmp_path / "q4" / "llmclf_export.json").read_text())
    assert q4["file"] == "onnx/model_q4.onnx" and q4["bytes"] < info["bytes"]
    texts = export.check_examples(run, "int4").texts
    kept = np.mean(
        np.array(OnnxClassifier(tmp_path / "q4").predict(texts))
        == np.array(load_classifier(run).predict(texts))
    )
    assert q4["parity"]["agreement"] == pytest.approx(kept)
    with pytest.MonkeyPatch.context() as patch:  # a model that keeps too few labels
        patch.setattr(export, "QUANTIZED_AGREEMENT", 1.01)
        args = ["export", str(run), "--quantize", "int8", "--output", str(tmp_path / "no")]
        assert main(args) == 2
    err = capsys.readouterr().err
    assert "keeps 100.0% of the run's labels" in err and "needed: 101%" in err
    assert not (tmp_path / "no").exists() and not list(tmp_path.glob(".no*"))


def test_an_onnx_export_is_a_run_for_predict_evaluate_and_serve(pooled_runs, tmp_path, capsys):
    import asyncio

    import pandas as pd

    from llmclf.runs import load_classifier
    from llmclf.serve.app import load_runs
    from llmclf.serve.protocol import ClassifyRequest
    from llmclf.serve.serving import ServedModels, ServingClassify

    run = pooled_runs["mean"]
    export = tmp_path / "export"
    assert main(["export", str(run), "--output", str(export)]) == 0
    texts, labels = make_texts(20, seed=11)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "in.csv", index=False)
    expected = load_classifier(run).predict(texts)
    for folder, name in ((run, "run.csv"), (export, "export.csv")):
        args = ["predict", str(folder), "--input", str(tmp_path / "in.csv")]
        assert main([*args, "--output", str(tmp_path / name)]) == 0
    ours, theirs = (pd.read_csv(tmp_path / n) for n in ("run.csv", "export.csv"))
    assert list(theirs["prediction"]) == expected == list(ours["prediction"])
    np.testing.assert_allclose(
        theirs.filter(like="proba_").to_numpy(), ours.filter(like="proba_").to_numpy(), atol=1e-4
    )
    capsys.readouterr()
    args = ["evaluate", str(export), "--data", str(tmp_path / "in.csv")]
    assert main([*args, "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["method"] == "onnx" and metrics["n"] == 20
    assert metrics["accuracy"] == np.mean(np.array(expected) == np.array(labels))

    assert main(["compare", str(run), str(export), "--output", str(tmp_path / "report")]) == 2
    assert "is an export: it stores no test predictions of its own; pass --data" in (
        capsys.readouterr().err
    )
    args = ["compare", str(run), str(export), "--data", str(tmp_path / "in.csv")]
    assert main([*args, "--output", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["runs"] and len(report["runs"]) == 2
    served = load_runs({"x": export})
    models = ServedModels({r.name: r for r in served}, 8, 2000)
    body = asyncio.run(
        ServingClassify(models).classify(ClassifyRequest(model="x", input=texts[:3]))
    )
    assert [row.label for row in body.data] == expected[:3]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quantize", "q8_0"], "--quantize q8_0 does not apply to --format onnx: it takes none, int8, int4"),
        (["--format", "merged", "--quantize", "int8"], "--quantize int8 does not apply to --format merged"),
    ],
)  # fmt: skip
def test_a_quantization_the_format_lacks_is_refused(pooled_runs, args, message, capsys):
    assert main(["export", str(pooled_runs["last"]), *args]) == 2
    assert message in capsys.readouterr().err


def test_an_export_is_checked_on_the_texts_a_user_gives(pooled_runs, tmp_path, capsys):
    import pandas as pd

    texts, labels = make_texts(30, seed=13)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "mine.csv", index=False)
    args = ["export", str(pooled_runs["last"]), "--quantize", "int8"]
    check = ["--check-data", str(tmp_path / "mine.csv")]
    assert main([*args, *check, "--output", str(tmp_path / "e")]) == 0
    parity = json.loads((tmp_path / "e" / "llmclf_export.json").read_text())["parity"]
    assert parity["texts"] == 30 and "macro_f1" in parity
    pd.DataFrame({"text": texts[:3], "label": ["money", "sport", "weather"]}).to_csv(
        tmp_path / "odd.csv", index=False
    )
    capsys.readouterr()
    check = ["--check-data", str(tmp_path / "odd.csv")]
    assert main([*args, *check, "--output", str(tmp_path / "f")]) == 2
    assert "weather" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_an_onnx_export_refuses_what_only_a_pytorch_run_does(pooled_runs, tmp_path, capsys):
    export = tmp_path / "e"
    assert main(["export", str(pooled_runs["max"]), "--output", str(export)]) == 0
    capsys.readouterr()
    assert main(["export", str(export), "--output", str(tmp_path / "again")]) == 2
    assert "is an export already: export the run it came from" in capsys.readouterr().err
    (tmp_path / "in.csv").write_text("text\nbank stock\n")
    args = ["predict", str(export), "--input", str(tmp_path / "in.csv"), "--output"]
    assert main([*args, str(tmp_path / "a.csv"), "--int8"]) == 2
    assert "export the run with --quantize int8 instead" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "b.csv"), "--device", "cuda"]) == 2
    assert "is an ONNX export, run by ONNX Runtime on the CPU" in capsys.readouterr().err
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()


# ---------------------------------------------------------------------------------------
# --format gguf: what is refused before llama.cpp is needed (the export itself:
# test_export_gguf.py, make test-gguf)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run, args, message",
    [
        ("max", [], "pools with --pooling max: llama.cpp pools a causal LM's hidden states by the last token or the mean only"),
        ("last", ["--quantize", "int8"], "--quantize int8 does not apply to --format gguf: it takes f16, none, q8_0, q4_k_m"),
    ],
)  # fmt: skip
def test_gguf_refuses_what_llama_cpp_cannot_express(pooled_runs, run, args, message, capsys):
    assert main(["export", str(pooled_runs[run]), "--format", "gguf", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (pooled_runs[run] / "gguf").exists()


def test_gguf_refuses_an_encoder_run_and_says_what_to_install(
    encoder_run, pooled_runs, monkeypatch, capsys
):
    import sys

    run, _ = encoder_run
    assert main(["export", str(run), "--format", "gguf"]) == 2
    assert (
        "is an encoder run: GGUF export is for head runs, or export it with --format onnx or "
        "merged" in capsys.readouterr().err
    )
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as where it is not installed
    assert main(["export", str(pooled_runs["last"]), "--format", "gguf"]) == 2
    err = capsys.readouterr().err
    assert "--format gguf needs llama-cpp-python" in err and "pip install 'llmclf[gguf]'" in err


def test_the_converter_is_taken_from_llama_cpp_python_source(tmp_path, monkeypatch):
    """Only the converter's parts come out of the source archive, under the cache."""
    import io
    import tarfile

    from llmclf import gguf_export
    from llmclf.errors import LlmclfError

    archive = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in (
            "vendor/llama.cpp/convert_hf_to_gguf.py",
            "vendor/llama.cpp/conversion/llama.py",
            "vendor/llama.cpp/gguf-py/gguf/__init__.py",
            "vendor/llama.cpp/ggml/src/big.c",
            "llama_cpp/llama.py",
        ):
            data = name.encode()
            member = tarfile.TarInfo(f"llama_cpp_python-9.9.9/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    gguf_export._extract_converter(archive, tmp_path / "out")
    found = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.*")
    )
    assert found == ["conversion/llama.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "llmclf" / "llama.cpp-9.9.9"
    cached.mkdir(parents=True)
    (cached / "convert_hf_to_gguf.py").write_text("")
    assert gguf_export.converter_dir("9.9.9") == cached  # fetched once, then reused
    monkeypatch.setenv("LLMCLF_LLAMA_CPP", str(tmp_path / "nowhere"))
    with pytest.raises(
        LlmclfError, match="holds no convert_hf_to_gguf.py: point it at a llama.cpp"
    ):
        gguf_export.converter_dir("9.9.9")
