"""Exports side by side: PyTorch (fp32 and `--dtype auto`), the transformers pipeline on the
merged export, the ONNX exports (fp32, int8, int4) and the GGUF exports (f32, f16, q8_0,
q4_k_m; llama.cpp through llama-cpp-python) of one run, on its test set.

Each variant runs in its own process (so its peak RSS is its own), one after the other on
the same machine: cold load time, single-text latency p50 / p95 (batch 1, what an app
does, after a warm-up), throughput at batch 16 over the test texts, macro-F1 on their gold
labels and agreement with PyTorch fp32's labels; plus each artefact's size on disk and how
long its export took.

Usage: python benchmarks/bench_export.py RUN [--name NAME] [--limit N] [--latency-texts 50]
(RUN: e.g. the `make demo` run, runs/demo; the exports go to benchmarks/work/)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import WORK, machine, write_result

EXPORTS = {  # variant: (--format, --quantize)
    "onnx_fp32": ("onnx", "none"),
    "onnx_int8": ("onnx", "int8"),
    "onnx_int4": ("onnx", "int4"),
    "gguf_f32": ("gguf", "none"),
    "gguf_f16": ("gguf", "f16"),
    "gguf_q8_0": ("gguf", "q8_0"),
    "gguf_q4_k_m": ("gguf", "q4_k_m"),
}
VARIANTS = ("torch_fp32", "torch_auto", "pipeline", *EXPORTS)
EIGHT_BIT = ("onnx_int8", "gguf_q8_0")
FOUR_BIT = ("onnx_int4", "gguf_q4_k_m")
BATCH = 16


def test_set(run: Path, limit: int | None) -> tuple[list[str], list[str]]:
    lines = (run / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines][:limit]
    return [r["text"] for r in rows], [r["label"] for r in rows]


# ---------------------------------------------------------------------------------------
# one variant, in its own process
# ---------------------------------------------------------------------------------------


def load(variant: str, run: Path, folder: Path):
    """(predict(texts) -> labels, predict one text, the dtype it computes in) for ``variant``."""
    if variant.startswith("torch"):
        from llmclf.runs import load_classifier

        dtype = "float32" if variant == "torch_fp32" else "auto"
        clf = load_classifier(run, progress=False, dtype=dtype, eval_batch_size=BATCH)
        return clf.predict, clf.predict, str(clf.dtype_).removeprefix("torch.")
    if variant == "pipeline":
        import torch
        from transformers import pipeline

        classify = pipeline("text-classification", model=str(folder), top_k=1, device="cpu")
        options = {"truncation": True, "max_length": _max_length(run)}

        def many(texts):
            with torch.inference_mode():
                return [o[0]["label"] for o in classify(texts, batch_size=BATCH, **options)]

        dtype = str(next(classify.model.parameters()).dtype).removeprefix("torch.")
        return many, lambda text: many([text])[0], dtype
    if variant.startswith("gguf"):
        from llmclf.methods.gguf import GgufClassifier

        clf = GgufClassifier(folder, batch_size=BATCH)
        return clf.predict, clf.predict, {"none": "float32"}.get(clf.quantize_, clf.quantize_)
    from llmclf.methods.onnx import OnnxClassifier

    clf = OnnxClassifier(folder, batch_size=BATCH)
    dtype = {"none": "float32"}.get(clf.quantize_, f"{clf.quantize_} weights, int8 compute")
    return clf.predict, clf.predict, dtype


def _max_length(run: Path) -> int:
    import yaml

    return int(yaml.safe_load((run / "config.yaml").read_text())["model"]["max_length"])


def peak_rss_mb() -> float:
    """This process's own high-water RSS (VmHWM). Not getrusage: a child started from a
    big parent inherits the parent's maximum across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(variant: str, run: Path, folder: Path, texts_file: Path, latency_texts: int) -> dict:
    texts = json.loads(texts_file.read_text())
    start = time.perf_counter()
    many, one, dtype = load(variant, run, folder)
    load_s = time.perf_counter() - start
    for text in texts[:3]:  # warm-up
        one(text)
    latencies = []
    for text in texts[:latency_texts]:
        start = time.perf_counter()
        one(text)
        latencies.append(time.perf_counter() - start)
    many(texts[:BATCH])  # warm-up at the batch size
    start = time.perf_counter()
    labels = many(texts)
    seconds = time.perf_counter() - start
    return {
        "dtype": dtype,
        "load_s": round(load_s, 3),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)) * 1000, 2),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)) * 1000, 2),
        "throughput_per_s": round(len(texts) / seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "labels": list(labels),
    }


# ---------------------------------------------------------------------------------------
# the side-by-side run
# ---------------------------------------------------------------------------------------


