"""Instruct prediction: `--predict-mode score` (every label scored over one shared prompt
pass) vs `--predict-mode generate` (greedy decoding, then parsing: the paper's way) on the
same model, prompts, texts and batch size, with multi-token labels (20 Newsgroups names such
as comp.sys.ibm.pc.hardware are 5-9 SmolLM2 tokens).

By default the untrained model is used (zero-shot): no training budget is needed to compare
the two decoders, but its answers ramble (generation runs to --max-new-tokens) and its F1 is
near chance. --train N first trains an instruct run on N training examples (and --validation
M) of a stratified sample, then compares the two modes on that run, whose answers close
after the label; --run RUN compares them on an existing run.

Usage: python benchmarks/bench_instruct.py [--data 20newsgroups] [--test 150]
           [--train 240 --validation 60 --epochs 2 | --run RUN]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from common import LLMCLF, RESULTS, WORK, data_file, machine, read_split, run_timed, write_result

MODES = {
    "score": ["--predict-mode", "score"],
    "score_whole_prompts": ["--predict-mode", "score", "--no-share-prompt-prefix"],
    "generate": ["--predict-mode", "generate"],
}


def naive_scores(clf, texts: list[str]) -> np.ndarray:
    """Label scores without prompt reuse: every label's answer appended to the prompt and the
    whole sequence run through the model, one batch of all labels per text (what a user
    writes from the docs: model(prompt + answer) per candidate)."""
    import torch

    pieces = clf.format_.pieces
    answers = [pieces.complete((j,)) for j in range(len(pieces.first))]
    out = np.zeros((len(texts), len(answers)))
    for i, prompt in enumerate(clf._encode(texts)):
        width = len(prompt) + max(len(a) for a in answers)
        ids = torch.full((len(answers), width), clf.tokenizer_.pad_token_id)
        mask = torch.zeros_like(ids)
        for j, answer in enumerate(answers):
            ids[j, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            mask[j, : len(prompt) + len(answer)] = 1
        with torch.no_grad():
            # in fp32, as llmclf's scorer does (a bf16 log-softmax over the vocabulary
            # alone is off by up to ~0.06 per token)
            logits = clf.model_(input_ids=ids, attention_mask=mask).logits
            logprobs = logits.float().log_softmax(-1)
        for j, answer in enumerate(answers):
            steps = torch.arange(len(answer)) + len(prompt) - 1
            out[i, j] = logprobs[j, steps, torch.tensor(answer)].sum().item()
    return out


def prompt_reuse(run: Path, texts: list[str]) -> dict:
    """The cached-prompt scorer vs naive per-label passes on the same texts."""
    from llmclf.runs import load_classifier

    clf = load_classifier(run, progress=False)
    clf.progress = False
    clf.predict_logits(texts[:2])  # warm-up
    start = time.perf_counter()
    cached = clf.predict_logits(texts)
    cached_seconds = time.perf_counter() - start
    start = time.perf_counter()
    naive = naive_scores(clf, texts)
    naive_seconds = time.perf_counter() - start
    return {
        "texts": len(texts),
        "cached_examples_per_s": round(len(texts) / cached_seconds, 3),
        "naive_examples_per_s": round(len(texts) / naive_seconds, 3),
        "max_abs_score_difference": float(np.abs(cached - naive).max()),
        "same_ranking": bool((cached.argmax(1) == naive.argmax(1)).all()),
        "prompt_reuse_speedup": round(naive_seconds / cached_seconds, 2),
    }


def prompt_composition(run: Path, texts: list[str]) -> dict:
    """Mean prompt tokens per text, and how many of them every prompt shares."""
    from llmclf.methods.instruct.scoring import common_prefix_length
    from llmclf.runs import load_classifier

    prompts = load_classifier(run, progress=False)._encode(texts)
    return {
        "prompt_tokens_mean": round(sum(len(p) for p in prompts) / len(prompts), 1),
        "shared_prefix_tokens": common_prefix_length(prompts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--data", default="20newsgroups", help="a built-in set, or a CSV with a split column"
    )
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--run", default=None, help="a trained instruct run (default: zero-shot)")
    parser.add_argument("--train", type=int, default=0, help="train a run on N examples first")
    parser.add_argument("--validation", type=int, default=60)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--name", default=None)
    parser.add_argument(
        "--reuse-texts", type=int, default=8, help="texts for the prompt-reuse comparison"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="which decoders to time (score_whole_prompts: score without the shared prefix)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from llmclf.backbone import model_source

    if args.run and args.train:
        raise SystemExit("give --run or --train, not both")
    if "score" not in args.modes:
        raise SystemExit("--modes needs score: the prompt figures are read from its run")
    name = args.name or f"instruct_{args.data}" + (f"_trained{args.train}" if args.train else "")
    training = None
    zero_shot = args.run is None and not args.train
    if args.train:
        data = data_file(args.data, args.train, args.validation, args.test)
        training = {"examples": args.train, "epochs": args.epochs}
        # llmclf's default (the prompts' shared prefix run once per batch), then without
        for label, extra in (
            ("shared_prefix", []),
            ("whole_prompts", ["--no-share-prompt-prefix"]),
        ):
            run = WORK / f"{name}-run-{label}"
            shutil.rmtree(run, ignore_errors=True)
            command = [*LLMCLF, "train", "--method", "instruct", "--model", args.model,
                       "--data", str(data), "--max-length", str(args.max_length),
                       "--epochs", str(args.epochs), "--eval-batch-size", str(args.batch_size),
                       "--output", str(run), *extra]  # fmt: skip
            run_timed(command, WORK / f"{name}-train-{label}.log")
            metrics = json.loads((run / "metrics.json").read_text())
            training[label] = {
                "train_seconds": metrics["train_seconds"],
                "test_macro_f1_score_mode": round(metrics["macro_f1"], 4),
                "trainable_params": metrics["trainable_params"],
                "dtype": metrics.get("dtype"),
            }
            print("train", label, training[label])
        training["prefix_sharing_train_speedup"] = round(
            training["whole_prompts"]["train_seconds"] / training["shared_prefix"]["train_seconds"],
            2,
        )
        args.run = str(WORK / f"{name}-run-shared_prefix")
    else:
        data = data_file(args.data, 0, 0, args.test)
        args.test = len(read_split(data, "test"))  # a CSV's own test split decides
    results = {}
    for mode in args.modes:
        options = MODES[mode]
        output = WORK / f"{name}-{mode}"
        shutil.rmtree(output, ignore_errors=True)
        if args.run:
            command = [*LLMCLF, "evaluate", args.run]
        else:
            command = [*LLMCLF, "evaluate", "--zero-shot", "--model", args.model,
                       "--max-length", str(args.max_length)]  # fmt: skip
        command += ["--data", str(data), *options, "--output", str(output),
                    "--eval-batch-size", str(args.batch_size)]  # fmt: skip
        run_timed(command, WORK / f"{name}-{mode}.log")
        metrics = json.loads((output / "metrics.json").read_text())
        results[mode] = {
            "macro_f1": round(metrics["macro_f1"], 4),
            "accuracy": round(metrics["accuracy"], 4),
            "seconds": metrics["eval_seconds"],
            "examples_per_s": metrics["eval_examples_per_s"],
            "dtype": metrics.get("eval_dtype", metrics.get("dtype")),
            **({"unparsed_rate": metrics["unparsed_rate"]} if "unparsed_rate" in metrics else {}),
        }
        print(mode, results[mode])
    if {"score", "score_whole_prompts"} <= set(results):
        results["prefix_sharing_score_speedup"] = round(
            results["score_whole_prompts"]["seconds"] / results["score"]["seconds"], 2
        )
    tokenizer = AutoTokenizer.from_pretrained(model_source(args.model))
    labels = sorted(set(__import__("pandas").read_csv(data)["label"]))
    label_tokens = [len(tokenizer(label, add_special_tokens=False).input_ids) for label in labels]
    source = Path(args.run) if args.run else WORK / f"{name}-score"  # a zero-shot run folder
    composition = prompt_composition(source, list(read_split(data, "test")["text"]))
    test_texts = list(read_split(data, "test")["text"])[: args.reuse_texts]
    reuse = prompt_reuse(WORK / f"{name}-score", test_texts) if args.reuse_texts else None
    print("prompt reuse", reuse)
    speedup = {}
    if {"score", "generate"} <= set(results):
        ratio = results["generate"]["seconds"] / results["score"]["seconds"]
        speedup["score_speedup_vs_generate"] = round(ratio, 2)
    write_result(
        name,
        {
            "machine": machine(),
            "settings": {
                **vars(args),
                "results_dir": str(args.results_dir),
                "zero_shot": zero_shot,
                "labels": len(labels),
            },
            "dtype": results[args.modes[0]]["dtype"],
            "training": training,
            "label_tokens_min_mean_max": [
                min(label_tokens),
                round(sum(label_tokens) / len(label_tokens), 1),
                max(label_tokens),
            ],
            **composition,
            **results,
            "prompt_reuse": reuse,
            **speedup,
        },
        args.results_dir,
    )


if __name__ == "__main__":
    main()
