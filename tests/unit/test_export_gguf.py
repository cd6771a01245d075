"""llmclf export --format gguf: llama.cpp's converter and quantizer on tiny head runs, and
llama.cpp (through llama-cpp-python) reproducing the run's predictions.

Needs llama-cpp-python (built from source): ``make test-gguf`` installs it and runs these;
the default run deselects them (tests/conftest.py). The refusals that need no llama.cpp
are in test_export.py."""

import json

import numpy as np
import pytest

from llmclf.cli import main
from tests.conftest import make_texts, save_tiny_llama

pytestmark = [pytest.mark.gguf, pytest.mark.slow]


@pytest.fixture(scope="module")
def gguf_runs(tmp_path_factory):
    """Tiny float32 head runs (pooled last and mean) on a 2-layer Llama with SmolLM2's real
    BPE tokenizer, which llama.cpp's converter recognises (``smollm``)."""
    import pandas as pd
    from transformers import AutoTokenizer

    from llmclf.backbone import model_source

    tokenizer = AutoTokenizer.from_pretrained(model_source("smollm2-135m"))
    folder = tmp_path_factory.mktemp("gguf")
    base = save_tiny_llama(
        folder / "base", tokenizer, seed=1, pad_token_id=tokenizer.pad_token_id or 0
    )
    texts, labels = make_texts(90, seed=4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / "d.csv", index=False)
    runs = {}
    for pooling in ("last", "mean"):
        args = ["train", "--model", str(base), "--data", str(folder / "d.csv"), "--epochs", "3"]
        args += ["--max-length", "24", "--pooling", pooling, "--dtype", "float32"]
        args += ["--learning-rate", "5e-3", "--head-learning-rate", "2e-2"]
        assert main([*args, "--output", str(folder / pooling)]) == 0
        runs[pooling] = folder / pooling
    return runs


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_llama_cpp_reproduces_a_float32_export(gguf_runs, pooling, tmp_path):
    """A float32 GGUF (--quantize none): the run's labels, logits within 1e-3, the head
    beside it, the pooling and EOS written where llama.cpp's own tools read them."""
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    from llmclf.methods.gguf import GgufClassifier
    from llmclf.runs import load_classifier
    from llmclf.runs.export import export_run

    run = gguf_runs[pooling]
    info = export_run(run, "gguf", tmp_path / "g", quantize="none")
    parity = info["parity"]
    assert parity["same_predictions"] and parity["max_abs_logit_diff"] < 1e-3
    assert info["file"] == "model-f32.gguf" and info["pooling"] == pooling
    assert info["add_eos"] == (pooling == "last")
    clf = load_classifier(run)
    head = load_file(str(tmp_path / "g" / "head.safetensors"))
    np.testing.assert_array_equal(head["weight"], clf.model_.score.weight.detach().numpy())

    exported = GgufClassifier(tmp_path / "g", batch_size=5)
    texts, _ = make_texts(25, seed=9)
    texts.append(" ".join(["bank"] * 60))  # past max_length: cut as the run cuts (EOS kept)
    assert exported.predict(texts) == clf.predict(texts)
    np.testing.assert_allclose(exported.predict_logits(texts), clf.predict_logits(texts), atol=1e-3)
    alone = np.concatenate([exported.predict_logits([t]) for t in texts[:6]])
    np.testing.assert_allclose(alone, exported.predict_logits(texts[:6]), atol=1e-4)

    fields = GGUFReader(str(tmp_path / "g" / info["file"])).fields
    assert fields["llama.pooling_type"].contents() == {"last": 3, "mean": 1}[pooling]
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    if pooling == "last":  # llama.cpp's tokenizer appends EOS as the run's does
        assert fields["tokenizer.ggml.add_eos_token"].contents() is True
        for text in texts[:5]:
            ids = exported.llama_.tokenize(text.encode(), add_bos=True, special=False)
            assert ids == exported._encode([text])[0]


def test_quantized_gguf_exports_are_checked_and_smaller(gguf_runs, tmp_path, capsys):
    import llmclf.runs.export as export

    run = gguf_runs["last"]
    sizes = {}
    for kind in ("f16", "q8_0"):
        args = ["export", str(run), "--format", "gguf", "--output", str(tmp_path / kind)]
        assert main([*args, "--quantize", kind] if kind != "f16" else args) == 0
        assert f"{kind} keeps" in capsys.readouterr().out
        info = json.loads((tmp_path / kind / "llmclf_export.json").read_text())
        assert info["quantize"] == kind and info["file"] == f"model-{kind}.gguf"
        parity = info["parity"]
        assert parity["agreement"] >= 0.99 and "macro_f1" in parity
        assert abs(parity["macro_f1"] - parity["macro_f1_pytorch"]) <= 0.01
        assert parity["texts"] == len((run / "test_predictions.jsonl").read_text().splitlines())
        assert "head kept float32" in info["recipe"]
        sizes[kind] = info["bytes"]
    assert sizes["q8_0"] < sizes["f16"]
    # q4_k_m on a model 64 wide: kept here whatever it keeps; its figures are llama.cpp's
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "QUANTIZED_AGREEMENT", 0.0)
        patch.setattr(export, "QUANTIZED_F1_DROP", 1.0)
        info = export.export_run(run, "gguf", tmp_path / "q4", quantize="q4_k_m")
    assert info["file"] == "model-q4_k_m.gguf" and info["bytes"] < sizes["q8_0"]
    # rows of 64 are no multiple of the K-quants' 256: llama.cpp's fallback, reported
    assert info["fallback_tensors"].endswith("of 20")
    from llmclf.methods.gguf import GgufClassifier
    from llmclf.runs import load_classifier

    texts = export.check_examples(run, "q4_k_m").texts
    kept = np.mean(
        np.array(GgufClassifier(tmp_path / "q4").predict(texts))
        == np.array(load_classifier(run).predict(texts))
    )
    assert info["parity"]["agreement"] == pytest.approx(kept)
    with pytest.MonkeyPatch.context() as patch:  # a model that keeps too few labels
        patch.setattr(export, "QUANTIZED_AGREEMENT", 1.01)
        args = ["export", str(run), "--format", "gguf", "--output", str(tmp_path / "no")]
        assert main(args) == 2
    err = capsys.readouterr().err
    assert "the GGUF model (f16) keeps" in err and "needed: 101%" in err
    assert not (tmp_path / "no").exists() and not list(tmp_path.glob(".no*"))


