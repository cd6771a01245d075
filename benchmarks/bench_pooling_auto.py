"""Which cheap rule picks the pooling that wins on test? On each data set, the full LoRA
runs with `--pooling last` and `--pooling mean` (test macro-F1, validation macro-F1 after
each epoch), and `--pooling auto --lora none` (a head on each pooling's frozen features,
its figures in metrics.json); then what each rule would have chosen, against the test
winner:

- frozen features: the head on each pooling's frozen features (what `auto` does for a
  `--lora none` run, where it is exact; option (a) of issue 34 for a LoRA run);
- first epoch: the validation figure after the first epoch of each LoRA run (option (b):
  the real run's first epoch, same learning-rate schedule);
- full runs: the best validation figure of each full LoRA run (what `auto` does for a LoRA
  run: twice the training).

McNemar's exact test on the two LoRA runs' test answers says whether the test winner is a
winner at all (a margin of a few texts is no evidence either way). Every run a fresh
`llmclf train` process with the same settings; the frozen-feature run with a cold feature
cache, so its seconds include both feature passes. `--reuse` keeps a run folder that
already has its metrics.json (a killed benchmark goes on where it stopped).

Usage: flock /tmp/llmclf-cpu.lock python benchmarks/bench_pooling_auto.py \
           [--data bbc-news --data 20newsgroups --data reuters-r8] [--train 300] \
           [--epochs 2] [--max-length 64] [--seed 0] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil

from common import LLMCLF, WORK, bench_data, cold_feature_cache, machine, run_timed, write_result

POOLINGS = ("last", "mean")


def validation_by_epoch(run) -> dict[float, float]:
    """The validation macro-F1 of each evaluation in the run's train_log.json."""
    history = json.loads((run / "train_log.json").read_text())
    return {float(e["epoch"]): float(e["eval_macro_f1"]) for e in history if "eval_macro_f1" in e}


def winner(scores: dict[str, float]) -> str:
    """The pooling with the higher figure; a tie goes to last (as auto breaks one)."""
    return max(POOLINGS, key=lambda p: (scores[p], -POOLINGS.index(p)))


def significance(runs: dict) -> dict:
    """McNemar's exact test between the last and mean runs' test answers."""
    import numpy as np

    from llmclf.evaluation.stats import mcnemar_test

    correct = {}
    for pooling, run in runs.items():
        rows = [json.loads(line) for line in (run / "test_predictions.jsonl").open()]
        correct[pooling] = np.array([r["label"] == r["prediction"] for r in rows])
    result = mcnemar_test(correct["last"], correct["mean"])
    return {"only_last_right": result.only_a, "only_mean_right": result.only_b,
            "mcnemar_p": round(result.p_value, 4)}  # fmt: skip


def train(args, path, run, extra: list[str], env=None) -> tuple[dict, float | None, str]:
    """One `llmclf train` run (kept with --reuse when finished): metrics, wall, command."""
    command = [
        *LLMCLF, "train", "--method", "head", "--model", args.model, "--data", str(path),
        "--max-length", str(args.max_length), "--epochs", str(args.epochs),
        "--seed", str(args.seed), *extra, "--output", str(run),
    ]  # fmt: skip
    wall = None
    if not (args.reuse and (run / "metrics.json").is_file()):
        shutil.rmtree(run, ignore_errors=True)
        wall = round(run_timed(command, run.parent / f"{run.name}.log", env), 1)
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics, wall, " ".join(["llmclf", *command[len(LLMCLF) :]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--train", type=int, default=300, help="training examples")
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="sample and training seed")
    parser.add_argument("--reuse", action="store_true", help="keep finished run folders")
    parser.add_argument("--name", default="pooling_auto", help="results file name")
    args = parser.parse_args()
    datasets = args.data or ["bbc-news", "20newsgroups", "reuters-r8"]
    result: dict = {"machine": machine(), "settings": vars(args) | {"data": datasets}}
    result["datasets"] = {}
    for data in datasets:
        path = bench_data(data, args.train, args.validation, args.test, seed=args.seed)
        folder = WORK / args.name
        runs, folders = {}, {}
        for pooling in POOLINGS:
            folders[pooling] = folder / f"{data}-{pooling}"
            metrics, wall, command = train(args, path, folders[pooling], ["--pooling", pooling])
            epochs = validation_by_epoch(folders[pooling])
            runs[pooling] = {
                "test_macro_f1": round(metrics["macro_f1"], 4),
                "validation_by_epoch": {str(e): round(f, 4) for e, f in epochs.items()},
                "validation_best": round(max(epochs.values()), 4),
                "validation_first_epoch": round(epochs[min(epochs)], 4),
                "train_seconds": metrics["train_seconds"],
                "wall_seconds": wall,
                "dtype": metrics.get("dtype"),
                "command": command,
            }
        frozen, wall, command = train(
            args, path, folder / f"{data}-auto-frozen",
            ["--pooling", "auto", "--lora", "none"], cold_feature_cache(),
        )  # fmt: skip
        record = frozen["pooling_auto"]
        test = {p: runs[p]["test_macro_f1"] for p in POOLINGS}
        rules = {
            "frozen features": record["chosen"],
            "first epoch": winner({p: runs[p]["validation_first_epoch"] for p in POOLINGS}),
            "full runs (auto with LoRA)": winner({p: runs[p]["validation_best"] for p in POOLINGS}),
        }
        result["datasets"][data] = {
            "runs": runs,
            "frozen_features": {
                **record,
                "test_macro_f1_of_the_lora_none_run": round(frozen["macro_f1"], 4),
                "train_seconds": frozen["train_seconds"],
                "command": command,
            },
            "test_winner": winner(test),
            "test_margin": round(abs(test["mean"] - test["last"]), 4),
            "test_significance": significance(folders),
            "choices": {
                rule: {"chose": p, "matched_test": p == winner(test)} for rule, p in rules.items()
            },
        }
        print(data, json.dumps(result["datasets"][data]["choices"]), test, flush=True)
        write_result(args.name, result)


if __name__ == "__main__":
    main()
