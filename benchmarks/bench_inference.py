"""Inference: llmclf's predict path vs `transformers.pipeline("text-classification")` on the
same merged model (the head run's LoRA merged into the base with PEFT), same texts, batch
size, truncation and precision. Both are timed in this process after loading, one after the
other, and their predictions are compared. On CPU the same run is also timed with --int8
(int8 weights and activations: a different numeric model, so its agreement with the float
predictions and its macro-F1 are reported beside its speed).

On a GPU, for a run trained with --quantize 4bit, --pipeline-quantize 4bit loads the merged
model in the same NF4 (bf16 compute) as llmclf's base, so both sides run 4-bit weights.

Usage: python benchmarks/bench_inference.py RUN DATA_CSV [--batch-size 16] [--name NAME]
           [--pipeline-quantize none|4bit] [--no-fp32]
(RUN: a head run, e.g. the one bench_train.py wrote; DATA_CSV: its data, test split used)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from common import (
    RESULTS,
    WORK,
    machine,
    matmul_peak_gflops,
    model_flops_per_token,
    read_split,
    real_tokens,
    write_result,
)


def merged_model(run: Path, folder: Path) -> Path:
    """The run's adapter merged into its base, saved as a plain transformers folder."""
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    if (folder / "config.json").is_file():
        return folder
    labels = json.loads((run / "labels.json").read_text())["classes"]
    tokenizer = AutoTokenizer.from_pretrained(run)
    # on a GPU the merge runs there: an 8B base in bf16 is 16 GB of CPU work otherwise
    device_map = {"": 0} if torch.cuda.is_available() else None
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        run,
        device_map=device_map,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={c: i for i, c in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id,
    ).merge_and_unload()
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--name", default=None)
    parser.add_argument(
        "--pipeline-quantize",
        choices=("none", "4bit"),
        default="none",
        help="load the pipeline's merged model in 4-bit NF4, like a --quantize 4bit run's base",
    )
    parser.add_argument(
        "--no-fp32",
        action="store_true",
        help="skip llmclf at --dtype float32 beside the dtype --dtype auto chose",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch
    from sklearn.metrics import f1_score
    from transformers import AutoConfig, BitsAndBytesConfig, pipeline

    from llmclf.runs import load_classifier

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = args.name or f"inference_{args.run.name}"
    merged = merged_model(args.run, WORK / f"{args.run.name}-merged")
    test = read_split(args.data, "test")
    texts = list(test["text"])
    peaks = {
        torch.float32: matmul_peak_gflops(device, torch.float32),
        torch.bfloat16: matmul_peak_gflops(device, torch.bfloat16),
    }

    def timed_predict(int8: bool, dtype: str = "auto") -> tuple[np.ndarray, float, object, object]:
        """llmclf's predictions, seconds, model config and dtype, after a warm-up batch."""
        classifier = load_classifier(
            args.run, int8=int8, eval_batch_size=args.batch_size, device=device, dtype=dtype
        )
        classifier.progress = False
        classifier.predict_proba(texts[: args.batch_size])  # warm-up
        start = time.perf_counter()
        predicted = np.array(classifier.predict(texts))
        seconds = time.perf_counter() - start
        dtype = next(classifier.model_.parameters()).dtype
        return predicted, seconds, classifier.config_.model, dtype

    ours, ours_seconds, model_config, dtype = timed_predict(int8=False)
    max_length = model_config.max_length
    # --int8 is a CPU feature, for full-precision runs
    int8 = device == "cpu" and model_config.quantize == "none"
    if int8:
        ours_int8, int8_seconds, _, _ = timed_predict(int8=True)

    fp32 = None
    if dtype != torch.float32 and not args.no_fp32:  # auto chose another: fp32 beside it
        ours_fp32, fp32_seconds, _, _ = timed_predict(int8=False, dtype="float32")
        fp32 = (ours_fp32, fp32_seconds)

    def timed_pipeline(dtype=None):
        """The pipeline at ``dtype`` (None: its own default, what a user gets)."""
        kwargs = {} if dtype is None else {"dtype": dtype}
        if args.pipeline_quantize == "4bit":  # a 4-bit model is placed when loaded, not moved
            compute = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
            kwargs["model_kwargs"] = {
                "quantization_config": BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=compute,
                ),
                "device_map": {"": 0 if device == "cuda" else "cpu"},
            }
        else:
            kwargs["device"] = device
        classify = pipeline("text-classification", model=str(merged), top_k=1, **kwargs)
        options = {"batch_size": args.batch_size, "truncation": True, "max_length": max_length}
        classify(texts[: args.batch_size], **options)  # warm-up
        start = time.perf_counter()
        outputs = classify(texts, **options)
        seconds = time.perf_counter() - start
        used = next(classify.model.parameters()).dtype
        return np.array([out[0]["label"] for out in outputs]), seconds, used, classify

    theirs, pipeline_seconds, pipeline_dtype, classify = timed_pipeline()
    same = None
    if pipeline_dtype != dtype:  # and at llmclf's dtype: the kernel-for-kernel figure
        same = timed_pipeline(dtype)

    tokens = real_tokens(classify.tokenizer, texts, max_length)
    config = AutoConfig.from_pretrained(merged)
    flops = model_flops_per_token(config, sum(tokens) / len(tokens) / 2, training=False)
    achieved = flops * sum(tokens) / ours_seconds / 1e9
    peak = peaks.get(dtype, peaks[torch.float32])  # the peak of the dtype llmclf ran in
    gold = np.array(test["label"])

    def side(seconds: float, predicted: np.ndarray) -> dict:
        return {
            "seconds": round(seconds, 2),
            "examples_per_s": round(len(texts) / seconds, 2),
            "real_tokens_per_s": round(sum(tokens) / seconds, 1),
            "accuracy": round(float((predicted == gold).mean()), 4),
            "macro_f1": round(float(f1_score(gold, predicted, average="macro")), 4),
        }

    extra = {}
    if same is not None:
        extra["pipeline_same_dtype"] = {**side(same[1], same[0]), "dtype": str(same[2])}
        extra["inference_speedup_vs_pipeline_same_dtype"] = round(same[1] / ours_seconds, 2)
    else:
        extra["inference_speedup_vs_pipeline_same_dtype"] = round(
            pipeline_seconds / ours_seconds, 2
        )
    if fp32 is not None:
        extra["llmclf_fp32"] = side(fp32[1], fp32[0])
        extra["bf16_inference_speedup_vs_fp32"] = round(fp32[1] / ours_seconds, 2)
        extra["agreement_with_fp32"] = round(float((fp32[0] == ours).mean()), 4)
    if int8:
        extra |= {
            "llmclf_int8": side(int8_seconds, ours_int8),
            "int8_agreement_with_float": round(float((ours_int8 == ours).mean()), 4),
            "int8_speedup_vs_float": round(ours_seconds / int8_seconds, 2),
            "inference_int8_speedup_vs_pipeline": round(pipeline_seconds / int8_seconds, 2),
        }
    write_result(
        name,
        {
            "machine": machine(),
            "settings": {
                "run": str(args.run),
                "texts": len(texts),
                "batch_size": args.batch_size,
                "max_length": max_length,
                "dtype": str(dtype),
                "device": device,
                "pipeline_quantize": args.pipeline_quantize,
            },
            "real_tokens": sum(tokens),
            "matmul_peak_gflops": round(peak, 1),
            "matmul_peak_gflops_by_dtype": {str(k): round(v, 1) for k, v in peaks.items()},
            "llmclf": {**side(ours_seconds, ours), "achieved_gflops": round(achieved, 1)},
            "pipeline": {**side(pipeline_seconds, theirs), "dtype": str(pipeline_dtype)},
            "prediction_agreement": round(float((ours == theirs).mean()), 4),
            "inference_speedup_vs_pipeline": round(pipeline_seconds / ours_seconds, 2),
            "fraction_of_matmul_peak": round(achieved / peak, 3),
            **extra,
        },
        args.results_dir,
    )


if __name__ == "__main__":
    main()