def test_a_gguf_export_is_a_run_for_predict_evaluate_compare_and_serve(gguf_runs, tmp_path, capsys):
    import asyncio

    import pandas as pd

    from llmclf.runs import load_classifier
    from llmclf.serve.app import load_runs
    from llmclf.serve.protocol import ClassifyRequest
    from llmclf.serve.serving import ServedModels, ServingClassify

    run = gguf_runs["mean"]
    export = tmp_path / "export"
    args = ["export", str(run), "--format", "gguf", "--quantize", "none"]
    assert main([*args, "--output", str(export)]) == 0
    texts, labels = make_texts(20, seed=11)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "in.csv", index=False)
    expected = load_classifier(run).predict(texts)
    for folder, name in ((run, "run.csv"), (export, "export.csv")):
        args = ["predict", str(folder), "--input", str(tmp_path / "in.csv")]
        assert main([*args, "--output", str(tmp_path / name)]) == 0
    ours, theirs = (pd.read_csv(tmp_path / n) for n in ("run.csv", "export.csv"))
    assert list(theirs["prediction"]) == expected == list(ours["prediction"])
    np.testing.assert_allclose(
        theirs.filter(like="proba_").to_numpy(), ours.filter(like="proba_").to_numpy(), atol=1e-3
    )
    capsys.readouterr()
    args = ["evaluate", str(export), "--data", str(tmp_path / "in.csv")]
    assert main([*args, "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["method"] == "gguf" and metrics["n"] == 20
    assert metrics["accuracy"] == np.mean(np.array(expected) == np.array(labels))
    args = ["compare", str(run), str(export), "--data", str(tmp_path / "in.csv")]
    assert main([*args, "--output", str(tmp_path / "report")]) == 0
    assert len(json.loads((tmp_path / "report" / "report.json").read_text())["runs"]) == 2
    served = load_runs({"x": export})
    models = ServedModels({r.name: r for r in served}, 8, 2000)
    body = asyncio.run(
        ServingClassify(models).classify(ClassifyRequest(model="x", input=texts[:3]))
    )
    assert [row.label for row in body.data] == expected[:3]
    capsys.readouterr()
    args = ["predict", str(export), "--input", str(tmp_path / "in.csv"), "--output"]
    assert main([*args, str(tmp_path / "a.csv"), "--int8"]) == 2
    assert "export the run with --quantize q8_0 instead" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "b.csv"), "--device", "cuda"]) == 2
    assert "is a GGUF export, run by llama.cpp on the CPU" in capsys.readouterr().err


def test_a_backbone_the_converter_cannot_read_is_refused_in_one_line(tiny_llama, tmp_path, capsys):
    """The tiny WordLevel tokenizer is no BPE or SentencePiece vocabulary llama.cpp has."""
    import pandas as pd

    texts, labels = make_texts(30, seed=2)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "d.csv", index=False)
    args = ["train", "--model", tiny_llama, "--data", str(tmp_path / "d.csv"), "--epochs", "1"]
    assert main([*args, "--max-length", "16", "--output", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--format", "gguf"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("llmclf: error: ")
    assert "llama.cpp's converter refused the run's backbone" in errors[0]
    assert "BPE pre-tokenizer was not recognized" in errors[0]
    assert errors[0].endswith("export it with --format onnx, which takes every head run")
    assert not (tmp_path / "run" / "gguf").exists()


def test_the_gguf_script_gives_the_run_labels_without_torch(gguf_runs, tmp_path_factory):
    """examples/classify_gguf.py in a venv holding llama-cpp-python, tokenizers,
    safetensors and numpy only (llama-cpp-python from make's per-CPU wheel folder,
    ``$LLMCLF_WHEELS``, else built by pip)."""
    import os
    import subprocess

    from llmclf.runs import load_classifier
    from tests.unit.test_export_runtimes import ROOT, bare_venv

    folder = tmp_path_factory.mktemp("bare")
    wheels = os.environ.get("LLMCLF_WHEELS")
    links = ["--find-links", str(ROOT / wheels)] if wheels else []
    packages = [*links, "llama-cpp-python", "tokenizers", "safetensors", "numpy"]
    python = bare_venv(folder / "venv", packages)
    for absent in ("torch", "transformers", "llmclf"):
        probe = subprocess.run([str(python), "-c", f"import {absent}"], capture_output=True)
        assert probe.returncode != 0, f"{absent} is importable in the bare venv"
    asked, _ = make_texts(12, seed=21)
    asked.append(" ".join(["goal"] * 50))  # past max_length
    for pooling in ("last", "mean"):
        export = folder / pooling
        args = ["export", str(gguf_runs[pooling]), "--format", "gguf", "--quantize", "none"]
        assert main([*args, "--output", str(export)]) == 0
        out = subprocess.run(
            [str(python), str(ROOT / "examples" / "classify_gguf.py"), str(export), *asked],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert out.stdout.splitlines() == load_classifier(gguf_runs[pooling]).predict(asked)
