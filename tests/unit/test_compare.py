"""`llmclf calibrate` and `llmclf compare` on tiny trained runs."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from statsmodels.stats.contingency_tables import mcnemar

from llmclf.cli import main
from llmclf.evaluation.calibration import expected_calibration_error, to_proba
from llmclf.runs import load_classifier
from tests.conftest import make_texts

TINY = [
    "--epochs",
    "1",
    "--max-length",
    "32",
    "--learning-rate",
    "5e-3",
    "--head-learning-rate",
    "1e-2",
    "--batch-size",
    "8",
    "--eval-batch-size",
    "16",
    "--text-column",
    "body",
    "--label-column",
    "topic",
]


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    """Three tiny runs: A and B see the same test set through differently named files,
    C the same file split with another seed (another test set)."""
    folder = tmp_path_factory.mktemp("compare")
    texts, labels = make_texts(150, seed=9)
    frame = pd.DataFrame({"body": texts, "topic": labels})
    frame.to_csv(folder / "data.csv", index=False)
    frame.to_csv(folder / "copy.csv", index=False)
    made = {}
    for name, data, extra in (
        ("a", "data.csv", ["--pooling", "last"]),
        ("b", "copy.csv", ["--pooling", "mean"]),
        ("c", "data.csv", ["--split-seed", "1"]),
    ):
        run = folder / name
        args = ["train", "--model", tiny_llama, "--data", str(folder / data), *TINY, *extra]
        assert main([*args, "--output", str(run)]) == 0
        made[name] = run
    made["data"] = folder / "data.csv"
    return made


def stored(run):
    frame = pd.read_json(run / "test_predictions.jsonl", lines=True)
    return frame, json.loads((run / "metrics.json").read_text())


def test_train_metrics_include_calibration_figures(runs):
    frame, metrics = stored(runs["a"])
    classes = sorted(frame["label"].unique())
    proba = frame[[f"proba_{c}" for c in classes]].to_numpy()
    truth = np.array([classes.index(v) for v in frame["label"]])
    assert metrics["ece"] == pytest.approx(expected_calibration_error(truth, proba))
    assert 0 <= metrics["brier"] <= 2 and metrics["nll"] > 0 and metrics["temperature"] == 1.0


def test_compare_writes_a_report_whose_numbers_match_the_runs(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--output", str(out)]) == 0
    assert "McNemar p=" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    (frame_a, metrics_a), (frame_b, metrics_b) = stored(runs["a"]), stored(runs["b"])
    assert [r["name"] for r in report["runs"]] == ["a", "b"]
    assert report["runs"][0]["macro_f1"] == pytest.approx(metrics_a["macro_f1"])
    assert report["runs"][1]["trainable_params"] == metrics_b["trainable_params"]
    assert report["runs"][0]["calibration"]["before"]["ece"] == pytest.approx(metrics_a["ece"])

    pair = report["pairs"][0]
    right_a = (frame_a["prediction"] == frame_a["label"]).to_numpy()
    right_b = (frame_b["prediction"] == frame_b["label"]).to_numpy()
    assert (pair["only_a_correct"], pair["only_b_correct"]) == (
        int(np.sum(right_a & ~right_b)),
        int(np.sum(~right_a & right_b)),
    )
    table = [
        [np.sum(right_a & right_b), np.sum(right_a & ~right_b)],
        [np.sum(~right_a & right_b), np.sum(~right_a & ~right_b)],
    ]
    assert pair["mcnemar_p"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    delta = f1_score(frame_b["label"], frame_b["prediction"], average="macro") - f1_score(
        frame_a["label"], frame_a["prediction"], average="macro"
    )
    assert pair["delta_macro_f1"] == pytest.approx(delta)
    assert pair["ci_low"] <= pair["delta_macro_f1"] <= pair["ci_high"]
    assert report["settings"]["bootstrap_resamples"] >= 2000

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    assert "src='http" not in page and "<link" not in page  # self-contained
    markdown = (out / "report.md").read_text()
    assert "| a |" in markdown and "figures/forest.png" in markdown
    assert "figures/risk_coverage.png" in markdown and "## Selective prediction" in markdown
    for name in ("confusion", "reliability", "risk_coverage", "per_class_f1", "forest"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / ".staging").exists()


def test_compare_refuses_runs_tested_on_different_test_sets(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", str(runs["a"]), str(runs["c"]), "--output", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("llmclf")]
    assert len(errors) == 1 and "different test sets" in errors[0] and "--data" in errors[0]
    assert not out.exists()


def test_compare_with_data_evaluates_every_run_on_one_test_set(runs, tmp_path):
    out = tmp_path / "report"
    args = ["compare", str(runs["a"]), str(runs["c"]), "--output", str(out)]
    given = ["--data", str(runs["data"]), "--split", "test", "--resamples", "2000"]
    assert main([*args, *given]) == 0
    report = json.loads((out / "report.json").read_text())
    _, metrics_a = stored(runs["a"])
    # --split test named: cut from the split-less file as in training, A's own split (seed 0)
    assert report["test_set_hash"] == metrics_a["test_set_hash"]
    assert report["runs"][0]["macro_f1"] == pytest.approx(metrics_a["macro_f1"])
    assert (out / "evaluations" / "c" / "predictions.jsonl").is_file()
    assert report["settings"]["bootstrap_resamples"] == 2000


def test_calibrate_stores_a_temperature_that_evaluate_and_predict_apply(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run)
    assert main(["calibrate", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "temperature" in printed and "ECE" in printed
    stored_calibration = json.loads((run / "calibration.json").read_text())
    temperature = stored_calibration["temperature"]
    assert temperature != 1.0 and "[validation]" in stored_calibration["fitted_on"]
    assert stored_calibration["after"]["nll"] <= stored_calibration["before"]["nll"]
    assert set(stored_calibration["test"]) == {"before", "after"}

    clf = load_classifier(run, progress=False)
    texts, _ = make_texts(10, seed=4)
    assert clf.temperature_ == temperature
    expected = to_proba(clf.predict_logits(texts), False, temperature)
    assert np.allclose(clf.predict_proba(texts), expected, atol=1e-6)

    assert main(["evaluate", str(run), "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["temperature"] == temperature
    assert metrics["ece_uncalibrated"] == pytest.approx(stored(runs["b"])[1]["ece"], abs=1e-6)
    assert metrics["ece"] == pytest.approx(stored_calibration["test"]["after"]["ece"], abs=1e-6)

    out = tmp_path / "report"
    assert main(["compare", str(runs["a"]), str(run), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    calibrated = report["runs"][1]["calibration"]
    assert calibrated["temperature"] == temperature
    assert calibrated["after"]["ece"] == pytest.approx(stored_calibration["test"]["after"]["ece"])
    assert report["runs"][0]["calibration"]["after"] is None
    assert "ECE after T" in (out / "report.md").read_text()


def test_compare_refuses_a_non_report_output_and_single_runs(runs, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--output", str(tmp_path)]) == 2
    assert "holds no earlier report" in capsys.readouterr().err
    assert main(["compare", str(runs["a"]), "--output", str(tmp_path / "r")]) == 2
    assert "at least two runs" in capsys.readouterr().err


def synthetic_evaluations(multi_label, n=200, k=4, seed=0):
    """Two runs' predictions made up directly: the report needs no model."""
    from pathlib import Path

    from llmclf.evaluation.comparison import RunEvaluation
    from llmclf.labels import LabelSchema

    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(k)]
    schema = LabelSchema(classes, multi_label=multi_label, thresholds=[0.5] * k)
    truth = (rng.random((n, k)) < 0.3).astype(int) if multi_label else rng.integers(0, k, n)
    target = truth if multi_label else np.eye(k)[truth]
    out = []
    for index, noise in enumerate((1.0, 3.0)):
        proba = to_proba(rng.normal(0, noise, (n, k)) + 3 * target, multi_label)
        predicted = (proba >= 0.5).astype(int) if multi_label else proba.argmax(axis=1)
        out.append(
            RunEvaluation(
                name=f"r{index}",
                folder=Path(f"r{index}"),
                schema=schema,
                truth=truth,
                predicted=predicted,
                proba=proba,
                proba_temperature=1.0,
                temperature=2.0 if index else 1.0,
                test_hash="same",
                run_metrics={"trainable_params": 1000, "train_seconds": 5.0},
                config={"method": "head", "lora_r": 8 * (index + 1)},
            )
        )
    return out


