"""Hierarchical labels on 20newsgroups (issue 34): what ``--label-hierarchy .`` reports of
the runs bench_setfit.py trained, and whether deciding top-down would have done better.

20newsgroups' classes are paths (``comp.sys.mac.hardware``: 7 groups at level 1, 16 at
level 2). For every finished 20newsgroups run of bench_setfit.py (each method and
training size; run that first, its cells resume) this reads the test table the run
wrote and, from its probabilities:

- the accuracy and macro-F1 per level of the flat decision, the one llmclf makes
  (``classification_metrics(..., hierarchy=".")``, the figures ``evaluate`` reports);
- the same of a top-down decision: the level-1 group with the most summed probability,
  then the most probable group under it, and so on to a class (not in llmclf: measured
  here to decide whether it should be);
- ``--target-precision`` P chosen on one half of the test texts and measured on the
  other, both ways round (the stored runs hold no validation probabilities): the share
  answered and right, and of the withheld texts the share still given a parent and how
  often it is right, at the parents' own threshold (what llmclf chooses,
  ``parent_threshold_for_precision``) and at the class threshold (what a bare
  ``--abstain-below`` gives).

No model runs: the figures are arithmetic on the stored probabilities, so they are those
the runs' own ``llmclf evaluate RUN --label-hierarchy . --abstain-below T`` would give.

Usage: python benchmarks/bench_hierarchy.py [--target-precision 0.8 --target-precision 0.9]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
from common import WORK, machine, write_result

from llmclf.evaluation.hierarchy import (
    level_metrics,
    parent_threshold_for_precision,
    prefix,
)
from llmclf.evaluation.metrics import classification_metrics
from llmclf.evaluation.selective import decisions, threshold_for_precision
from llmclf.labels import LabelSchema

SEP = "."


def top_down(proba: np.ndarray, classes: list[str], sep: str) -> list[str]:
    """The class reached by picking, level by level, the group with the most summed
    probability under the group picked above."""
    paths = [c.split(sep) for c in classes]
    out = []
    for row in proba:
        chosen: list[str] = []
        while True:
            members = [j for j, p in enumerate(paths) if p[: len(chosen)] == chosen]
            if len(members) == 1:
                chosen = paths[members[0]]
                break
            mass: dict[tuple, float] = {}
            for j in members:  # a class that ends here competes as itself
                key = tuple(paths[j][: len(chosen) + 1])
                mass[key] = mass.get(key, 0.0) + float(row[j])
            best = max(mass, key=mass.get)
            if len(best) == len(chosen):
                break  # the class that ends here won
            chosen = list(best)
        out.append(sep.join(chosen))
    return out


def two_fold(schema, proba, decided, truth, gold, target: float) -> dict:
    """``--target-precision target`` chosen on one half of the test texts and measured on
    the other, both ways round (the figures summed over the two halves): the answers,
    and the parents of the withheld texts at their own threshold (what llmclf chooses) and
    at the class threshold (what ``--abstain-below`` alone gives)."""
    rng = np.random.default_rng(0)
    half = rng.permutation(len(gold)) < len(gold) // 2
    counts = dict.fromkeys(
        ("texts", "answered", "right", "withheld", "own", "own_right", "same", "same_right"), 0
    )
    for fit in (half, ~half):
        use = ~fit
        confidence, correct = decisions(truth[fit], proba[fit], decided[fit])
        t = threshold_for_precision(confidence, correct, target)
        t = 1.0 if t is None else t
        at = schema.with_abstention(t)
        off = at.abstains(proba[fit], decided[fit])
        t_parent = parent_threshold_for_precision(
            proba[fit][off], decided[fit][off], truth[fit][off], schema.classes, SEP, target
        )
        own = at.with_parent_threshold(1.0 if t_parent is None else t_parent)
        withheld = at.abstains(proba[use], decided[use])
        answered = ~withheld
        counts["texts"] += int(use.sum())
        counts["answered"] += int(answered.sum())
        counts["right"] += int((decided[use] == truth[use])[answered].sum())
        gold_use = [g for g, u in zip(gold, use) if u]
        for name, rule in (("own", own), ("same", at)):
            parents = rule.parents(proba[use], decided[use])
            given = [(g, p) for g, p in zip(gold_use, parents) if p]
            counts[name] += len(given)
            counts[f"{name}_right"] += sum(g.startswith(p + SEP) for g, p in given)
        counts["withheld"] += int(withheld.sum())

    def share(a: str, b: str):
        return round(counts[a] / counts[b], 4) if counts[b] else None

    return {
        "target_precision": target,
        "coverage": share("answered", "texts"),
        "answered_accuracy": share("right", "answered"),
        "with_parent": share("own", "withheld"),
        "parent_accuracy": share("own_right", "own"),
        "with_parent_at_class_threshold": share("same", "withheld"),
        "parent_accuracy_at_class_threshold": share("same_right", "same"),
    }


def run_figures(folder, targets: list[float]) -> dict:
    table = pd.read_json(folder / "test_predictions.jsonl", lines=True)
    schema = LabelSchema.load(folder).with_hierarchy(SEP)
    classes = schema.classes
    proba = table[[f"proba_{c}" for c in classes]].to_numpy()
    gold = table["label"].tolist()
    truth = schema.encode(gold)
    decided = schema.decide(proba)
    flat = classification_metrics(truth, decided, classes, SEP)
    down = top_down(proba, classes, SEP)
    down_levels = level_metrics(gold, down, classes, SEP)
    down_all = classification_metrics(truth, schema.encode(down), classes)
    levels = [
        {
            "level": f["level"],
            "groups": f["groups"],
            "flat_accuracy": round(f["accuracy"], 4),
            "flat_macro_f1": round(f["macro_f1"], 4),
            "top_down_accuracy": round(d["accuracy"], 4),
            "top_down_macro_f1": round(d["macro_f1"], 4),
        }
        for f, d in zip(flat["levels"], down_levels)
    ]
    levels.append(
        {
            "level": "classes",
            "groups": len(classes),
            "flat_accuracy": round(flat["accuracy"], 4),
            "flat_macro_f1": round(flat["macro_f1"], 4),
            "top_down_accuracy": round(down_all["accuracy"], 4),
            "top_down_macro_f1": round(down_all["macro_f1"], 4),
        }
    )
    abstaining = [two_fold(schema, proba, decided, truth, gold, target) for target in targets]
    return {"levels": levels, "abstaining": abstaining, "n": len(gold)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-precision", type=float, action="append", default=None)
    parser.add_argument("--name", default="hierarchy_20newsgroups")
    args = parser.parse_args()
    targets = args.target_precision or [0.8, 0.9]
    runs = []
    order = {"64": 0, "400": 1, "full": 2}
    folders = [
        f for f in (WORK / "setfit").glob("20newsgroups-*") if (f / "metrics.json").is_file()
    ]
    for folder in sorted(folders, key=lambda f: (order.get(f.name.split("-")[1], 9), f.name)):
        _, size, method = folder.name.split("-", 2)
        metrics = json.loads((folder / "metrics.json").read_text())
        runs.append(
            {
                "method": method,
                "size": size,
                "train": metrics["train_examples"],
                "dtype": metrics.get("dtype") or "none",  # the run's; none: no torch model
            }
            | run_figures(folder, targets)
        )
        print(json.dumps(runs[-1]["levels"][0] | {"run": folder.name}))
    groups = sorted({prefix(c, 1, SEP) for c in LabelSchema.load(folders[0]).classes})
    write_result(
        args.name,
        {
            "machine": machine(),
            "settings": {"data": "20newsgroups", "separator": SEP, "level_1": groups},
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
