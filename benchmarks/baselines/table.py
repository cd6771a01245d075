"""The bbc-news baseline table from the run folders of run.sh: results.json + a Markdown table.

Usage: python benchmarks/baselines/table.py TEACHER_RUN OUT
"""

import json
import sys
from pathlib import Path

teacher, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = [
    ("TF-IDF + LR, 400 train", out / "tfidf-400"),
    ("TF-IDF + LR, full train (1,489)", out / "tfidf-full"),
    ("MiniLM-L6 fine-tuned, 400 train", out / "minilm-400"),
    ("MiniLM-L6 fine-tuned, full train", out / "minilm-full"),
    ("SmolLM2-135M head (teacher), 400 train", teacher),
    ("MiniLM-L6 distilled, 400 labelled, 128 tokens", out / "student-400"),
    ("MiniLM-L6 distilled, 400 labelled + 1,089 unlabelled, 64 tokens", out / "student-unlab-64"),
    ("MiniLM-L6 distilled, 400 labelled + 1,089 unlabelled, 128 tokens", out / "student-unlab-128"),
    (
        "MiniLM-L6 first 3 layers distilled, 400 labelled + 1,089 unlabelled, 128 tokens",
        out / "student-unlab-128-l3",
    ),
]
results = []
for name, run in rows:
    path = run / "metrics.json"
    if not path.is_file():
        continue
    m = json.loads(path.read_text())
    results.append(
        {
            "name": name,
            "run": str(run),
            "macro_f1": m["macro_f1"],
            "accuracy": m["accuracy"],
            "examples_per_s": m.get("eval_examples_per_s"),
            "train_seconds": m.get("train_seconds"),
            "trainable_params": m.get("trainable_params"),
            "test_set_hash": m.get("test_set_hash"),
            **{
                k: m[k]
                for k in (
                    "f1_ratio",
                    "throughput_ratio",
                    "teacher_macro_f1",
                    "teacher_examples_per_s",
                )
                if k in m
            },
        }
    )
(out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
lines = [
    "| model | macro-F1 | accuracy | test examples/s | train s | trainable params |",
    "|---|---|---|---|---|---|",
]
for r in results:
    lines.append(
        f"| {r['name']} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} | {r['examples_per_s']} "
        f"| {r['train_seconds']} | {r['trainable_params']:,} |"
    )
    if "f1_ratio" in r:
        lines.append(
            f"| ↳ vs teacher, measured side by side | {r['f1_ratio']:.1%} of "
            f"{r['teacher_macro_f1']:.4f} | | {r['throughput_ratio']}x "
            f"({r['teacher_examples_per_s']} teacher) | | |"
        )
hashes = {r["test_set_hash"] for r in results}
lines.append(f"\nAll on the same test split: {len(hashes) == 1} ({len(results)} runs).")
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
