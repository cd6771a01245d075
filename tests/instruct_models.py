"""Tiny random-weight causal LMs for the instruct tests: a word-level tokenizer that knows
the words of llmclf's default prompts (so nothing is an unknown token), optionally with a
ChatML chat template whose turns end in <|im_end|> (not the EOS token)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import FILLER, SPECIALS, WORDS, save_tiny_llama

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>"]
PROMPT_WORDS = """Classify the text into exactly one of these categories : money , sport , tech .
Answer with the category only . Text : one or more every that applies separated by commas
system user assistant A B C 1 2 3"""


def instruct_tokenizer(chat: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w for ws in WORDS.values() for w in ws} | set(FILLER)
    words |= set(re.findall(r"\w+|[^\w\s]+", PROMPT_WORDS))
    specials = SPECIALS + (CHAT_SPECIALS if chat else [])
    vocab = {w: i for i, w in enumerate(specials + sorted(words - set(specials)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=CHAT_SPECIALS if chat else None,
    )
    if chat:
        tokenizer.chat_template = CHATML
    return tokenizer


def make_instruct_llama(folder: Path, chat: bool = False, seed: int = 0) -> str:
    """A 2-layer Llama; weights initialised wider than the default (0.1, not 0.02) so a
    few LoRA steps can move its answers (at 0.02 its logits stay near uniform)."""
    tokenizer = instruct_tokenizer(chat)
    save_tiny_llama(folder, tokenizer, seed, max_position_embeddings=512, initializer_range=0.1)
    return str(folder)
