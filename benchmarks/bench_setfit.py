"""SetFit beside llmclf's other methods (issue 34): test macro-F1, training time and
prediction examples/s of `--method setfit`, `tfidf`, `encoder` and `head` on bbc-news,
20newsgroups and reuters-r8 at several training-set sizes.

Every cell is one `llmclf train` process on the same CSV (``common.bench_data``: a
stratified sample of the built-in set's train / validation / test splits), so all methods
of a data set see the same training texts (per size) and the same test texts (every
size); each process takes /tmp/llmclf-cpu.lock (``--lock``) so that the cells of this
shared machine do not overlap. The figures are those of the run's metrics.json: test
macro-F1 and accuracy, ``train_seconds`` (the fit: for SetFit its contrastive phase and
its head) and ``eval_examples_per_s`` (the test set's prediction). A cell whose run folder
is finished is read again, not retrained, so the script can be stopped and resumed; the
results file is rewritten after every cell.

Instruct's full-size cells train at ``--instruct-full-learning-rate`` (2e-4: docs/instruct.md,
above ~1,000 texts llmclf's default 1e-3 overshoots); its smaller cells at the default.

Usage: python benchmarks/bench_setfit.py [--data bbc-news ...] [--train 64 --train 400]
           [--method setfit --method tfidf ...] [--max-length 64] [--num-iterations 5]
"""

from __future__ import annotations

import argparse
import json
import shutil

from common import LLMCLF, RESULTS, WORK, bench_data, machine, run_timed, write_result

LOCK = "/tmp/llmclf-cpu.lock"
FULL = 10**9  # a training size larger than any set: every training text
DEFAULT_DATA = ("bbc-news", "20newsgroups", "reuters-r8")
DEFAULT_METHODS = ("tfidf", "setfit", "encoder", "head")
# instruct's prompt (instructions, the label list) and answer, in SmolLM2 tokens, on top of
# the text's --max-length: 5 short labels, 8 labels, 20 labels of up to 5 tokens
PROMPT_TOKENS = {"bbc-news": 64, "reuters-r8": 96, "20newsgroups": 256}


def method_flags(method: str, args, data: str, n_train: int) -> list[str]:
    """The options of each method's cell: its defaults, at the shared --max-length."""
    length = ["--max-length", str(args.max_length)]
    if method == "setfit":
        return [*length, "--num-iterations", str(args.num_iterations), "--epochs", "1"]
    if method == "head":
        return [*length, "--epochs", str(args.head_epochs)]
    if method == "encoder":
        return length
    if method == "instruct":  # the prompt lists the labels: its own tokens on top
        tokens = args.instruct_prompt_tokens or PROMPT_TOKENS[data]
        prompt = ["--max-length", str(args.max_length + tokens)]
        rate = ["--learning-rate", args.instruct_full_learning_rate] if n_train == FULL else []
        return [*prompt, "--epochs", str(args.instruct_epochs), *rate]
    return []  # tfidf reads every word


def learning_rate(run) -> float:
    """The learning rate a run trained at (its config.yaml)."""
    import yaml

    return float(yaml.safe_load((run / "config.yaml").read_text())["train"]["learning_rate"])


def cell(args, data: str, n_train: int, method: str) -> dict:
    """Train (or read back) one run and return its figures."""
    path = bench_data(data, n_train, args.validation, args.test)
    size = "full" if n_train == FULL else str(n_train)
    run = WORK / "setfit" / f"{data}-{size}-{method}"
    command = [
        *LLMCLF, "train", "--method", method, "--data", str(path), "--output", str(run),
        *method_flags(method, args, data, n_train),
    ]  # fmt: skip
    if not (run / "metrics.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        locked = ["flock", args.lock, *command] if args.lock else command
        run_timed(locked, run.parent / f"{run.name}.log")  # its wall time includes the wait
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "data": data,
        "train": metrics["train_examples"],
        "size": size,
        "method": method,
        "macro_f1": round(metrics["macro_f1"], 4),
        "accuracy": round(metrics["accuracy"], 4),
        "ece": round(metrics["ece"], 4) if "ece" in metrics else None,
        "test": metrics["n"],
        "train_seconds": metrics["train_seconds"],
        "predict_examples_per_s": metrics.get("eval_examples_per_s"),
        "dtype": metrics.get("dtype"),
        "learning_rate": learning_rate(run) if method == "instruct" else None,
        "setfit": metrics.get("setfit"),
        "command": " ".join(["llmclf", *command[len(LLMCLF) :]]),
    }


def cell_key(c: dict) -> tuple:
    """One cell per data set, size and method."""
    return c["data"], c["size"], c["method"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--train", action="append", default=None, help="sizes; full = all")
    parser.add_argument("--method", action="append", default=None)
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--num-iterations", type=int, default=5)
    parser.add_argument("--head-epochs", type=float, default=2.0)
    parser.add_argument("--instruct-epochs", type=float, default=1.0)
    parser.add_argument(
        "--instruct-prompt-tokens",
        type=int,
        default=None,
        help="instruct's --max-length is --max-length plus this (the prompt and answer); "
        f"default per data set: {PROMPT_TOKENS}",
    )
    parser.add_argument(
        "--instruct-full-learning-rate",
        default="2e-4",
        help="instruct's --learning-rate on the full training sets (docs/instruct.md)",
    )
    parser.add_argument("--lock", default=LOCK, help="flock file per cell ('' for none)")
    parser.add_argument("--name", default="setfit_baselines", help="results file name")
    args = parser.parse_args()
    sizes = [FULL if s == "full" else int(s) for s in (args.train or ["64", "400"])]
    results_path = RESULTS / f"{args.name}.json"
    kept = json.loads(results_path.read_text())["cells"] if results_path.is_file() else []
    settings = {
        "max_length": args.max_length,
        "validation": args.validation,
        "test": args.test,
        "setfit": f"minilm-l6, --num-iterations {args.num_iterations}, 1 epoch, logistic head",
        "encoder": "minilm-l6 fine-tuned, llmclf's defaults (5 epochs, lr 1e-4)",
        "head": f"smollm2-135m, LoRA defaults, {args.head_epochs:g} epochs",
        "tfidf": "word 1-2 grams, logistic regression (llmclf's defaults)",
        "instruct": f"smollm2-135m, LoRA defaults, {args.instruct_epochs:g} epoch(s), "
        "--max-length = the text's plus the prompt's and answer's tokens (each cell's "
        "command), score mode; learning rate 1e-3 (the default) at 64 / 400 texts, "
        f"{args.instruct_full_learning_rate} on the full sets",
    }
    for n_train in sizes:
        for data in args.data or DEFAULT_DATA:
            for method in args.method or DEFAULT_METHODS:
                result = cell(args, data, n_train, method)
                kept = [c for c in kept if cell_key(c) != cell_key(result)]
                kept.append(result)
                print(json.dumps(result))
                write_result(args.name, {"machine": machine(), "settings": settings, "cells": kept})


if __name__ == "__main__":
    main()
