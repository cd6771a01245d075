"""Long texts: `llmclf train --method head` with --long-text truncate, head-tail and chunks
(mean, max, attention), side by side at the same training budget (examples, epochs, batch,
learning rates) on each data set; every run a fresh `llmclf train` process, so its peak RSS
is its own.

Per data set it also measures how many texts are longer than one window of --max-length
tokens, and the windows chunks reads (at most --max-chunks per text), from which the cost
per extra window follows: (chunks seconds - truncate seconds) / (windows - texts).

``--text-tokens LO HI`` cuts every text (each split) to a seeded random length of LO to HI
tokens first, so that texts are one to a few windows long, as short reviews are: the case
where a chunked text's last window can be a fragment of a few tokens.

Usage: flock /tmp/llmclf-bench.lock python benchmarks/bench_long.py \
           [--data bbc-news --data 20newsgroups] [--train 200] [--max-length 128] ...
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
from pathlib import Path

from common import LLMCLF, WORK, bench_data, machine, read_split, run_timed, write_result

VARIANTS = {
    "truncate": ["--long-text", "truncate"],
    "head-tail": ["--long-text", "head-tail"],
    "chunks mean": ["--long-text", "chunks", "--chunk-aggregation", "mean"],
    "chunks max": ["--long-text", "chunks", "--chunk-aggregation", "max"],
    "chunks attention": ["--long-text", "chunks", "--chunk-aggregation", "attention"],
}


def length_figures(tokenizer, texts: list[str], max_length: int, max_chunks: int) -> dict:
    """Share of texts over one window, their token lengths, and the windows chunks reads."""
    from llmclf.long_text import chunk_windows

    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    windows = [len(w) for w in chunk_windows(tokenizer, texts, max_length, 0, max_chunks)]
    return {
        "texts": len(texts),
        "share_longer_than_one_window": round(sum(n > max_length for n in lengths) / len(texts), 4),
        "median_tokens": int(statistics.median(lengths)),
        "share_read_whole_by_chunks": round(
            sum(n <= max_length * max_chunks - (max_chunks - 1) for n in lengths) / len(texts), 4
        ),
        "mean_windows": round(sum(windows) / len(windows), 3),
        "windows": sum(windows),
    }


def cut_texts(tokenizer, path: Path, low: int, high: int, seed: int = 0) -> Path:
    """A copy of a benchmark CSV with each text cut to its first n tokens (no special
    ones), n drawn uniformly from [low, high] per row with ``seed``."""
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False)
    rng = random.Random(seed)
    ids = tokenizer(list(frame["text"]), add_special_tokens=False)["input_ids"]
    frame["text"] = [tokenizer.decode(row[: rng.randint(low, high)]) for row in ids]
    out = path.with_name(f"{path.stem}-tokens{low}-{high}.csv")
    frame.to_csv(out, index=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-chunks", type=int, default=4)
    parser.add_argument("--train", type=int, default=200, help="training examples")
    parser.add_argument("--validation", type=int, default=40)
    parser.add_argument("--test", type=int, default=160)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variant", action="append", default=None, choices=list(VARIANTS))
    parser.add_argument(
        "--text-tokens",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="cut each text to a seeded random length of LO to HI tokens first",
    )
    parser.add_argument("--name", default="long_text", help="results file name")
    args = parser.parse_args()
    datasets = args.data or ["bbc-news", "20newsgroups"]
    variants = args.variant or list(VARIANTS)

    from llmclf.backbone import load_tokenizer, model_source

    tokenizer = load_tokenizer(model_source(args.model), "right", append_eos=True)
    settings = {
        "model": args.model,
        "max_length": args.max_length,
        "max_chunks": args.max_chunks,
        "chunk_stride": 0,
        "train": args.train,
        "validation": args.validation,
        "test": args.test,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "dtype": "auto",
        "pooling": "last",
        "text_tokens": args.text_tokens,
    }
    result: dict = {"machine": machine(), "settings": settings, "datasets": {}}
    for data in datasets:
        path = bench_data(data, args.train, args.validation, args.test)
        if args.text_tokens:
            path = cut_texts(tokenizer, path, *args.text_tokens)
        lengths = {
            split: length_figures(
                tokenizer, list(read_split(path, split)["text"]), args.max_length, args.max_chunks
            )
            for split in ("train", "test")
        }
        rows = {}
        for variant in variants:
            run = WORK / args.name / f"{data}-{variant.replace(' ', '-')}"
            shutil.rmtree(run, ignore_errors=True)
            command = [
                *LLMCLF,
                "train",
                "--method",
                "head",
                "--model",
                args.model,
                "--data",
                str(path),
                "--max-length",
                str(args.max_length),
                "--max-chunks",
                str(args.max_chunks),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--dtype",
                "auto",
                *VARIANTS[variant],
                "--output",
                str(run),
            ]
            wall = run_timed(command, WORK / args.name / f"{run.name}.log")
            m = json.loads((run / "metrics.json").read_text())
            rows[variant] = {
                "macro_f1": round(m["macro_f1"], 4),
                "accuracy": round(m["accuracy"], 4),
                "train_seconds": m["train_seconds"],
                "train_examples_per_s": round(args.train * args.epochs / m["train_seconds"], 3),
                "test_seconds": m["eval_seconds"],
                "test_examples_per_s": m["eval_examples_per_s"],
                "peak_rss_mb": m["peak_rss_mb"],
                "dtype": m.get("dtype"),
                "wall_seconds": round(wall, 1),
                "command": " ".join(["llmclf", *command[len(LLMCLF) :]]),
            }
            print(data, variant, rows[variant])
        if "truncate" in rows:
            base = rows["truncate"]
            for variant, row in rows.items():
                if not variant.startswith("chunks"):
                    continue
                extra_train = lengths["train"]["windows"] - lengths["train"]["texts"]
                extra_test = lengths["test"]["windows"] - lengths["test"]["texts"]
                row["train_seconds_per_extra_window"] = (
                    round((row["train_seconds"] - base["train_seconds"]) / extra_train, 3)
                    if extra_train
                    else None
                )
                row["test_seconds_per_extra_window"] = (
                    round((row["test_seconds"] - base["test_seconds"]) / extra_test, 4)
                    if extra_test
                    else None
                )
                row["macro_f1_minus_truncate"] = round(row["macro_f1"] - base["macro_f1"], 4)
        result["datasets"][data] = {"lengths": lengths, "rows": rows}
        write_result(args.name, result)  # after each data set: a partial run keeps them


if __name__ == "__main__":
    main()
