"""One text, one answer: how far the default batching moves a text's probabilities, and
what ``--batch-invariant`` costs, on one run's test texts, side by side in one process.

The default path predicts the test texts four ways (input order at the run's batch size,
reversed at batch size 7, one text at a time, and through a server-style bounded-shape
batch of 32-multiples); each is compared with the first (labels changed, largest
probability difference). The invariant path predicts the texts in input order and
reversed at batch size 7, and one at a time: all three must agree exactly. Both paths
are timed on the same texts after a warm-up (the fastest of ``--repeats``).

Usage: python benchmarks/bench_invariance.py RUN [--name NAME] [--repeats 1] [--limit N]
(RUN: e.g. the `make demo` run, runs/demo; its test split is read as it was trained)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import machine, write_result


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def compared(reference: np.ndarray, other: np.ndarray) -> dict:
    return {
        "labels_changed": int((reference.argmax(1) != other.argmax(1)).sum()),
        "max_abs_proba_diff": float(np.abs(reference - other).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--name", default="invariance")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="the first N test texts")
    args = parser.parse_args()

    from llmclf.batching import ShapeBuckets, bounded_shapes
    from llmclf.runs import load_classifier
    from llmclf.runs.evaluate import data_config_for, evaluation_split

    default = load_classifier(args.run, progress=False, batch_invariant=False)
    invariant = load_classifier(args.run, progress=False, batch_invariant=True)
    texts = evaluation_split(data_config_for(args.run), "test", False).texts[: args.limit]
    batch_size = default.config_.train.eval_batch_size
    reversed_7 = load_classifier(args.run, progress=False, batch_invariant=False, eval_batch_size=7)

    default.predict_proba(texts[:16])  # warm-up, both paths
    invariant.predict_proba(texts[:16])
    default_s, reference = timed(lambda: default.predict_proba(texts), args.repeats)
    invariant_s, exact = timed(lambda: invariant.predict_proba(texts), args.repeats)

    ways = {
        "reversed_batch_7": reversed_7.predict_proba(texts[::-1])[::-1],
        "one_at_a_time": np.stack([default.predict_proba([t])[0] for t in texts]),
    }
    with bounded_shapes(ShapeBuckets.for_batch_size(batch_size, 32)):
        ways["server_shapes"] = default.predict_proba(texts)
    invariant_7 = load_classifier(args.run, progress=False, batch_invariant=True, eval_batch_size=7)
    exact_ways = {
        "reversed_batch_7": invariant_7.predict_proba(texts[::-1])[::-1],
        "one_at_a_time": np.stack([invariant.predict_proba([t])[0] for t in texts]),
    }
    result = {
        "machine": machine(),
        "run": args.run,
        "dtype": str(default.dtype_).removeprefix("torch."),
        "texts": len(texts),
        "eval_batch_size": batch_size,
        "default": {
            "seconds": round(default_s, 3),
            "examples_per_s": round(len(texts) / default_s, 2),
            "vs_input_order": {k: compared(reference, v) for k, v in ways.items()},
        },
        "batch_invariant": {
            "seconds": round(invariant_s, 3),
            "examples_per_s": round(len(texts) / invariant_s, 2),
            "vs_input_order": {k: compared(exact, v) for k, v in exact_ways.items()},
            "vs_default": compared(reference, exact),
        },
        "invariant_speed_ratio": round(default_s / invariant_s, 3),
    }
    write_result(args.name, result)
    print(
        f"default {result['default']['examples_per_s']} ex/s, invariant "
        f"{result['batch_invariant']['examples_per_s']} ex/s "
        f"({result['invariant_speed_ratio']}x); default moves: {result['default']['vs_input_order']}"
    )


if __name__ == "__main__":
    main()
