"""Instruct prediction: `--predict-mode score` (every label scored over one shared prompt
pass) vs `--predict-mode generate` (greedy decoding, then parsing: the paper's way) on the
same model, prompts, texts and batch size, with multi-token labels (20 Newsgroups names such
as comp.sys.ibm.pc.hardware are 5-9 SmolLM2 tokens).

By default the untrained model is used (zero-shot): no training budget is needed to compare
the two decoders; give --run to compare them on a trained instruct run instead.

Usage: python benchmarks/bench_instruct.py [--data 20newsgroups] [--test 150] [--run RUN]
"""

from __future__ import annotations

import argparse
import json
import shutil

from common import LLMCLF, WORK, bench_data, machine, run_timed, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="20newsgroups")
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--run", default=None, help="a trained instruct run (default: zero-shot)")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from llmclf.backbone import model_source

    name = args.name or f"instruct_{args.data}"
    data = bench_data(args.data, 0, 0, args.test)
    results = {}
    for mode in ("score", "generate"):
        output = WORK / f"{name}-{mode}"
        shutil.rmtree(output, ignore_errors=True)
        if args.run:
            command = [*LLMCLF, "evaluate", args.run]
        else:
            command = [*LLMCLF, "evaluate", "--zero-shot", "--model", args.model,
                       "--max-length", str(args.max_length)]  # fmt: skip
        command += ["--data", str(data), "--predict-mode", mode, "--output", str(output),
                    "--eval-batch-size", str(args.batch_size)]  # fmt: skip
        run_timed(command, WORK / f"{name}-{mode}.log")
        metrics = json.loads((output / "metrics.json").read_text())
        results[mode] = {
            "macro_f1": round(metrics["macro_f1"], 4),
            "accuracy": round(metrics["accuracy"], 4),
            "seconds": metrics["eval_seconds"],
            "examples_per_s": metrics["eval_examples_per_s"],
            **({"unparsed_rate": metrics["unparsed_rate"]} if "unparsed_rate" in metrics else {}),
        }
        print(mode, results[mode])
    tokenizer = AutoTokenizer.from_pretrained(model_source(args.model))
    labels = sorted(set(__import__("pandas").read_csv(data)["label"]))
    label_tokens = [len(tokenizer(label, add_special_tokens=False).input_ids) for label in labels]
    write_result(
        name,
        {
            "machine": machine(),
            "settings": {**vars(args), "zero_shot": args.run is None, "labels": len(labels)},
            "label_tokens_min_mean_max": [
                min(label_tokens),
                round(sum(label_tokens) / len(label_tokens), 1),
                max(label_tokens),
            ],
            **results,
            "score_speedup_vs_generate": round(
                results["generate"]["seconds"] / results["score"]["seconds"], 2
            ),
        },
    )


if __name__ == "__main__":
    main()