def test_a_multi_label_report_uses_micro_f1_and_label_figures(tmp_path):
    from sklearn.metrics import hamming_loss

    from llmclf.evaluation.comparison import build_report
    from llmclf.runs.compare import write_report

    evaluations = synthetic_evaluations(multi_label=True)
    report = build_report(evaluations, resamples=2000)
    assert report["primary_metric"] == "micro_f1" and report["multi_label"]
    first = report["runs"][0]
    assert first["hamming_loss"] == pytest.approx(
        hamming_loss(evaluations[0].truth, evaluations[0].predicted)
    )
    truth = evaluations[0].truth
    assert first["calibration"]["before"]["ece"] == pytest.approx(
        expected_calibration_error(truth, evaluations[0].proba)
    )
    assert report["runs"][1]["calibration"]["after"] is not None  # calibrated at T = 2
    pair = report["pairs"][0]
    subset_a = (evaluations[0].predicted == truth).all(axis=1)
    subset_b = (evaluations[1].predicted == truth).all(axis=1)
    assert pair["only_a_correct"] == int(np.sum(subset_a & ~subset_b))
    assert pair["micro_ci_low"] <= pair["delta_micro_f1"] <= pair["micro_ci_high"]
    assert report["confusion"]["r0"][0] == [
        int(np.sum((truth[:, 0] == 1) & (evaluations[0].predicted[:, 0] == 1))),
        int(np.sum((truth[:, 0] == 1) & (evaluations[0].predicted[:, 0] == 0))),
        int(np.sum((truth[:, 0] == 0) & (evaluations[0].predicted[:, 0] == 1))),
        int(np.sum((truth[:, 0] == 0) & (evaluations[0].predicted[:, 0] == 0))),
    ]
    write_report(report, tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Hamming loss" in markdown and "samples-F1" in markdown and "ECE after T" in markdown


def test_the_verdict_needs_both_tests():
    from llmclf.evaluation.comparison import verdict

    pair = {"a": "x", "b": "y", "micro_ci_low": 0.01, "micro_ci_high": 0.03}
    base = {**pair, "ci_low": 0.01, "ci_high": 0.05, "mde_macro_f1": 0.0312}
    assert verdict({**base, "mcnemar_p_adjusted": 0.01}, "macro_f1", 0.05) == "y is better"
    flipped = {**base, "ci_low": -0.05, "ci_high": -0.01, "mcnemar_p_adjusted": 0.01}
    assert verdict(flipped, "macro_f1", 0.05) == "x is better"
    assert "not significant" in verdict({**base, "mcnemar_p_adjusted": 0.2}, "macro_f1", 0.05)
    unclear = {**base, "ci_low": -0.01, "mcnemar_p_adjusted": 0.2}
    assert verdict(unclear, "macro_f1", 0.05) == "no detectable difference (could detect ≥ 0.0312)"
    accuracy_only = verdict({**unclear, "mcnemar_p_adjusted": 0.01}, "macro_f1", 0.05)
    assert accuracy_only.startswith("no detectable difference (could detect ≥ 0.0312), though")
    identical = {
        **base,
        "ci_low": 0.0,
        "ci_high": 0.0,
        "mde_macro_f1": 0.0,
        "mcnemar_p_adjusted": 1,
    }
    assert verdict(identical, "macro_f1", 0.05).startswith("no difference")


def evaluation(name, truth, proba, *, predicted=None, abstain_below=None, temperature=1.0):
    """A run's predictions given directly; its decisions are the arg-max unless given."""
    from pathlib import Path

    from llmclf.evaluation.comparison import RunEvaluation
    from llmclf.labels import LabelSchema

    proba = np.asarray(proba, dtype=float)
    schema = LabelSchema([f"c{i}" for i in range(proba.shape[1])], abstain_below=abstain_below)
    return RunEvaluation(
        name=name,
        folder=Path(name),
        schema=schema,
        truth=np.asarray(truth),
        predicted=proba.argmax(axis=1) if predicted is None else np.asarray(predicted),
        proba=proba,
        proba_temperature=1.0,
        temperature=temperature,
        test_hash="same",
        run_metrics={},
    )


def answers(truth, wrong, k=2):
    """Confident one-hot-like probabilities, wrong (the next class) on the rows ``wrong``."""
    predicted = np.array(truth)
    predicted[wrong] = (predicted[wrong] + 1) % k
    return np.where(np.eye(k)[predicted] == 1, 0.9, 0.1 / (k - 1))


def test_the_headline_names_a_best_run_only_when_both_tests_agree():
    from llmclf.evaluation.comparison import build_report

    truth = np.arange(300) % 2
    clear = [
        evaluation("good", truth, answers(truth, np.arange(0, 300, 10))),  # 30 wrong
        evaluation("poor", truth, answers(truth, np.arange(0, 300, 3))),  # 100 wrong
    ]
    report = build_report(clear, resamples=2000)
    pair = report["pairs"][0]
    assert pair["ci_high"] < 0 and pair["mcnemar_p_adjusted"] < 0.05
    assert report["best_run"] == report["highest_run"] == pair["better_run"] == "good"
    assert pair["mde_macro_f1"] == pytest.approx(2.8015852 * pair["se_macro_f1"])
    assert report["headline"] == (
        f"Best macro-F1: good ({report['runs'][0]['macro_f1']:.4f}) on 300 test examples, "
        f"better than poor ({report['runs'][1]['macro_f1']:.4f}) by both tests "
        f"(this test set could detect ≥ {pair['mde_macro_f1']:.4f})."
    )

    close = [
        evaluation("first", truth, answers(truth, np.arange(0, 300, 10))),  # 30 wrong
        evaluation("second", truth, answers(truth, np.arange(1, 300, 11))),  # 28 wrong
    ]
    report = build_report(close, resamples=2000)
    pair = report["pairs"][0]
    assert pair["ci_low"] < 0 < pair["ci_high"] and pair["better_run"] is None
    assert report["best_run"] is None and report["highest_run"] == "second"
    mde = f"{pair['mde_macro_f1']:.4f}"
    assert report["headline"].startswith(
        f"No best macro-F1 on 300 test examples: no detectable difference (could detect ≥ {mde}) "
        "between second ("
    )
    assert pair["verdict"] == f"no detectable difference (could detect ≥ {mde})"
    # the widest interval is about twice the MDE's standard error on each side
    assert pair["ci_high"] - pair["ci_low"] == pytest.approx(
        2 * 1.959964 * pair["se_macro_f1"], rel=0.15
    )
    markdown = render_markdown(report)
    assert "Best macro-F1" not in markdown
    assert f"| {mde} | no detectable difference (could detect ≥ {mde}) |" in markdown


def render_markdown(report):
    from llmclf.evaluation.report import markdown

    return markdown(report)


def test_the_headline_says_which_runs_are_tied_with_the_highest():
    from llmclf.evaluation.comparison import headline

    runs = [{"name": n, "macro_f1": f} for n, f in (("a", 0.90), ("b", 0.80), ("c", 0.89))]
    pairs = [
        {"a": "a", "b": "b", "ci_low": -0.14, "ci_high": -0.06, "better_run": "a"},
        {"a": "a", "b": "c", "ci_low": -0.04, "ci_high": 0.02, "better_run": None},
        {"a": "b", "b": "c", "ci_low": 0.05, "ci_high": 0.13, "better_run": "c"},
    ]
    for pair, mde in zip(pairs, (0.031, 0.0282, 0.03)):
        pair["mde_macro_f1"] = mde
    best, line = headline(runs, pairs, "macro_f1", 500)
    assert best is None
    assert line == (
        "No best macro-F1 on 500 test examples: no detectable difference (could detect ≥ "
        "0.0282) between a (0.9000) and c (0.8900); a is better than b (0.8000)."
    )
    pairs[1].update(ci_low=0.01, ci_high=0.02)  # the interval clears 0, McNemar does not
    assert "but McNemar's test is not significant" in headline(runs, pairs, "macro_f1", 500)[1]
    pairs[1]["better_run"] = "a"
    best, line = headline(runs, pairs, "macro_f1", 500)
    assert best == "a" and line.startswith("Best macro-F1: a (0.9000) on 500 test examples")
    assert "better than b (0.8000), c (0.8900)" in line and "could detect ≥ 0.0310" in line


def test_selective_figures_of_the_report_by_hand(tmp_path):
    """Run "plain" (T = 1, abstains below 0.65) on five examples, sorted by confidence:
    0.9 right, 0.8 wrong, 0.7 right, 0.6 right, 0.5 wrong. Risk at coverage 1/5..5/5:
    0, 1/2, 1/3, 1/4, 2/5; AURC is their mean, 0.296667. Precision 0.95 is reached only by
    the top answer: coverage 0.2. At 0.65 it keeps 0.9, 0.8 and 0.7: coverage 0.6,
    selective accuracy 2/3, macro-F1 over the kept true classes {0, 1}: (1 + 2/3) / 2.
    Run "calibrated": the same probabilities stored at T = 1, the run now at T = 2, where
    its threshold 0.5 applies; softmax(log p / 2) gives confidences 0.680, 0.523, 0.415,
    0.473, 0.586: it keeps the first, second and fifth (coverage 0.6, two of three right);
    its ranking, and so its AURC, is unchanged."""
    from llmclf.evaluation.comparison import build_report
    from llmclf.evaluation.plots import risk_coverage_curves
    from llmclf.runs.compare import write_report

    truth = [0, 1, 2, 0, 1]
    proba = [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]
    runs = [
        evaluation("plain", truth, proba, abstain_below=0.65),
        evaluation("calibrated", truth, proba, abstain_below=0.5, temperature=2.0),
        evaluation("never", truth, proba),
    ]
    report = build_report(runs, resamples=2000)
    plain, calibrated, never = (r["selective"] for r in report["runs"])
    assert plain["curve"]["coverage"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert plain["curve"]["risk"] == pytest.approx([0, 1 / 2, 1 / 3, 1 / 4, 2 / 5])
    assert plain["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4 + 2 / 5) / 5)
    assert plain["coverage_at_precision"]["0.95"] == pytest.approx(0.2)
    assert plain["coverage_at_precision"]["0.9"] == pytest.approx(0.2)
    assert (plain["threshold"], plain["coverage"]) == (0.65, pytest.approx(0.6))
    assert plain["selective_accuracy"] == pytest.approx(2 / 3)
    assert plain["selective_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert calibrated["aurc"] == pytest.approx(plain["aurc"])
    assert calibrated["coverage"] == pytest.approx(0.6)  # 1.0 if read at T = 1
    assert calibrated["selective_accuracy"] == pytest.approx(2 / 3)
    assert "threshold" not in never and never["aurc"] == pytest.approx(plain["aurc"])

    png = risk_coverage_curves(report)
    assert png[:4] == b"\x89PNG" and len(png) > 5000
    write_report(report, tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| plain | 0.65 | 0.2967 | 0.2000 | 0.6000 | 0.6667 | 0.8333 |" in markdown
    assert "| never | — | 0.2967 | 0.2000 | — | — | — |" in markdown
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<h2>Selective prediction</h2>" in page and "AURC" in page


def test_abstained_rows_are_scored_at_full_coverage(runs, tmp_path):
    """A predictions table whose low-confidence rows were withheld (empty prediction,
    abstained: true) compares exactly like the full one."""
    from llmclf.evaluation.comparison import build_report
    from llmclf.runs.compare import from_frame

    frame, metrics = stored(runs["a"])
    classes = sorted(frame["label"].unique())
    confidence = frame[[f"proba_{c}" for c in classes]].max(axis=1)
    withheld = frame.copy()
    withheld["abstained"] = confidence < confidence.median()
    withheld.loc[withheld["abstained"], "prediction"] = ""
    assert withheld["abstained"].sum() > 0
    full = from_frame("full", runs["a"], frame, metrics, metrics, "stored")
    partial = from_frame("partial", runs["a"], withheld, metrics, metrics, "stored")
    assert np.array_equal(full.predicted, partial.predicted)
    report = build_report([full, partial], resamples=2000)
    assert (
        report["runs"][0]["macro_f1"]
        == report["runs"][1]["macro_f1"]
        == pytest.approx(metrics["macro_f1"])
    )
    assert report["runs"][0]["selective"] == report["runs"][1]["selective"]
    pair = report["pairs"][0]
    assert (pair["only_a_correct"], pair["only_b_correct"], pair["delta_macro_f1"]) == (0, 0, 0)
    assert pair["verdict"] == "no difference (the same F1 on every resample)"


def test_a_file_without_a_split_column_is_evaluated_whole(runs, tmp_path, capsys):
    """evaluate / compare / calibrate given such a file use every row unless a split is
    named; a run's own data, read again, keeps its training split."""
    assert main(["evaluate", str(runs["a"]), "--output", str(tmp_path / "own")]) == 0
    own = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert own["n"] == stored(runs["a"])[1]["n"] == 15  # the test tenth of 150 rows
    given = ["--data", str(runs["data"])]
    assert main(["evaluate", str(runs["a"]), *given, "--output", str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["n"] == 150
    out = tmp_path / "report"
    assert main(["compare", str(runs["a"]), str(runs["c"]), *given, "--output", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["n"] == 150
    run = tmp_path / "calibrated"
    shutil.copytree(runs["b"], run)
    assert main(["calibrate", str(run), *given]) == 0
    assert json.loads((run / "calibration.json").read_text())["n"] == 150
    capsys.readouterr()
    args = ["compare", str(runs["a"]), str(runs["b"]), "--split", "all"]
    assert main([*args, "--output", str(tmp_path / "r2")]) == 2
    assert "--split needs --data" in capsys.readouterr().err
