"""An export runs where llmclf is not: examples/classify_onnx.py in a fresh venv that
holds onnxruntime, tokenizers and numpy only (no torch, no transformers, no llmclf)."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pandas as pd
import pytest

from llmclf.cli import main
from llmclf.runs import load_classifier
from tests.conftest import make_texts

# a venv and a pip install from the package registry: make test runs it, test-fast does not
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = {"onnx": ["onnxruntime", "tokenizers", "numpy"]}


def bare_venv(folder: Path, packages: list[str]) -> Path:
    """A venv holding ``packages`` only; its python."""
    venv.EnvBuilder(with_pip=True).create(folder)
    python = folder / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*install, *packages], check=True, timeout=600)
    return python


@pytest.fixture(scope="module")
def onnx_python(tmp_path_factory) -> Path:
    python = bare_venv(tmp_path_factory.mktemp("bare") / "venv", RUNTIME_PACKAGES["onnx"])
    for absent in ("torch", "transformers", "llmclf"):
        probe = subprocess.run([str(python), "-c", f"import {absent}"], capture_output=True)
        assert probe.returncode != 0, f"{absent} is importable in the bare venv"
    return python


@pytest.mark.parametrize("pooling, quantize", [("last", "int8"), ("mean", "none")])
def test_the_onnx_script_gives_the_run_labels_without_torch(
    onnx_python, tiny_llama, tmp_path, pooling, quantize
):
    texts, labels = make_texts(60, seed=4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "d.csv", index=False)
    args = ["train", "--model", tiny_llama, "--data", str(tmp_path / "d.csv"), "--epochs", "2"]
    args += ["--max-length", "24", "--pooling", pooling, "--dtype", "float32"]
    assert main([*args, "--output", str(tmp_path / "run")]) == 0
    export = ["export", str(tmp_path / "run"), "--quantize", quantize]
    assert main([*export, "--output", str(tmp_path / "export")]) == 0
    asked, _ = make_texts(12, seed=21)
    asked.append(" ".join(["goal"] * 50))  # past max_length
    script = ROOT / "examples" / "classify_onnx.py"
    out = subprocess.run(
        [str(onnx_python), str(script), str(tmp_path / "export"), *asked],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    run = load_classifier(tmp_path / "run")
    got = out.stdout.splitlines()
    expected = run.predict(asked)
    if quantize == "none":
        assert got == expected
    else:  # the export kept >= 99 % of the run's labels on its test set; here: what it says
        from llmclf.methods.onnx import OnnxClassifier

        assert got == OnnxClassifier(tmp_path / "export").predict(asked)
        assert sum(a == b for a, b in zip(got, expected)) >= len(asked) - 1


def test_the_script_says_how_to_use_it(onnx_python):
    out = subprocess.run(
        [str(onnx_python), str(ROOT / "examples" / "classify_onnx.py")],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "usage: python classify_onnx.py EXPORT_FOLDER TEXT" in out.stderr
