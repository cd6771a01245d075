"""benchmarks/study.py: the verdict rules on injected results, Holm within a claim, and a
micro study (a tiny random-weight model on a few examples) rendered end to end."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from benchmarks.paper_study import claims as C
from benchmarks.paper_study.render import sweep_plot
from benchmarks.paper_study.results import read_records
from benchmarks.paper_study.run import Grid, Study, run_study
from llmclf.evaluation.stats import holm
from tests.conftest import make_texts

CLASSES = ["a", "b", "c", "d"]
N = 200


def record(name, method, predicted, seed=42, data="toy", kind="train", truth=None, **config):
    """A study record as results.py writes one, with one-hot-ish probabilities."""
    truth = np.arange(N) % len(CLASSES) if truth is None else truth
    proba = np.full((N, len(CLASSES)), 0.1)
    proba[np.arange(N), predicted] = 0.7
    defaults = {"pooling": "last"} if method == "head" else {"verbalizer": "names"}
    lora = C.CORE_LORA if method in ("head", "instruct") else {}
    return {
        "name": name,
        "kind": kind,
        "grids": ["core"],
        "data": data,
        "method": method,
        "config": {"method": method, "seed": seed, "data": data, **lora, **defaults, **config},
        "classes": CLASSES,
        "multi_label": False,
        "test_set_hash": "same",
        "metrics": {"trainable_params": 1000, "wall_seconds": 1.0},
        "temperature": 1.0,
        "calibration": {},
        "truth": truth.tolist(),
        "predicted": np.asarray(predicted).tolist(),
        "proba": proba.tolist(),
        "proba_temperature": 1.0,
    }


def wrong(count, offset=0):
    """Predictions that miss ``count`` examples, starting at ``offset``."""
    predicted = np.arange(N) % len(CLASSES)
    rows = np.arange(offset, offset + count)
    predicted[rows] = (predicted[rows] + 1) % len(CLASSES)
    return predicted


def same_budget_verdict(head_wrong, instruct_wrong, head_offset=0):
    records = [
        record(f"head-{s}", "head", wrong(head_wrong, head_offset), seed=s) for s in (42, 43, 44)
    ] + [record(f"instruct-{s}", "instruct", wrong(instruct_wrong), seed=s) for s in (42, 43, 44)]
    claim = C.claim_1(records, C.Datasets(single="toy", second="none"), resamples=2000)
    return claim.parts[0]


def test_a_clear_win_holds_an_overlapping_interval_is_undecided_a_clear_loss_does_not_hold():
    win = same_budget_verdict(head_wrong=5, instruct_wrong=40)
    assert win.verdict == C.HOLDS and win.contrasts[0].low > -C.MATCH_MARGIN
    assert len(win.contrasts[0].pairs) == 3  # paired by seed
    tie = same_budget_verdict(head_wrong=12, instruct_wrong=10, head_offset=100)
    c = tie.contrasts[0]
    assert tie.verdict == C.UNDECIDED and c.low < -C.MATCH_MARGIN < c.high
    loss = same_budget_verdict(head_wrong=60, instruct_wrong=5)
    assert loss.verdict == C.FAILS and loss.contrasts[0].high < -C.MATCH_MARGIN


def test_interval_rules_and_how_parts_combine():
    assert C.within(-0.01, 0.01, 0.014) == C.HOLDS
    assert C.within(0.02, 0.04, 0.014) == C.FAILS
    assert C.within(0.0, 0.02, 0.014) == C.UNDECIDED
    assert C.below(-0.3, -0.25, -0.2) == C.HOLDS and C.below(-0.1, 0.0, -0.2) == C.FAILS
    assert C.all_of([C.HOLDS, C.HOLDS]) == C.HOLDS
    assert C.all_of([C.HOLDS, C.UNDECIDED]) == C.UNDECIDED
    assert C.all_of([C.HOLDS, C.FAILS, C.UNDECIDED]) == C.FAILS
    assert C.all_of([C.NOT_RUN, C.NOT_RUN]) == C.NOT_RUN
    assert C.any_of([C.FAILS, C.HOLDS]) == C.HOLDS and C.any_of([C.FAILS, C.FAILS]) == C.FAILS


def lead_records(head_extra_right: int) -> list[dict]:
    """The head right on ``head_extra_right`` examples each encoder seed gets wrong;
    instruct identical to the encoder (McNemar p = 1)."""
    out = []
    for s in (42, 43, 44):
        encoder = wrong(head_extra_right)
        out.append(record(f"encoder-{s}", "encoder", encoder, seed=s))
        out.append(record(f"instruct-{s}", "instruct", encoder, seed=s))
        out.append(record(f"head-{s}", "head", wrong(0), seed=s))
    return out


def test_holm_within_a_claim_decides_whether_a_lead_is_certified():
    ds = C.Datasets(single="toy", second="none")
    claim = C.claim_3(lead_records(6), ds, resamples=2000)  # 6 vs 0 discordant: p = 0.031
    pairs = [p for c in claim.contrasts for p in c.pairs]
    raw = [p["mcnemar_p"] for p in pairs]
    assert raw[:3] == [pytest.approx(2 * 0.5**6)] * 3 and raw[3:] == [1.0] * 3
    assert [p["mcnemar_p_adjusted"] for p in pairs] == holm(raw)
    assert min(p["mcnemar_p_adjusted"] for p in pairs) > C.ALPHA  # 0.031 x 6 pairs
    assert claim.contrasts[0].confidence == pytest.approx(1 - C.ALPHA / 2)  # 2 comparisons ran
    # significant before Holm, not after: the lead is consistent but not certified
    assert claim.parts[-1].verdict == C.HOLDS
    strong = C.claim_3(lead_records(30), ds, resamples=2000)
    assert strong.parts[-1].verdict == C.FAILS  # certified: the paper's "not certified" fails


def test_claims_without_results_are_not_run_yet():
    decided = C.evaluate_claims([], C.Datasets())
    assert [c.verdict for c in decided] == [C.NOT_RUN] * 8


# ---------------------------------------------------------------------------------------
# A micro study: the real grid, collection and rendering on a tiny model
# ---------------------------------------------------------------------------------------


def test_micro_study_renders_an_experiments_report_and_re_renders_from_records(
    tmp_path, tiny_llama
):
    data = tmp_path / "toy.csv"
    texts, labels = make_texts(90, seed=3)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
    grid = {
        "output": str(tmp_path / "runs" / "toy"),
        "data": str(data),
        "models": [tiny_llama],
        "seeds": [42, 43],
        "options": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "test_limit": 6},
        "methods": {
            "head": {
                "lora_r": [16],
                "target_modules": [["all-linear"]],
                "pooling": ["last"],
                "max_length": 32,
                "learning_rate": 5e-3,
            },
            "tfidf": {"min_df": 1},
        },
    }
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump(grid))
    study = Study(
        [Grid("core", path, ("calibrate",)), Grid("pooling", tmp_path / "pooling.yaml")],
        results=tmp_path / "results",
        report=tmp_path / "EXPERIMENTS.md",
        datasets=C.Datasets(single=str(data), second="none", multi="none"),
    )
    (tmp_path / "pooling.yaml").write_text(
        yaml.safe_dump({**grid, "methods": {"head": {"pooling": ["last", "nonesuch"]}}})
    )
    report = run_study(study)
    text = report.read_text()
    records = read_records(study.results)
    heads = [r for r in records if r["method"] == "head"]
    assert len(heads) == 2 and len(records) == 4  # 2 head + 2 tfidf cells, no weights
    assert all(len(r["truth"]) == 6 for r in records)  # --test-limit
    # the calibrate step fitted a temperature (a saved run's own calibration.json has T = 1)
    assert all("fitted_on" in r["calibration"] for r in heads)
    assert not list(study.results.rglob("*.safetensors"))
    assert "## Claim 6:" in text and "## Claim 1:" in text
    claim_6 = text.split("## Claim 6:")[1].split("## Claim 7:")[0]
    assert "not run yet" not in claim_6.split("\n\n")[2]  # decided on the micro results
    assert "head-" in claim_6 and "Seed-averaged test ECE of 2 head run(s)" in claim_6
    assert "**Verdict: *not run yet***" in text.split("## Claim 5:")[1].split("## Claim 6:")[0]
    assert "| pooling |" in text and "failed:" in text  # the grid that cannot run yet
    assert "## Verdict rules" in text and f"inside ±{C.POOLING_BAND}" in text
    # re-rendered from the checked-in records alone: the same report
    Path(report).unlink()
    assert run_study(study, report_only=True).read_text() == text
    # the LoRA-budget figure names its dotted baseline lines in the legend
    figure = sweep_plot(records, study.datasets)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == ["head, all-linear", "tfidf"]
    plt.close(figure)
