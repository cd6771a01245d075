"""Scale: memory of streamed prediction and of training against the number of rows, and
the rows/s of one Ray Data worker beside plain ``llmclf predict`` (issue 17).

Every figure comes from its own subprocess (peak RSS is per process):
- ``stream``: a TF-IDF run predicts 10k and 1M short rows, streamed (``--chunk-rows``
  4096) and, for comparison, in one chunk as large as the file (what predict did before
  it streamed);
- ``train``: ``llmclf train`` on 20newsgroups with ``--train-limit`` 1,000 and 10,000 on a
  tiny random Llama with SmolLM2's tokenizer (the memory that grows is the data's);
- ``ray``: the SmolLM2 head run of ``train_20newsgroups_256_bf16`` (bench_train.py)
  labels the same 300 texts with ``llmclf predict`` and with ``--ray --ray-workers 1``.

Usage: python benchmarks/bench_scale.py [--parts stream,train,ray]
Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LLMCLF, ROOT, WORK, machine, write_result  # noqa: E402

PEAK = (
    "import resource, runpy, sys; sys.argv = ['llmclf'] + sys.argv[1:]\n"
    "try:\n    runpy.run_module('llmclf.cli', run_name='__main__')\n"
    "except SystemExit as e:\n    code = e.code\n"
    "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)\n"
)


def measured(args: list[str], log: Path) -> dict:
    """Run ``llmclf ARGS`` in a fresh process: its wall time and peak RSS."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PEAK, *args], capture_output=True, text=True, cwd=ROOT
    )
    seconds = time.perf_counter() - start
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"failed ({log}):\n{result.stderr[-2000:]}")
    peak = next(
        float(line.split()[1])
        for line in result.stderr.splitlines()[::-1]
        if line.startswith("PEAK_RSS_MB")
    )
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak, 1)}


def short_rows(n: int, path: Path) -> Path:
    if not path.exists():
        words = [
            "match",
            "goal",
            "bank",
            "stock",
            "phone",
            "chip",
            "market",
            "team",
            "code",
            "price",
            "app",
            "league",
        ]
        rng = random.Random(0)
        texts = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(n)]
        pd.DataFrame({"id": range(n), "text": texts}).to_csv(path, index=False)
    return path


def stream_part(work: Path) -> dict:
    run = work / "tfidf-run"
    if not (run / "metrics.json").exists():
        measured(
            ["train", "--method", "tfidf", "--data", "bbc-news", "--output", str(run)],
            work / "tfidf-train.log",
        )
    out: dict = {}
    for n in (10_000, 1_000_000):
        source = short_rows(n, work / f"rows-{n}.csv")
        for label, chunk in (("streamed", 4096), ("one_chunk", n)):
            target = work / f"out-{n}-{label}.csv"
            target.unlink(missing_ok=True)
            figures = measured(
                ["predict", str(run), "--input", str(source), "--output", str(target)]
                + ["--chunk-rows", str(chunk)],
                work / f"predict-{n}-{label}.log",
            )
            figures["rows_per_s"] = round(n / figures["seconds"], 1)
            figures["dtype"] = "none (TF-IDF + logistic regression, no torch)"
            out[f"{n}_{label}"] = figures
            print(n, label, figures, flush=True)
    return out


def train_part(work: Path) -> dict:
    model = work / "tiny-smollm2-tokenizer"
    if not (model / "config.json").exists():
        subprocess.run(
            [sys.executable, "benchmarks/make_random_model.py", str(model), "--shape", "tiny"],
            check=True,
            cwd=ROOT,
        )
    out: dict = {}
    for n in (1_000, 10_000):
        run = work / f"train-{n}"
        subprocess.run(["rm", "-rf", str(run)], check=True)
        figures = measured(
            ["train", "--model", str(model), "--data", "20newsgroups", "--train-limit", str(n)]
            + ["--epochs", "1", "--max-length", "256", "--batch-size", "32"]
            + ["--dtype", "float32", "--output", str(run)],
            work / f"train-{n}.log",
        )
        metrics = json.loads((run / "metrics.json").read_text())
        figures["train_examples"] = metrics["train_examples"]
        figures["train_tokens_per_s"] = metrics.get("train_tokens_per_s")
        figures["dtype"] = metrics.get("dtype")
        out[str(n)] = figures
        print("train", n, figures, flush=True)
    return out


def ray_part(work: Path) -> dict:
    run = WORK / "train_20newsgroups_256_bf16-llmclf"
    data = WORK / "20newsgroups-240-60-300-0.csv"
    if not (run / "metrics.json").exists() or not data.exists():
        raise SystemExit(f"needs {run} and {data}: run bench_train.py first")
    frame = pd.read_csv(data)
    test = frame[frame["split"] == "test"][["text"]].reset_index(drop=True)
    shards = work / "ray-shards"
    shards.mkdir(exist_ok=True)
    for i in range(4):  # 4 shards of 75
        test.iloc[i * 75 : (i + 1) * 75].to_parquet(shards / f"part-{i}.parquet")
    test.to_parquet(work / "ray-all.parquet")
    dtype = json.loads((run / "metrics.json").read_text()).get("dtype")
    out: dict = {"rows": len(test), "dtype": dtype}
    target = work / "ray-plain.parquet"
    target.unlink(missing_ok=True)
    plain = measured(
        ["predict", str(run), "--input", str(work / "ray-all.parquet"), "--output", str(target)],
        work / "ray-plain.log",
    )
    plain["rows_per_s"] = round(len(test) / plain["seconds"], 2)
    out["predict"] = plain
    folder = work / "ray-out"
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    ray = measured(
        ["predict", str(run), "--input", str(shards / "*.parquet"), "--output", str(folder)]
        + ["--ray", "--ray-workers", "1", "--ray-cpus-per-worker", "2"],
        work / "ray-one-worker.log",
    )
    ray["rows_per_s"] = round(len(test) / ray["seconds"], 2)
    out["ray_one_worker"] = ray
    got = pd.concat([pd.read_parquet(p) for p in folder.glob("*.parquet")]).sort_values("row_id")
    want = pd.read_parquet(target)
    out["same_predictions"] = bool(
        (got["prediction"].reset_index(drop=True) == want["prediction"]).all()
    )
    print("ray", out, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="stream,train,ray")
    args = parser.parse_args()
    work = WORK / "scale"
    work.mkdir(parents=True, exist_ok=True)
    parts = {"stream": stream_part, "train": train_part, "ray": ray_part}
    results: dict = {"machine": machine(), "command": " ".join(LLMCLF[1:])}
    previous = ROOT / "benchmarks" / "results" / "scale.json"
    if previous.exists():
        results.update({k: v for k, v in json.loads(previous.read_text()).items() if k in parts})
    for name in args.parts.split(","):
        results[name] = parts[name](work)
    results["machine"] = machine()
    write_result("scale", results)


if __name__ == "__main__":
    main()
