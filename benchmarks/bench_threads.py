"""The CPU's threads during training and prediction: what torch and the tokenizers run
with, and what tokenization, collation and torch's thread count cost next to the model.

Each setting runs in its own process (the thread pools are fixed when a process first
uses them): the default, ``TOKENIZERS_PARALLELISM=false`` and ``OMP_NUM_THREADS=1``. In
each, a trained head run predicts the test texts (timed after a warm-up), the tokenizer
alone encodes them, and the run's collator pads training-sized batches of them. A short
``llmclf train`` records the threads a training process has. Tokenization overlapping the
model is worth building only where tokenization is a visible share of prediction: this
benchmark measures that share.

Usage: python benchmarks/bench_threads.py RUN DATA_CSV [--repeats 3] [--name NAME]
(RUN: a head run, e.g. the one bench_train.py wrote; DATA_CSV: its data, test split used)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import LLMCLF, RESULTS, WORK, machine, read_split, run_timed, write_result

SETTINGS = {
    "default": {},
    "tokenizers_parallelism_off": {"TOKENIZERS_PARALLELISM": "false"},
    "torch_1_thread": {"OMP_NUM_THREADS": "1"},
}


def fastest(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timings of ``fn()`` in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_here(run: str, data: str, repeats: int) -> dict:
    """This process's figures (called in a child process with the setting's env)."""
    import numpy as np

    from llmclf.methods.head import PaddingCollator
    from llmclf.runs import load_classifier
    from llmclf.speed import thread_settings

    texts = list(read_split(Path(data), "test")["text"])
    clf = load_classifier(run, progress=False)
    clf.progress = False
    clf.predict_proba(texts[:16])  # warm-up
    tokenize = fastest(lambda: clf._encode(texts), repeats)
    start = time.perf_counter()
    proba = clf.predict_proba(texts)
    predict = time.perf_counter() - start
    ids = clf._encode(texts)
    collator = PaddingCollator(clf.tokenizer_.pad_token_id, False)
    rows = [{"input_ids": x, "labels": 0} for x in ids]
    batch = int(clf.config_.train.batch_size)
    collate = fastest(
        lambda: [collator(rows[i : i + batch]) for i in range(0, len(rows), batch)], repeats
    )
    return {
        "threads": thread_settings(),
        "texts": len(texts),
        "tokenize_seconds": round(tokenize, 4),
        "predict_seconds": round(predict, 3),
        "tokenize_share_of_predict": round(tokenize / predict, 4),
        "predict_examples_per_s": round(len(texts) / predict, 3),
        "collate_seconds_per_batch": round(collate / -(-len(rows) // batch), 5),
        "train_batch_size": batch,
        "predicted": np.asarray(proba).argmax(1).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="threads")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_here(args.run, args.data, args.repeats)))
        return
    settings = {}
    for name, env in SETTINGS.items():
        command = [sys.executable, __file__, args.run, args.data, "--child",
                   "--repeats", str(args.repeats)]  # fmt: skip
        done = subprocess.run(
            command, env={**os.environ, **env}, capture_output=True, text=True, check=True
        )
        settings[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, {k: v for k, v in settings[name].items() if k != "predicted"})
    base = settings["default"]
    reference = base["predicted"]
    for figures in settings.values():
        figures["same_predictions_as_default"] = figures.pop("predicted") == reference
        figures["predict_speed_vs_default"] = round(
            base["predict_seconds"] / figures["predict_seconds"], 3
        )
    # the threads a training process has: a short real run
    train_run = WORK / f"{args.name}-train"
    shutil.rmtree(train_run, ignore_errors=True)
    command = [*LLMCLF, "train", "--model", "smollm2-135m", "--data", args.data,
               "--train-limit", "32", "--epochs", "1", "--max-length", "128",
               "--output", str(train_run)]  # fmt: skip
    seconds = run_timed(command, WORK / f"{args.name}-train.log")
    metrics = json.loads((train_run / "metrics.json").read_text())
    write_result(
        args.name,
        {
            "machine": machine(),
            "settings": {"run": args.run, "data": args.data, "repeats": args.repeats},
            "dtype": json.loads((Path(args.run) / "metrics.json").read_text()).get("dtype"),
            "training_process": {
                "threads": metrics["threads"],
                "eval_threads": metrics["eval_threads"],
                "seconds": round(seconds, 1),
                "dtype": metrics.get("dtype"),
            },
            **settings,
        },
        args.results_dir,
    )


if __name__ == "__main__":
    main()
