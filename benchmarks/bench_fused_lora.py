"""What fusing LoRA's adapters could save (issue 33's "fused LoRA" lever), measured before
building it: the adapters that read the same input (q / k / v, and gate / up) computed as
PEFT computes them, one ``B(A(x))`` each, against one matmul by their concatenated ``A``
(its output split, each ``B`` applied to its part), forward and backward, at a training
step's shapes, in the step's dtype (bf16 autocast over fp32 LoRA weights, llmclf's
default). Both sides run in this process, alternating; the saving is reported per
training step (times the model's decoder blocks) and against one default step of the
same shape timed here through ``bench_step``'s path (``HeadClassifier``'s model, the
method's forward, backward, AdamW).

Only the ``A`` side can fuse: the ``B`` products write different outputs (fusing them
would need a block-diagonal matmul, more FLOPs, or a grouped GEMM CPUs do not have).

Usage: python benchmarks/bench_fused_lora.py [--tokens 1024] [--rank 16] [--name ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import RESULTS, machine, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=1024, help="rows of a step (8 × 128)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig

    from llmclf import backbone

    config = AutoConfig.from_pretrained(backbone.model_source(args.model)).get_text_config()
    hidden, blocks = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    groups = {  # the adapted layers that share an input, by their output widths
        "q/k/v": [config.num_attention_heads * head_dim, kv, kv],
        "gate/up": [config.intermediate_size, config.intermediate_size],
    }
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    x = torch.randn(args.tokens, hidden, dtype=dtype, requires_grad=True)

    def timed(fn) -> float:
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    result = {"machine": machine(), "settings": vars(args), "groups": {}}
    saved_per_block = 0.0
    for name, outs in groups.items():
        a = [torch.randn(args.rank, hidden, requires_grad=True) for _ in outs]
        b = [torch.randn(o, args.rank, requires_grad=True) for o in outs]
        a_cat = torch.cat([w.detach() for w in a]).requires_grad_(True)

        def separate(a=a, b=b):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                ys = [
                    torch.nn.functional.linear(torch.nn.functional.linear(x, ai), bi)
                    for ai, bi in zip(a, b)
                ]
            sum(y.float().sum() for y in ys).backward()

        def fused(a_cat=a_cat, b=b):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                parts = torch.nn.functional.linear(x, a_cat).split(args.rank, dim=-1)
                ys = [torch.nn.functional.linear(p, bi) for p, bi in zip(parts, b)]
            sum(y.float().sum() for y in ys).backward()

        for _ in range(5):
            separate(), fused()
        times = {"separate": [], "fused": []}
        for _ in range(args.repeats):
            times["separate"].append(timed(separate))
            times["fused"].append(timed(fused))
        sep, fus = (statistics.median(times[k]) for k in ("separate", "fused"))
        saved_per_block += sep - fus
        result["groups"][name] = {
            "outputs": outs,
            "separate_ms": round(sep * 1000, 3),
            "fused_ms": round(fus * 1000, 3),
            "speedup": round(sep / fus, 3),
        }
        print(
            f"{name}: separate {sep * 1000:.2f} ms, fused A {fus * 1000:.2f} ms "
            f"({sep / fus:.2f}×) per block, forward + backward"
        )

    step = _default_step_seconds(args)
    saved = saved_per_block * blocks
    result.update(
        decoder_blocks=blocks,
        saved_ms_per_step=round(saved * 1000, 1),
        default_step_ms=round(step * 1000, 1),
        step_fraction_saved=round(saved / step, 4),
    )
    print(
        f"fusing saves {saved * 1000:.0f} ms of a {step * 1000:.0f} ms step "
        f"({saved / step:.1%}) at {args.tokens} tokens"
    )
    if args.name:
        write_result(args.name, result, RESULTS)


def _default_step_seconds(args) -> float:
    """One default training step of the head method at ``args.tokens`` rows (8 rows),
    median of 6 after 2 warm-ups: the denominator of the saving."""
    import torch

    from llmclf.config import DataConfig
    from llmclf.data import load_frames
    from llmclf.labels import LabelSchema
    from llmclf.methods.head import HeadClassifier, head_logits
    from llmclf.training import adapters_compute_in_autocast

    clf = HeadClassifier(args.model, dtype=args.dtype, lora_r=args.rank, progress=False)
    train = load_frames(DataConfig(data="bbc-news"))["train"]
    schema = LabelSchema.from_labels(list(train["label"]), False)
    clf._config = clf.resolve_config()
    clf._build(schema)
    model, dtype = clf.model_.train(), clf.dtype_
    rows, length = 8, args.tokens // 8
    ids = [clf.tokenizer_(t, add_special_tokens=False)["input_ids"] for t in train["text"][:64]]
    ids = torch.tensor([i[:length] for i in ids if len(i) >= length][:rows])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    target = torch.tensor(schema.encode(list(train["label"][: len(ids)])))
    optimizer = clf._optimizer()

    class Args:
        bf16, fp16 = dtype == torch.bfloat16, False

    def step() -> float:
        begin = time.perf_counter()
        with (
            torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32),
            adapters_compute_in_autocast(model, Args),
        ):
            loss = torch.nn.functional.cross_entropy(head_logits(model, batch), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - begin

    for _ in range(2):
        step()
    return statistics.median(step() for _ in range(6))


if __name__ == "__main__":
    main()
