"""Training: `llmclf train --method head` vs the transformers / PEFT docs recipe
(reference_train.py, padding="max_length"), same model, examples, epochs, batch size,
learning rate, LoRA rank and precision, one after the other. Each --variant "OPTIONS" adds
another llmclf run with those options (e.g. "--lora-layers 8", or "--lora-dropout 0.05", the
recipe's dropout); with --lora-layers K the backward pass, and so the achieved GFLOP/s, is
counted through those K blocks only.

Both time the same phase: loading the model, the training steps and the per-epoch
validation pass (what a user waits for), then predict the same test split.

Usage: python benchmarks/bench_train.py [--data 20newsgroups] [--max-length 256] ...
           [--variant "--lora-layers 8"] ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import (
    LLMCLF,
    RESULTS,
    WORK,
    data_file,
    machine,
    matmul_peak_gflops,
    model_flops_per_token,
    read_split,
    real_tokens,
    run_timed,
    write_result,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--data", default="20newsgroups", help="a built-in set, or a CSV with a split column"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        nargs="+",
        default=[256],
        help="one run of every side per length, e.g. 32 128 256 (each its own results file)",
    )
    parser.add_argument("--train", type=int, default=240, help="training examples")
    parser.add_argument("--validation", type=int, default=60)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--quantize", choices=("none", "4bit"), default="none")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='also time llmclf with these extra options, e.g. "--lora-layers 8" (repeatable)',
    )
    parser.add_argument(
        "--reference-bf16",
        action="store_true",
        help="also time the recipe with bf16 weights and the Trainer's bf16=True (autocast)",
    )
    parser.add_argument("--name", default=None, help="results file name")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    lengths = args.max_length
    # several lengths: train_<tag>_<length>.json each, and fraction_<tag>.json beside them
    args.tag = (args.name or Path(args.data).stem) if len(lengths) > 1 else None
    summary = {}
    for length in lengths:
        args.max_length = length
        summary[length] = bench_length(args)
    args.max_length = lengths
    if len(lengths) > 1:  # the fractions of every length side by side
        write_result(
            f"fraction_{args.tag}",
            {"machine": machine(), "settings": {**vars(args), "results_dir": str(args.results_dir)},
             "fraction_of_dtype_peak": summary},
            args.results_dir,
        )  # fmt: skip


def bench_length(args) -> dict:
    """Every side at ``args.max_length``: one results file; returns each side's
    ``fraction_of_dtype_peak`` with its dtype and real tokens/s."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from llmclf.backbone import model_source

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tag:  # one of several lengths
        name = f"train_{args.tag}_{args.max_length}"
    else:
        name = args.name or f"train_{args.data}_{args.max_length}" + (
            f"_{args.epochs:g}ep" if args.epochs != 1 else ""
        )
    folder = model_source(args.model)  # a GGUF is converted (and cached) before timing
    data = data_file(args.data, args.train, args.validation, args.test)
    if args.data.endswith(".csv"):  # the file's own splits decide the counts
        args.train, args.validation, args.test = (
            len(read_split(data, split)) for split in ("train", "validation", "test")
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    train_texts = list(read_split(data, "train")["text"])
    tokens = real_tokens(tokenizer, train_texts, args.max_length)
    real = sum(tokens) * args.epochs
    padded = len(tokens) * args.max_length * args.epochs
    peaks = {  # measured here, right before the runs they are the yardstick of
        "float32": matmul_peak_gflops(device, torch.float32),
        "bfloat16": matmul_peak_gflops(device, torch.bfloat16),
    }
    peak = peaks["float32"]
    print(
        f"matmul peak {peaks['float32']:.0f} GFLOP/s fp32, {peaks['bfloat16']:.0f} bf16; "
        f"{real:,.0f} real of {padded:,.0f} padded tokens"
    )

    shared = [
        "--max-length", str(args.max_length),
        "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size),
        "--learning-rate", str(args.learning_rate),
        "--quantize", args.quantize,
    ]  # fmt: skip

    def train_llmclf(label: str, extra: list[str]) -> dict:
        run = WORK / f"{name}-{label}"
        shutil.rmtree(run, ignore_errors=True)
        wall = run_timed(
            [*LLMCLF, "train", "--method", "head", "--model", args.model, "--data", str(data),
             "--output", str(run), *shared, *extra],
            WORK / f"{name}-{label}.log",
        )  # fmt: skip
        metrics = json.loads((run / "metrics.json").read_text())
        history = json.loads((run / "train_log.json").read_text())
        metrics["validation_seconds"] = sum(e.get("eval_runtime", 0.0) for e in history)
        metrics["wall_seconds"] = wall
        return metrics

    runs = {"llmclf": train_llmclf("llmclf", [])}
    for number, variant in enumerate(args.variant, start=1):
        runs[variant] = train_llmclf(f"variant{number}", variant.split())
    ours = runs["llmclf"]

    def train_reference(label: str, extra: list[str]) -> dict:
        log = WORK / f"{name}-{label}.log"
        wall = run_timed(
            [sys.executable, "benchmarks/reference_train.py", "--model", str(folder),
             "--data", str(data), "--output", str(WORK / f"{name}-{label}"), *shared, *extra],
            log,
        )  # fmt: skip
        line = next(x for x in log.read_text().splitlines() if x.startswith("RESULT "))
        return {**json.loads(line[len("RESULT ") :]), "wall_seconds": wall}

    reference = train_reference("reference", [])
    references = {"reference": reference}
    if args.reference_bf16:
        references["reference --bf16"] = train_reference("reference-bf16", ["--bf16"])

    config = AutoConfig.from_pretrained(folder)
    mean_context = sum(tokens) / len(tokens) / 2
    sides = {}
    for side, m in (*runs.items(), *references.items()):
        backward = lora_layers(side.split()) if side in args.variant else None
        flops = model_flops_per_token(config, mean_context, True, backward_layers=backward)
        step_seconds = m["train_seconds"] - m["validation_seconds"]
        sides[side] = {
            "macro_f1": round(m["macro_f1"], 4),
            "accuracy": round(m["accuracy"], 4),
            "train_seconds": round(m["train_seconds"], 1),
            "validation_seconds": round(m["validation_seconds"], 1),
            "real_tokens_per_s": round(real / m["train_seconds"], 1),
            "examples_per_s": round(len(tokens) * args.epochs / m["train_seconds"], 3),
            "step_real_tokens_per_s": round(real / step_seconds, 1),
            "achieved_gflops": round(flops * real / step_seconds / 1e9, 1),
            "peak_rss_mb": m["peak_rss_mb"],
            "peak_gpu_mb": m.get("peak_gpu_mb"),
            "trainable_params": m["trainable_params"],
            "dtype": m.get("dtype", "float32"),
            # achieved FLOP/s on real tokens over the peak of the dtype the side ran in
            "fraction_of_dtype_peak": round(
                flops * real / step_seconds / 1e9 / peaks[m.get("dtype", "float32")], 3
            ),
        }
    variants = {
        variant: {
            **sides.pop(variant),
            "train_speedup_vs_reference": round(
                reference["train_seconds"] / runs[variant]["train_seconds"], 2
            ),
            "macro_f1_difference": round(runs[variant]["macro_f1"] - reference["macro_f1"], 4),
        }
        for variant in args.variant
    }
    # bf16 against fp32, llmclf against llmclf (the first run of each dtype)
    by_dtype: dict = {}
    for side in ("llmclf", *args.variant):
        by_dtype.setdefault(runs[side].get("dtype", "float32"), side)
    dtype_ratios = {}
    if {"float32", "bfloat16"} <= set(by_dtype):
        fp32, bf16 = runs[by_dtype["float32"]], runs[by_dtype["bfloat16"]]
        dtype_ratios = {
            "bf16_train_speedup_vs_fp32": round(fp32["train_seconds"] / bf16["train_seconds"], 2),
            "bf16_macro_f1_minus_fp32": round(bf16["macro_f1"] - fp32["macro_f1"], 4),
            "bf16_sides": {"float32": by_dtype["float32"], "bfloat16": by_dtype["bfloat16"]},
        }
    write_result(
        name,
        {
            "machine": machine(),
            "settings": {
                **vars(args),
                "results_dir": str(args.results_dir),
                "device": device,
                "model_folder": str(folder),
            },
            "real_tokens": real,
            "padded_tokens": padded,
            "matmul_peak_gflops": round(peak, 1),
            "matmul_peak_gflops_by_dtype": {k: round(v, 1) for k, v in peaks.items()},
            **dtype_ratios,
            "train_flops_per_real_token": model_flops_per_token(config, mean_context, True),
            **sides,
            "train_speedup_vs_reference": round(
                reference["train_seconds"] / ours["train_seconds"], 2
            ),
            "step_speedup_vs_reference": round(
                sides["llmclf"]["step_real_tokens_per_s"]
                / sides["reference"]["step_real_tokens_per_s"],
                2,
            ),
            "macro_f1_difference": round(ours["macro_f1"] - reference["macro_f1"], 4),
            "fraction_of_dtype_peak": sides["llmclf"]["fraction_of_dtype_peak"],
            "variants": variants,
        },
        args.results_dir,
    )
    return {
        side: {k: values[k] for k in ("dtype", "fraction_of_dtype_peak", "step_real_tokens_per_s",
                                      "train_seconds", "macro_f1")}
        for side, values in {**sides, **variants}.items()
    }  # fmt: skip


def lora_layers(options: list[str]) -> int | None:
    """K of a --lora-layers K among llmclf options (None: LoRA on every block)."""
    if "--lora-layers" in options:
        return int(options[options.index("--lora-layers") + 1])
    return None


if __name__ == "__main__":
    main()
