"""Serving: `llmclf serve RUN` under concurrent clients vs offline prediction of the same
texts with the same run, one after the other, on loopback only.

The server runs in its own process on a free 127.0.0.1 port; CLIENTS asyncio clients
each send one text per `POST /v1/classify`, until REQUESTS requests are answered or
SECONDS pass. Then the same texts are predicted offline (`load_classifier(...)
.predict_proba`, the model already loaded, as `llmclf predict` does after loading).
Reported: texts/s both ways and their ratio, p50 / p95 / p99 latency, non-2xx answers,
the server's RSS after start-up and at the end, and its mean batch size.

Usage: python benchmarks/bench_serve.py RUN DATA.csv [--clients 32] [--requests 10000]
           [--seconds 600] [--max-batch-size 32] [--max-wait-ms 5] [--name NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import LLMCLF, WORK, machine, write_result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batch_sums(metrics: str) -> dict[str, float]:
    """The server's batch counters from its Prometheus text (one model served)."""
    keys = ("llmclf_batch_size_sum", "llmclf_batch_size_count", "llmclf_batch_seconds_sum")
    return {
        line.split(" ")[0].split("{")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith(keys)
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def load(url: str, texts: list[str], clients: int, requests: int, seconds: float):
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    count = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal count
            while count < requests and time.perf_counter() < deadline:
                text = texts[count % len(texts)]
                count += 1
                start = time.perf_counter()
                response = await client.post("/v1/classify", json={"input": text})
                latencies.append(time.perf_counter() - start)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return latencies, statuses, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data", help="a CSV with a text column (its rows are the requests)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--server-eval-batch-size",
        type=int,
        default=None,
        help="the server's model sub-batches (default: --max-batch-size); a merged batch is "
        "cut into length-sorted sub-batches of this many texts",
    )
    parser.add_argument(
        "--max-chars-per-text",
        type=int,
        default=10_000_000,
        help="the server's limit: above any text of the data, so every request is valid",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the server process only (repeat), e.g. "
        "OMP_NUM_THREADS=1 to leave a core to the HTTP side",
    )
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    import httpx
    import pandas as pd

    texts = [str(t) for t in pd.read_csv(args.data)["text"] if str(t).strip()]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / f"serve-{Path(args.run).name}.log"
    server = subprocess.Popen(
        [*LLMCLF, "serve", args.run, "--port", str(port), "--dtype", args.dtype,
         "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
         "--eval-batch-size", str(args.server_eval_batch_size or args.max_batch_size),
         "--max-chars-per-text", str(args.max_chars_per_text)],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, **dict(pair.split("=", 1) for pair in args.server_env)},
    )  # fmt: skip
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server stopped:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        # warm-up before anything is timed: the longest texts first (the largest batch
        # shapes, so the allocator has grown to them), then a few ordinary batches
        longest = sorted(texts, key=len, reverse=True)[: 2 * args.clients]
        asyncio.run(load(url, longest, args.clients, len(longest), 300))
        asyncio.run(load(url, texts, args.clients, 4 * args.clients, 120))
        rss_start = rss_mb(server.pid)
        before = batch_sums(httpx.get(url + "/metrics").text)
        latencies, statuses, wall = asyncio.run(
            load(url, texts, args.clients, args.requests, args.seconds)
        )
        rss_end = rss_mb(server.pid)
        after = batch_sums(httpx.get(url + "/metrics").text)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    sums = {key: after[key] - before.get(key, 0.0) for key in after}
    answered = len(latencies)
    served = answered / wall

    from llmclf.runs import load_classifier

    clf = load_classifier(
        args.run, progress=False, dtype=args.dtype, eval_batch_size=args.max_batch_size
    )
    sample = [texts[i % len(texts)] for i in range(min(answered, 2000))]
    clf.predict_proba(sample[: args.max_batch_size])  # warm-up
    start = time.perf_counter()
    clf.predict_proba(sample)
    offline = len(sample) / (time.perf_counter() - start)

    non_2xx = sum(n for code, n in statuses.items() if not 200 <= code < 300)
    name = args.name or f"serve_{Path(args.run).name}"
    write_result(
        name,
        {
            "machine": machine(),
            "settings": {**vars(args), "threads": os.cpu_count()},
            "dtype": str(getattr(clf, "dtype_", "")).removeprefix("torch."),
            "requests": answered,
            "wall_seconds": round(wall, 1),
            "served_texts_per_s": round(served, 2),
            "offline_texts_per_s": round(offline, 2),
            "served_vs_offline": round(served / offline, 3),
            "latency_ms": {
                "p50": round(1000 * percentile(latencies, 0.50), 1),
                "p95": round(1000 * percentile(latencies, 0.95), 1),
                "p99": round(1000 * percentile(latencies, 0.99), 1),
            },
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "non_2xx": non_2xx,
            "server_rss_mb": {"start": round(rss_start, 1), "end": round(rss_end, 1)},
            "rss_growth": round(rss_end / rss_start - 1, 3),
            "mean_batch_size": round(
                sums.get("llmclf_batch_size_sum", 0)
                / max(sums.get("llmclf_batch_size_count", 1), 1),
                2,
            ),
            # the fraction of the timed wall the model was computing a batch
            "model_busy_fraction": round(sums.get("llmclf_batch_seconds_sum", 0) / wall, 3),
        },
    )
    print(f"served {served:.1f} texts/s vs offline {offline:.1f} ({served / offline:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
