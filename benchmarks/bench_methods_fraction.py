"""The other trained methods' fraction of the dtype's matmul peak: instruct (answer-only
loss on prompts) and the encoder, each trained by ``llmclf train`` at one length.

The figure is the run's own real-token rate (``train_tokens_per_s`` in metrics.json: the
tokens its batches hold, per second of training, evaluation passes included) times the
model's training FLOPs per token, over the peak of the dtype it trained in, measured in
this process right before. For instruct, the tokens counted are those after the prompts'
shared prefix, which runs once per batch and is not counted: a lower bound. For the
encoder the whole model trains, so the weights' gradients (another 2 FLOPs per weight)
are counted too.

Usage: python benchmarks/bench_methods_fraction.py [--max-length 128] [--name ...]
"""

from __future__ import annotations

import argparse
import json
import shutil

from common import (
    LLMCLF,
    RESULTS,
    WORK,
    data_file,
    machine,
    matmul_peak_gflops,
    model_flops_per_token,
    run_timed,
    write_result,
)

METHODS = {"instruct": "smollm2-135m", "encoder": "minilm-l6"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="20newsgroups")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--validation", type=int, default=60)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--name", default="fraction_methods")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig

    from llmclf.backbone import model_source

    data = data_file(args.data, args.train, args.validation, args.test)
    sides = {}
    for method, model in METHODS.items():
        peaks = {d: matmul_peak_gflops("cpu", getattr(torch, d)) for d in ("float32", "bfloat16")}
        run = WORK / f"{args.name}-{method}"
        shutil.rmtree(run, ignore_errors=True)
        run_timed(
            [*LLMCLF, "train", "--method", method, "--model", model, "--data", str(data),
             "--max-length", str(args.max_length), "--epochs", str(args.epochs),
             "--output", str(run)],
            WORK / f"{args.name}-{method}.log",
        )  # fmt: skip
        metrics = json.loads((run / "metrics.json").read_text())
        config = AutoConfig.from_pretrained(model_source(model))
        flops = model_flops_per_token(config, args.max_length / 2, True)
        if method == "encoder":  # full fine-tuning: the weights' gradients as well
            flops += model_flops_per_token(config, 0, False)
        dtype = metrics.get("dtype", "float32")
        achieved = metrics["train_tokens_per_s"] * flops / 1e9
        sides[f"{method} ({model})"] = {
            "dtype": dtype,
            "fraction_of_dtype_peak": round(achieved / peaks[dtype], 3),
            "step_real_tokens_per_s": metrics["train_tokens_per_s"],
            "train_seconds": metrics["train_seconds"],
            "macro_f1": round(metrics["macro_f1"], 4),
            "dtype_peak_gflops": round(peaks[dtype], 1),
        }
        print(method, sides[f"{method} ({model})"])
    write_result(
        args.name,
        {
            "machine": machine(),
            "settings": {**vars(args), "train": args.train, "data": args.data},
            "fraction_of_dtype_peak": {str(args.max_length): sides},
        },
        RESULTS,
    )


if __name__ == "__main__":
    main()
