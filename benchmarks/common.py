"""What every benchmark shares: the machine description, a measured matmul peak, the data
files both sides read, real-token counts, FLOP estimates and the results files.

Each benchmark runs llmclf and its reference one after the other in the same process tree,
on the same machine, model, data and batch settings, and writes
``benchmarks/results/<name>.json``; ``table.py`` turns those files into BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "work"
LLMCLF = [sys.executable, "-m", "llmclf.cli"]


def machine() -> dict:
    """CPU model, cores, memory, GPU and library versions of this machine."""
    import transformers

    from llmclf.speed import cpu_info

    cpu = cpu_info()
    flags = cpu["flags"]
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu["name"],
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512": "avx512f" in flags,
        "amx": "amx_tile" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "cpu_id": cpu["id"],  # x86 family and model: "AMD EPYC" alone names several generations
        "memory_gib": round(memory_gib, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def matmul_peak_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """The best GFLOP/s of large square matmuls on this device: the hardware limit the
    model's achieved FLOP/s are compared with (best of several timed repeats)."""
    size = 2048 if device == "cpu" else 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    repeats = 5 if device == "cpu" else 50
    best = float("inf")
    for _ in range(4):
        torch.mm(a, b)  # warm-up, then time
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best / 1e9


def model_flops_per_token(
    config, context: float, training: bool, backward_layers: int | None = None
) -> float:
    """FLOPs per real token of a decoder: 2 per weight of every matmul in the blocks (the
    embedding lookup costs none) plus attention's QK^T and AV over ``context`` earlier
    positions on average; training with a frozen base adds the backward pass through the
    activations (another 2 per weight, and twice the attention), not the base's weight
    gradients; with LoRA on the last ``backward_layers`` blocks only, the backward pass
    stops there. LoRA's own matmuls (rank 16: under 3% of the total) are left out."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", heads)
    per_layer = (
        hidden * heads * head_dim  # q
        + 2 * hidden * kv_heads * head_dim  # k, v
        + heads * head_dim * hidden  # o
        + 3 * hidden * config.intermediate_size  # gate, up, down
    )
    layers = config.num_hidden_layers
    forward = 2 * per_layer + 2 * 2 * heads * head_dim * context  # one block
    if not training:
        return forward * layers
    backward = forward + 2 * 2 * heads * head_dim * context  # twice attention's matmuls
    return forward * layers + backward * (backward_layers or layers)


def bench_data(name: str, n_train: int, n_validation: int, n_test: int, seed: int = 0) -> Path:
    """A CSV with a ``split`` column holding a stratified sample of a built-in data set,
    so llmclf and the reference read exactly the same examples."""
    from llmclf.config import DataConfig
    from llmclf.data import load_frames

    path = WORK / f"{name}-{n_train}-{n_validation}-{n_test}-{seed}.csv"
    if path.is_file():
        return path
    import pandas as pd

    frames = load_frames(DataConfig(data=name))
    parts = []
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        frame = frames[split]
        if n == 0:
            continue
        if n < len(frame):  # round-robin over the classes in a seeded order: exactly n rows
            shuffled = frame.sample(frac=1.0, random_state=seed)
            rank = shuffled.groupby("label").cumcount()
            frame = shuffled.assign(_rank=rank).sort_values(["_rank", "label"]).head(n)
            frame = frame.drop(columns="_rank").sort_index()
        parts.append(frame[["text", "label"]].assign(split=split))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(parts).to_csv(path.with_suffix(".partial"), index=False)
    path.with_suffix(".partial").replace(path)
    return path


def data_file(data: str, n_train: int, n_validation: int, n_test: int) -> Path:
    """``data`` itself when it is a CSV with a ``split`` column (a machine without the
    built-in sets' packages, such as the lent GPU's, gets one carried), else the
    stratified sample of the built-in set of that name (``bench_data``)."""
    if data.endswith(".csv"):
        return Path(data).resolve()
    return bench_data(data, n_train, n_validation, n_test)


def read_split(path: Path, split: str):
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False)
    return frame[frame["split"] == split].reset_index(drop=True)


def real_tokens(tokenizer, texts: list[str], max_length: int) -> list[int]:
    """Tokens per text after truncation to ``max_length``: what is not padding."""
    return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length).input_ids]


def run_timed(command: list[str], log: Path, env: dict | None = None) -> float:
    """Run a command to completion with its output in ``log``; its wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        ).returncode
    if code != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"{' '.join(command)} failed ({code}):\n" + "\n".join(tail))
    return time.perf_counter() - start


def cold_feature_cache() -> dict:
    """An environment whose llmclf cache shares the converted models but holds no cached
    features, so a `--lora none` run pays for its first feature pass."""
    from llmclf.catalog import cache_dir

    folder = WORK / "cold-cache"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("models", "gguf"):
        if (cache_dir() / name).is_dir():
            (folder / name).symlink_to(cache_dir() / name)
    return {**os.environ, "LLMCLF_CACHE": str(folder)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name: str, values: dict, folder: Path = RESULTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), **values}
    path.with_suffix(".partial").write_text(json.dumps(payload, indent=2) + "\n")
    path.with_suffix(".partial").replace(path)
    print(f"wrote {path}")
    return path
