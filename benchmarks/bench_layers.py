"""The accuracy / speed curve of `--num-layers K` (keep the first K decoder blocks, pool
from block K) and of `--lora none` (frozen features computed once and cached, only the head
trains) and of `--lora-layers K` (all blocks, LoRA on the last K only), on the same
bbc-news sample, settings and test split.

Usage: python benchmarks/bench_layers.py [--layers 30 15 8] [--frozen-layers 30 8]
           [--lora-layers 8] [--train-limit 400] [--epochs 2] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import shutil

from common import LLMCLF, WORK, cold_feature_cache, machine, run_timed, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="bbc-news")
    parser.add_argument("--layers", type=int, nargs="*", default=[30, 15, 8])
    parser.add_argument("--train-limit", type=int, default=400)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--frozen-layers", type=int, nargs="*", default=[30, 8])
    parser.add_argument("--frozen-epochs", type=float, default=20.0)
    parser.add_argument("--lora-layers", type=int, nargs="*", default=[])
    parser.add_argument("--name", default=None, help="results file name")
    args = parser.parse_args()

    shared = [
        "--method", "head", "--model", args.model, "--data", args.data,
        "--train-limit", str(args.train_limit), "--max-length", str(args.max_length),
    ]  # fmt: skip
    variants = [(f"lora, {k} layers", ["--num-layers", str(k), "--epochs", str(args.epochs)])
                for k in args.layers]  # fmt: skip
    for k in args.frozen_layers:
        frozen = ["--lora", "none", "--epochs", str(args.frozen_epochs), "--num-layers", str(k)]
        variants.append((f"lora none (frozen features), {k} layers", frozen))
    for k in args.lora_layers:
        variants.append(
            (
                f"lora on the last {k} layers",
                ["--lora-layers", str(k), "--epochs", str(args.epochs)],
            )
        )
    rows = []
    for label, extra in variants:
        output = WORK / ("layers-" + label.replace(" ", "").replace(",", "-").replace("(", "")
                         .replace(")", ""))  # fmt: skip
        shutil.rmtree(output, ignore_errors=True)
        env = cold_feature_cache() if "--lora" in extra else None  # the first pass counts
        wall = run_timed([*LLMCLF, "train", *shared, *extra, "--output", str(output)],
                         WORK / f"{output.name}.log", env)  # fmt: skip
        metrics = json.loads((output / "metrics.json").read_text())
        rows.append(
            {
                "variant": label,
                "macro_f1": round(metrics["macro_f1"], 4),
                "accuracy": round(metrics["accuracy"], 4),
                "train_seconds": metrics["train_seconds"],
                "test_examples_per_s": metrics["eval_examples_per_s"],
                "trainable_params": metrics["trainable_params"],
                "total_params": metrics["total_params"],
                "peak_rss_mb": metrics["peak_rss_mb"],
                "dtype": metrics.get("dtype"),
                "wall_seconds": round(wall, 1),
            }
        )
        print(rows[-1])
    write_result(
        args.name or f"layers_{args.data}",
        {"machine": machine(), "settings": vars(args), "rows": rows},
    )


if __name__ == "__main__":
    main()
