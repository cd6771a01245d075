"""Shared fixtures: tiny random-weight models built from the real transformers classes,
so the default test run needs no download."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import pytest
from hypothesis import settings

# make test: the same 60 examples on every machine (a CI failure reproduces locally);
# --hypothesis-profile deep explores 1,000 fresh ones
settings.register_profile("llmclf", max_examples=60, derandomize=True)
settings.register_profile("deep", max_examples=1000)


def pytest_configure(config):
    # the default profile only where none is asked for: loaded unconditionally (at import,
    # after hypothesis's plugin had applied --hypothesis-profile), it overrode the option
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("llmclf")


WORDS = {
    "sport": [
        "match",
        "goal",
        "team",
        "player",
        "coach",
        "league",
        "win",
        "score",
        "season",
        "cup",
    ],
    "money": [
        "bank",
        "stock",
        "market",
        "price",
        "shares",
        "profit",
        "trade",
        "bond",
        "fund",
        "rate",
    ],
    "tech": [
        "phone",
        "software",
        "chip",
        "computer",
        "internet",
        "data",
        "robot",
        "code",
        "app",
        "device",
    ],
}
FILLER = ["the", "a", "of", "and", "to", "in", "on", "with", "for", "is", "was"]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def make_texts(
    n: int, seed: int = 0, classes=("sport", "money", "tech")
) -> tuple[list[str], list[str]]:
    """Separable synthetic texts: each draws most words from its class's vocabulary."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = classes[i % len(classes)]
        words = [
            rng.choice(WORDS[label]) if rng.random() < 0.7 else rng.choice(FILLER)
            for _ in range(rng.randint(3, 12))
        ]
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def write_split_csv(
    path: Path, make, sizes=(("train", 150, 1), ("validation", 90, 2), ("test", 90, 3))
) -> Path:
    """A CSV of text, label and split columns: ``make(n, seed) -> (texts, labels)`` per
    split of ``sizes`` (name, rows, seed)."""
    import pandas as pd

    frames = []
    for split, n, seed in sizes:
        texts, labels = make(n, seed)
        frames.append(pd.DataFrame({"text": texts, "label": labels, "split": split}))
    pd.concat(frames).to_csv(path, index=False)
    return path


def make_tokenizer(pad: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = SPECIALS + sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))
    vocab = {w: i for i, w in enumerate(vocab_words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", **kwargs
    )


def save_tiny_llama(folder: Path, tokenizer, seed: int = 0, **overrides) -> Path:
    """A 2-layer, hidden-64 random-weight Llama for ``tokenizer``, saved with it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **{
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
            "tie_word_embeddings": True,
            **overrides,
        }
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_llama(folder: Path, seed: int = 0, pad: bool = True) -> Path:
    return save_tiny_llama(folder, make_tokenizer(pad=pad), seed, pad_token_id=3 if pad else None)


@contextlib.contextmanager
def decoder_forwards(device_type: str):
    """Record ``(autocast enabled on device_type, output dtype)`` of every training-mode
    forward of a Llama decoder stack (the base model's ``LlamaModel``) inside the block."""
    import torch

    seen: list[tuple[bool, object]] = []

    def record(module, inputs, output):
        if module.__class__.__name__ == "LlamaModel" and module.training:
            enabled = torch.is_autocast_enabled(device_type)
            seen.append((enabled, output.last_hidden_state.dtype))

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        yield seen
    finally:
        hook.remove()


def pytest_collection_modifyitems(config, items) -> None:
    """The integration tests train and load real models (minutes on 2 cores): they are slow
    too, so ``make test-fast`` (``-m "not slow"``) leaves them out; ``make test`` runs them.

    The GGUF tests need llama-cpp-python, which builds llama.cpp from source (minutes):
    deselected (counted in the summary) unless the marker expression names them, as
    ``make test-gguf`` (``-m gguf``) does."""
    for item in items:
        if item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.slow)
    if "gguf" in (config.getoption("markexpr") or ""):
        return
    left = [item for item in items if item.get_closest_marker("gguf")]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [item for item in items if not item.get_closest_marker("gguf")]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return str(make_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session", autouse=True)
def float32_cpu():
    """``--dtype auto`` picks bfloat16 on a CPU where the probe measures it faster (the
    dev machine of 2026-12-02 has AMX: a 2048² bf16 matmul ran 6.5x fp32 there). The
    tests' exact comparisons (save / load, merged vs plain PEFT, shared prefix vs joined
    rows) are float32 facts, so every test sees a probe that chose fp32, whatever the
    host; test_speed injects timings both ways itself. Subprocesses of tests do not see
    this: give them --dtype float32 where they compare numbers."""
    from llmclf import speed

    slow = speed.DtypeProbe([256, 64, 128], 1.0, 2.0, 0.0, "test: bf16 at half speed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speed, "cpu_probe", lambda hidden, intermediate, cache=None: slow)
        yield


@pytest.fixture(scope="session", autouse=True)
def offline_hub():
    """The default run never reaches the Hugging Face hub, whether or not HF_HUB_OFFLINE
    was set before huggingface_hub read it at import (CI does not set it)."""
    from huggingface_hub import constants

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        yield


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def make_bert_tokenizer():
    """A word-level tokenizer that frames every text as ``[CLS] ... [SEP]``, like BERT's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab_words = BERT_SPECIALS + sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))
    vocab = {w: i for i, w in enumerate(vocab_words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def make_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-32 random-weight BERT encoder (the architecture of all-MiniLM)."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = make_bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))
