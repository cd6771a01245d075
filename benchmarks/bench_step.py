"""One training step of the head method, timed in this process: where the time of a step
goes and what fraction of the dtype's matmul peak it reaches, at any length and batch.

The model is built by ``HeadClassifier`` itself (base, LoRA, head, dtype by ``--dtype``),
fed rows of real tokens from a built-in data set cut to ``--length`` (every token real,
so the FLOP count is exact), and stepped as the Trainer steps it: the method's forward
under the dtype's autocast, the loss, backward, AdamW. The first ``--warmup`` steps are
not timed; the median of the next ``--steps`` is. ``--profile`` adds torch.profiler's
table of the step (self CPU time by operator). The peak is measured in the same process
right before the steps.

Usage: python benchmarks/bench_step.py --length 128 --batch-size 8 [--dtype auto]
           [--option "--lora-layers 8"] [--profile] [--name step_128]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

from common import RESULTS, machine, matmul_peak_gflops, model_flops_per_token, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="bbc-news")
    parser.add_argument("--length", type=int, default=128, help="real tokens per row")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--option", action="append", default=[], help='HeadClassifier options, e.g. "lora_r=8"'
    )
    parser.add_argument(
        "--no-input-cast", action="store_true", help="PEFT leaves LoRA's input in its dtype"
    )
    parser.add_argument(
        "--sdpa", choices=("default", "math", "flash", "efficient"), default="default"
    )
    parser.add_argument("--lora-bf16", action="store_true", help="LoRA weights in bf16 (bound)")
    parser.add_argument(
        "--compile",
        choices=("none", "model", "blocks"),
        default="none",
        help="torch.compile the whole decoder, or each decoder block (regional)",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    import torch

    from llmclf.config import DataConfig
    from llmclf.data import load_frames
    from llmclf.labels import LabelSchema
    from llmclf.methods.head import HeadClassifier, head_logits

    options = dict(_parse(o) for o in args.option)
    clf = HeadClassifier(args.model, dtype=args.dtype, progress=False, **options)
    frames = load_frames(DataConfig(data=args.data))
    train = frames["train"]
    schema = LabelSchema.from_labels(list(train["label"]), False)
    clf._config = clf.resolve_config()
    clf._build(schema)
    model, dtype = clf.model_, clf.dtype_
    tokenizer = clf.tokenizer_
    # rows of exactly --length real tokens: long texts cut, short ones skipped
    rows = []
    for text in train["text"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= args.length:
            rows.append(ids[: args.length])
        if len(rows) >= args.batch_size * (args.steps + args.warmup):
            break
    if len(rows) < args.batch_size:
        raise SystemExit(f"fewer than {args.batch_size} texts of {args.length} tokens")
    targets = torch.tensor(schema.encode(list(train["label"][: len(rows)])))
    if args.lora_bf16:
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data = param.data.to(dtype)
    if args.no_input_cast:
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    compile_start = time.perf_counter()
    if args.compile == "model":
        decoder = model.get_base_model().model
        model.get_base_model().model = torch.compile(decoder)
    elif args.compile == "blocks":
        for block in model.get_base_model().model.layers:
            block.compile()
    optimizer = clf._optimizer()
    model.train()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "math": [SDPBackend.MATH],
        "flash": [SDPBackend.FLASH_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    }

    def step(index: int) -> float:
        start_row = (index * args.batch_size) % (len(rows) - args.batch_size + 1)
        ids = torch.tensor(rows[start_row : start_row + args.batch_size])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        labels = targets[start_row : start_row + args.batch_size]
        begin = time.perf_counter()
        kernel = (
            sdpa_kernel(backends[args.sdpa]) if args.sdpa != "default" else contextlib.nullcontext()
        )
        with kernel, torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits = head_logits(model, batch, clf.config_.head.pooling)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - begin

    peak_start = time.perf_counter()
    peak = matmul_peak_gflops("cpu", dtype)
    compile_start += time.perf_counter() - peak_start  # the warm-up's time, peak excluded
    for i in range(args.warmup):
        step(i)
    warmup_seconds = time.perf_counter() - compile_start
    times = [step(args.warmup + i) for i in range(args.steps)]
    seconds = statistics.median(times)
    config = model.config
    flops = model_flops_per_token(config, args.length / 2, True, clf.config_.adapter.lora_layers)
    tokens = args.batch_size * args.length
    achieved = flops * tokens / seconds / 1e9
    result = {
        "machine": machine(),
        "settings": {**vars(args), "dtype": str(dtype).removeprefix("torch.")},
        "step_seconds": round(seconds, 4),
        "step_seconds_all": [round(t, 4) for t in times],
        "tokens_per_s": round(tokens / seconds, 1),
        "achieved_gflops": round(achieved, 1),
        "dtype_peak_gflops": round(peak, 1),
        "fraction_of_dtype_peak": round(achieved / peak, 3),
        "warmup_seconds": round(warmup_seconds, 1),  # compilation included
    }
    print(
        f"{dtype} length {args.length} batch {args.batch_size}: {seconds * 1000:.0f} ms/step, "
        f"{tokens / seconds:.0f} tokens/s, {achieved:.0f} GFLOP/s = "
        f"{achieved / peak:.1%} of the {peak:.0f} GFLOP/s peak (warm-up {warmup_seconds:.0f} s)"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(3):
                step(i)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        print(table)
        result["profile"] = table
    if args.name:
        write_result(args.name, result, RESULTS)


def _parse(option: str) -> tuple[str, object]:
    key, _, value = option.partition("=")
    if "," in value:
        return key, value.split(",")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


if __name__ == "__main__":
    main()