def folder_mb(path: Path, pattern: str) -> float:
    return round(sum(p.stat().st_size for p in path.rglob(pattern)) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?")
    parser.add_argument("--name", default="export")
    parser.add_argument("--limit", type=int, default=None, help="the first N test texts")
    parser.add_argument("--latency-texts", type=int, default=50)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--reuse", action="store_true", help="measure the exports a previous run left in work/"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    run = Path(args.run).resolve()
    if args.worker:
        figures = worker(
            args.worker, run, Path(args.folder), Path(args.texts_file), args.latency_texts
        )
        print(json.dumps(figures))
        return

    from sklearn.metrics import f1_score

    from llmclf.errors import LlmclfError
    from llmclf.runs.export import export_run

    texts, gold = test_set(run, args.limit)
    work = WORK / f"export_{run.name}"
    work.mkdir(parents=True, exist_ok=True)
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))
    variants = args.variants.split(",")
    folders, exported, refused = {}, {}, {}
    for variant in variants:
        if variant in EXPORTS or variant == "pipeline":
            name = "merged" if variant == "pipeline" else variant
            folder = folders[variant] = work / name
            said_no = work / f"{name}.refused"
            if args.reuse and (folder / "llmclf_export.json").is_file():  # written before
                info = json.loads((folder / "llmclf_export.json").read_text())
                exported[variant] = {"export_s": info.get("export_s"), "info": info}
                continue
            if args.reuse and said_no.is_file():
                refused[variant] = said_no.read_text().strip()
                continue
            shutil.rmtree(folder, ignore_errors=True)
            start = time.perf_counter()
            try:
                if variant == "pipeline":
                    info = export_run(run, "merged", folder)
                else:
                    format, quantize = EXPORTS[variant]
                    info = export_run(run, format, folder, quantize=quantize)
            except LlmclfError as exc:  # the check refused it: a result too
                refused[variant] = str(exc)
                said_no.write_text(str(exc))
                print(variant, "refused:", exc, flush=True)
                continue
            seconds = round(time.perf_counter() - start, 1)
            exported[variant] = {"export_s": seconds, "info": info}
            info_file = folder / "llmclf_export.json"  # for --reuse
            info_file.write_text(
                json.dumps({**json.loads(info_file.read_text()), "export_s": seconds})
            )
    results = {}
    for variant in variants:
        if variant in refused:
            results[variant] = {"refused": refused[variant]}
            continue
        folder = folders.get(variant, run)
        command = [sys.executable, __file__, str(run), "--worker", variant]
        command += ["--folder", str(folder), "--texts-file", str(texts_file)]
        command += ["--latency-texts", str(args.latency_texts)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        labels = figures.pop("labels")
        figures["macro_f1"] = round(float(f1_score(gold, labels, average="macro")), 4)
        figures["_labels"] = labels
        if variant in EXPORTS and EXPORTS[variant][0] == "onnx":
            figures["size_mb"] = folder_mb(folder / "onnx", "*.onnx*")
        elif variant in EXPORTS:  # the GGUF and the head beside it
            figures["size_mb"] = folder_mb(folder, "*.gguf") + folder_mb(folder, "head.*")
        elif variant == "pipeline" or "pipeline" in folders:
            figures["size_mb"] = folder_mb(folders.get("pipeline", folder), "*.safetensors")
        if variant in exported:
            figures["export_s"] = exported[variant]["export_s"]
            figures["check"] = exported[variant]["info"].get("parity")
        results[variant] = figures
        print(variant, {k: v for k, v in figures.items() if k != "_labels"}, flush=True)
    reference = results.get("torch_fp32", {}).get("_labels")
    for figures in results.values():
        labels = figures.pop("_labels", None)
        if reference is not None and labels is not None:
            figures["agreement_vs_torch_fp32"] = round(
                float(np.mean(np.array(labels) == np.array(reference))), 4
            )
    auto = results.get("torch_auto")
    summary = {}
    measured = {k: v for k, v in results.items() if "refused" not in v}
    eight = [measured[v] for v in EIGHT_BIT if v in measured]
    if auto and eight:
        best = max(eight, key=lambda r: r["throughput_per_s"])
        summary["best_8bit_speedup_vs_torch_auto"] = round(
            best["throughput_per_s"] / auto["throughput_per_s"], 2
        )
        summary["best_8bit_rss_ratio"] = round(
            min(r["peak_rss_mb"] for r in eight) / auto["peak_rss_mb"], 3
        )
    four = [measured[v] for v in FOUR_BIT if v in measured]
    if four:
        summary["best_4bit_size_mb"] = min(r["size_mb"] for r in four)
    exports = [measured[v] for v in EXPORTS if v in measured]
    if auto and exports:
        best = min(e["latency_ms_p50"] for e in exports)
        summary["best_single_text_latency_ratio"] = round(best / auto["latency_ms_p50"], 3)
    result = {
        "machine": machine(),
        "run": args.run,
        "texts": len(texts),
        "batch_size": BATCH,
        "latency_texts": min(args.latency_texts, len(texts)),
        "variants": results,
        **summary,
    }
    write_result(args.name, result)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
