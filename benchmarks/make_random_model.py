"""A random-weight Llama folder of a given shape, for speed and memory benchmarks of models
too large to download here (the GPU benchmark: an 8B-shaped Llama at sequence length 512).

The blocks have the shape of Llama-3.1-8B (hidden 4096, 32 layers, 32 query / 8 key-value
heads, MLP 14336); the vocabulary and tokenizer are SmolLM2's (49,152 tokens, so the
embedding is 0.4B rather than 1B parameters). Weights are saved in bf16 (about 14 GiB).

Usage: python benchmarks/make_random_model.py OUT [--shape llama-8b|llama-1b|tiny]
           [--tokenizer DIR]  (a saved SmolLM2 tokenizer, where the built-in model is absent)
Then:  python benchmarks/bench_train.py --model OUT --quantize 4bit --max-length 512
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHAPES = {
    "llama-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--shape", choices=SHAPES, default="llama-8b")
    parser.add_argument(
        "--tokenizer", default=None, help="a tokenizer folder (default: the built-in SmolLM2's)"
    )
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmclf.backbone import model_source

    if (args.output / "config.json").is_file():
        print(f"{args.output} exists")
        return
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or model_source("smollm2-135m"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        rope_theta=500000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **SHAPES[args.shape],
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # never materialise 8B fp32 weights
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    staging = args.output.with_name(args.output.name + ".partial")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(args.output)
    print(f"wrote {args.output}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params")


if __name__ == "__main__":
    main()
