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
    assert backbone.model_source("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # hub ids pass through


def test_cpu_dtype_is_float32_without_amx(monkeypatch):
    monkeypatch.setattr(backbone, "cpu_has_native_bf16", lambda: False)
    assert backbone.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(backbone, "cpu_has_native_bf16", lambda: True)
    assert backbone.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert backbone.resolve_dtype("float16", torch.device("cpu")) == torch.float16


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
