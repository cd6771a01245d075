"""A model's own Python code never runs unless the user passes --trust-remote-code, even
when transformers would ask on stdin and the answer is yes."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from llmclf import HeadClassifier, LlmclfError
from llmclf.cli import main
from tests.conftest import make_texts, make_tiny_llama

# transformers copies a model's code into its modules cache before importing it, so the
# marker's path is written into the code itself.
EVIL = """
from pathlib import Path
Path(MARKER).write_text("remote code ran")
from transformers import LlamaConfig
class EvilConfig(LlamaConfig):
    model_type = "evil-llama"
"""


@pytest.fixture()
def evil_model(tmp_path, monkeypatch) -> Path:
    """A model folder whose config names an unknown model type and points at its own
    ``evil.py`` (which writes RAN when imported); stdin would answer yes."""
    folder = make_tiny_llama(tmp_path / "evil")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil-llama"
    config["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForSequenceClassification": "evil.EvilConfig",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(EVIL.replace("MARKER", repr(str(folder / "RAN"))))
    monkeypatch.setattr(builtins, "input", lambda *args: "y")
    return folder


def test_the_api_refuses_a_model_that_ships_code(evil_model):
    texts, labels = make_texts(12)
    with pytest.raises(LlmclfError, match="only with --trust-remote-code"):
        HeadClassifier(str(evil_model), progress=False, epochs=1).fit(texts, labels)
    assert not (evil_model / "RAN").exists()


def test_the_cli_refuses_it_in_one_line(evil_model, tmp_path, capsys):
    texts, labels = make_texts(30)
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in zip(texts, labels)))
    args = ["train", "--model", str(evil_model), "--data", str(data), "--epochs", "1"]
    assert main([*args, "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("llmclf: error:")]
    assert len(errors) == 1 and "--trust-remote-code" in errors[0] and "Traceback" not in err
    assert not (evil_model / "RAN").exists() and not (tmp_path / "run").exists()


def test_a_loaded_run_never_trusts_code_because_its_config_says_so(tiny_llama, tmp_path):
    from llmclf.runs import load_classifier

    texts, labels = make_texts(30)
    clf = HeadClassifier(tiny_llama, progress=False, epochs=1, trust_remote_code=True)
    folder = clf.fit(texts, labels).save(tmp_path / "run")
    assert "trust_remote_code: true" in (folder / "config.yaml").read_text()
    assert load_classifier(folder, progress=False).config_.model.trust_remote_code is False
    loaded = load_classifier(folder, progress=False, trust_remote_code=True)
    assert loaded.config_.model.trust_remote_code is True
