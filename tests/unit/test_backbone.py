import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from llmclf import backbone
from llmclf.errors import LlmclfError
from tests.conftest import make_tiny_llama


def test_gguf_flag_reads_metadata(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "meta.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert backbone.gguf_flag(path, "tokenizer.ggml.add_bos_token") is True
    assert backbone.gguf_flag(path, "tokenizer.ggml.add_eos_token") is False


def test_pad_token_is_made_distinct_from_eos(tmp_path):
    folder = make_tiny_llama(tmp_path / "nopad", pad=False)
    tokenizer = backbone.load_tokenizer(str(folder), "right", append_eos=True)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.pad_token == "<unk>"
    assert tokenizer("match goal")["input_ids"][-1] == tokenizer.eos_token_id


def test_pad_equal_to_eos_is_replaced(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.pad_token = tokenizer.eos_token
    backbone.set_pad_token(tokenizer)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_model_source_errors(tmp_path):
    with pytest.raises(LlmclfError, match="GGUF file .* does not exist"):
        backbone.model_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmclfError, match="without config.json"):
        backbone.model_source(str(tmp_path / "empty"))


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache under tmp_path, online, at a hub that is not there."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    return constants


def cache_model(constants, repo: str) -> None:
    snapshot = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    (snapshot / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (snapshot / "snapshots" / ("0" * 40) / "config.json").write_text("{}")


def test_a_cached_hub_id_passes_through_offline(hub, monkeypatch):
    cache_model(hub, "Qwen/Qwen2.5-0.5B")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert backbone.model_source("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


@pytest.mark.parametrize(
    "ref, offline, expected",
    [
        ("org/not-cached", True, "not in the Hugging Face cache while HF_HUB_OFFLINE is set"),
        ("org/not-cached", False, "cannot be reached"),
        ("two words", False, "not a valid Hugging Face hub id"),
        ("a/b/c", False, "not a valid Hugging Face hub id"),
    ],
)
def test_an_unknown_model_fails_at_once_and_lists_the_built_ins(
    hub, monkeypatch, ref, offline, expected
):
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", offline)
    start = time.monotonic()
    with pytest.raises(LlmclfError, match=expected) as error:
        backbone.check_model_ref(ref)
    assert time.monotonic() - start < 5  # not a minute of download retries
    assert "smollm2-135m" in str(error.value)


def test_a_model_the_hub_does_not_have_is_named(hub, monkeypatch):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(hub, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(LlmclfError, match="no such model is on the Hugging Face hub"):
            backbone.check_model_ref("org/no-such-model")
    finally:
        server.shutdown()
        server.server_close()


def test_a_dtype_given_by_name_is_used_as_it_is():
    assert backbone.place("cpu", "float16", tune_malloc=False).dtype == torch.float16
    assert backbone.choose_dtype("bfloat16", torch.device("cpu")) == (torch.bfloat16, None)


@pytest.fixture()
def fresh_process(monkeypatch):
    """place() as in a new process, its process-wide settings counted, not made."""
    from llmclf import speed

    made = []
    monkeypatch.setattr(backbone, "_applied", set())
    monkeypatch.setattr(speed, "fit_threads_to_quota", lambda: made.append("threads"))
    monkeypatch.setattr(speed, "tune_malloc", lambda: made.append("malloc") or True)
    monkeypatch.setattr(speed, "_malloc_tuned", True)
    return made


def test_placement_is_resolved_once_and_applied_once(fresh_process):
    first = backbone.place("cpu", "float32")
    again = backbone.place("cpu", "float32")
    assert first == again
    assert (first.device, first.dtype, first.dtype_probe) == (
        torch.device("cpu"),
        torch.float32,
        None,
    )
    assert first.threads == torch.get_num_threads() and first.malloc_tuned
    assert fresh_process == ["threads", "malloc"]  # once per process, not once per call


def test_malloc_is_tuned_only_when_asked(fresh_process):
    backbone.place("cpu", "float32", tune_malloc=False)
    assert fresh_process == ["threads"]
    backbone.place("cpu", "float32", tune_malloc=True)  # asked later: made then, once
    backbone.place("cpu", "float32", tune_malloc=True)
    assert fresh_process == ["threads", "malloc"]


def test_the_tune_malloc_option_reaches_the_placement(fresh_process):
    """--no-tune-malloc (a ModelConfig option, and a loaded run's override) leaves malloc
    alone; the default tunes it."""
    from llmclf.cli import build_parser
    from llmclf.config import LoadOptions, ModelConfig

    backbone.placement_for(ModelConfig(device="cpu", dtype="float32", tune_malloc=False))
    assert fresh_process == ["threads"]
    args = build_parser().parse_args(["evaluate", "run", "--no-tune-malloc"])
    assert LoadOptions(tune_malloc=args.tune_malloc).overrides() == {"tune_malloc": False}
    backbone.placement_for(ModelConfig(device="cpu", dtype="float32"))
    assert fresh_process == ["threads", "malloc"]


def test_placing_sets_no_environment_variable(fresh_process, monkeypatch):
    import os

    monkeypatch.setattr(backbone, "mps_available", lambda: True)
    before = dict(os.environ)
    assert backbone.place("mps", "auto").device.type == "mps"
    assert backbone.place("cpu", "auto").device.type == "cpu"
    assert dict(os.environ) == before
    assert fresh_process == ["threads", "malloc"]  # a CPU's settings only for a CPU


def test_load_model_takes_the_placement_it_is_given(tmp_path, monkeypatch):
    """The model loads in the placement's dtype; nothing decides the dtype again."""
    from transformers import AutoModelForSequenceClassification

    from llmclf.config import ModelConfig

    folder = str(make_tiny_llama(tmp_path / "m"))
    placement = backbone.Placement(torch.device("cpu"), torch.bfloat16)

    def decided_again(*args, **kwargs):
        raise AssertionError("the dtype was decided again")

    monkeypatch.setattr(backbone, "choose_dtype", decided_again)
    monkeypatch.setattr(backbone, "place", decided_again)
    config = ModelConfig(model=folder, dtype="float32", device="cpu")
    model = backbone.load_model(
        AutoModelForSequenceClassification, folder, config, placement, ["score"], num_labels=2
    )
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.score.weight.dtype == torch.float32  # kept in full precision


def test_appending_eos_keeps_a_bos_the_tokenizer_adds(tmp_path):
    from transformers import AutoTokenizer

    folder = make_tiny_llama(tmp_path / "bos")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_bos_token = True
    tokenizer.save_pretrained(folder)
    plain = backbone.load_tokenizer(str(folder), "right")("match goal")["input_ids"]
    with_eos = backbone.load_tokenizer(str(folder), "right", append_eos=True)("match goal")[
        "input_ids"
    ]
    assert plain[0] == tokenizer.bos_token_id
    assert with_eos == plain + [tokenizer.eos_token_id]
