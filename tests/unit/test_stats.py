"""Every statistic against an independent reference on fixed prediction vectors."""

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import f1_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from llmclf.errors import LlmclfError
from llmclf.evaluation.stats import (
    bootstrap_deltas,
    bootstrap_indices,
    f1_from_counts,
    holm,
    mcnemar_test,
    minimum_detectable_effect,
    paired_bootstrap,
)


def predictions(n=120, k=4, seed=0, error_a=0.25, error_b=0.35):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    a = np.where(rng.random(n) < error_a, rng.integers(0, k, n), truth)
    b = np.where(rng.random(n) < error_b, rng.integers(0, k, n), truth)
    return truth, a, b


def table(correct_a, correct_b):
    return [
        [np.sum(correct_a & correct_b), np.sum(correct_a & ~correct_b)],
        [np.sum(~correct_a & correct_b), np.sum(~correct_a & ~correct_b)],
    ]


@pytest.mark.parametrize("seed", range(6))
def test_exact_mcnemar_matches_scipy_and_statsmodels(seed):
    truth, a, b = predictions(seed=seed, n=60 + 40 * seed)
    correct_a, correct_b = a == truth, b == truth
    result = mcnemar_test(correct_a, correct_b)
    only_a, only_b = int(np.sum(correct_a & ~correct_b)), int(np.sum(~correct_a & correct_b))
    assert (result.only_a, result.only_b) == (only_a, only_b)
    assert result.p_value == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    reference = mcnemar(table(correct_a, correct_b), exact=True)
    assert result.p_value == pytest.approx(reference.pvalue)
    assert result.method == "exact"


def test_mcnemar_hand_computed_values():
    # 3 discordant one way, 0 the other: p = 2 * 0.5**3 = 0.25
    a = np.array([1, 1, 1, 0, 1], dtype=bool)
    b = np.array([0, 0, 0, 0, 1], dtype=bool)
    assert mcnemar_test(a, b).p_value == pytest.approx(0.25)
    # no discordant pair: nothing to tell the models apart
    assert mcnemar_test(a, a).p_value == 1.0
    # a balanced split (2 vs 2) gives p = 1 (capped)
    assert mcnemar_test(np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool)).p_value == 1.0


def test_chi2_mcnemar_matches_statsmodels_and_needs_many_discordant_pairs():
    truth, a, b = predictions(n=600, seed=3, error_a=0.1, error_b=0.3)
    correct_a, correct_b = a == truth, b == truth
    result = mcnemar_test(correct_a, correct_b, method="chi2")
    reference = mcnemar(table(correct_a, correct_b), exact=False, correction=True)
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    with pytest.raises(LlmclfError, match="at least 25 discordant"):
        mcnemar_test(correct_a[:20], correct_b[:20], method="chi2")


def test_holm_matches_statsmodels():
    p = [0.01, 0.04, 0.03, 0.2, 0.002]
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


@pytest.mark.parametrize("k", [2, 5])
def test_f1_from_counts_matches_sklearn(k):
    truth, a, _ = predictions(n=200, k=k, seed=k)
    eye = np.eye(k, dtype=bool)
    t, p = eye[truth], eye[a]
    tp, fp, fn = (t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0)
    macro, micro = f1_from_counts(tp, fp, fn)
    labels = list(range(k))
    assert macro == pytest.approx(f1_score(truth, a, average="macro", labels=labels))
    assert micro == pytest.approx(f1_score(truth, a, average="micro", labels=labels))


def brute_force_deltas(truth, a, b, k, resamples, seed, multi_label=False):
    """The bootstrap done the slow way: sklearn on every resample's rows."""
    labels = None if multi_label else list(range(k))
    out = []
    for rows in bootstrap_indices(len(truth), resamples, seed):
        scores = []
        for average in ("macro", "micro"):
            fa = f1_score(truth[rows], a[rows], average=average, labels=labels, zero_division=0)
            fb = f1_score(truth[rows], b[rows], average=average, labels=labels, zero_division=0)
            scores.append(fb - fa)
        out.append(scores)
    return np.array(out)


def multi_label_predictions(n=70, k=3, seed=5):
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, k)) < 0.4).astype(int)
    a = np.where(rng.random((n, k)) < 0.15, 1 - truth, truth)
    b = np.where(rng.random((n, k)) < 0.3, 1 - truth, truth)
    return truth, a, b


def test_every_resample_matches_sklearn_on_the_same_rows_single_label():
    # a rare class (3) makes some resamples lack it: the zero_division convention matters
    truth, a, b = predictions(n=60, k=4, seed=7)
    truth[truth == 3] = 0
    truth[:2] = 3
    deltas = bootstrap_deltas(truth, a, b, num_classes=4, resamples=300, seed=11)
    assert deltas == pytest.approx(brute_force_deltas(truth, a, b, 4, 300, 11))


def test_every_resample_matches_sklearn_on_the_same_rows_multi_label():
    truth, a, b = multi_label_predictions()
    deltas = bootstrap_deltas(truth, a, b, num_classes=3, resamples=300, seed=2)
    assert deltas == pytest.approx(brute_force_deltas(truth, a, b, 3, 300, 2, multi_label=True))


@pytest.mark.parametrize("multi_label", [False, True])
def test_paired_bootstrap_interval_is_the_percentile_interval(multi_label):
    truth, a, b = multi_label_predictions() if multi_label else predictions(n=80, k=3, seed=7)
    k = 3
    result = paired_bootstrap(truth, a, b, num_classes=k, resamples=2000, seed=11)
    deltas = bootstrap_deltas(truth, a, b, k, 2000, 11)
    low, high = np.percentile(deltas, [2.5, 97.5], axis=0)
    assert result.macro_ci == pytest.approx((low[0], high[0]))
    assert result.micro_ci == pytest.approx((low[1], high[1]))
    labels = None if multi_label else list(range(k))
    for average, delta in (("macro", result.delta_macro_f1), ("micro", result.delta_micro_f1)):
        assert delta == pytest.approx(
            f1_score(truth, b, average=average, labels=labels)
            - f1_score(truth, a, average=average, labels=labels)
        )
    assert result.prob_b_better_macro == pytest.approx(np.mean(deltas[:, 0] > 0))
    assert result.resamples == 2000 and result.seed == 11 and result.confidence == 0.95


def test_bootstrap_is_seeded_and_finds_a_clear_difference():
    truth, a, b = predictions(n=300, seed=1, error_a=0.05, error_b=0.5)
    first = paired_bootstrap(truth, a, b, num_classes=4, resamples=2000, seed=3)
    again = paired_bootstrap(truth, a, b, num_classes=4, resamples=2000, seed=3)
    other = paired_bootstrap(truth, a, b, num_classes=4, resamples=2000, seed=4)
    assert first == again
    assert first.macro_ci != other.macro_ci
    assert first.macro_ci[1] < 0 and first.prob_b_better_macro == 0.0
    assert first.macro_ci[0] < first.delta_macro_f1 < first.macro_ci[1]


def test_identical_models_give_a_zero_interval_and_p_one():
    truth, a, _ = predictions(n=50)
    result = paired_bootstrap(truth, a, a, num_classes=4, resamples=2000)
    assert result.macro_ci == (0.0, 0.0) and result.delta_macro_f1 == 0.0
    assert mcnemar_test(a == truth, a == truth).p_value == 1.0


def test_too_few_resamples_are_refused():
    truth, a, b = predictions(n=20)
    with pytest.raises(LlmclfError, match="at least 2000"):
        paired_bootstrap(truth, a, b, num_classes=4, resamples=500)


def test_unparsed_answers_count_as_wrong_like_scikit_learn():
    """-1 (an unparsed generated answer) is no class: a false negative of the true class."""
    truth, a, b = predictions(n=80, k=3, seed=5)
    b = b.copy()
    b[::7] = -1
    result = paired_bootstrap(truth, a, b, num_classes=3, resamples=2000, seed=0)
    labels = [0, 1, 2]
    expected_macro = f1_score(truth, b, labels=labels, average="macro") - f1_score(
        truth, a, labels=labels, average="macro"
    )
    expected_micro = f1_score(truth, b, labels=labels, average="micro") - f1_score(
        truth, a, labels=labels, average="micro"
    )
    assert result.delta_macro_f1 == pytest.approx(expected_macro)
    assert result.delta_micro_f1 == pytest.approx(expected_micro)


def test_minimum_detectable_effect_by_hand():
    # z_0.975 = 1.959964, z_0.95 = 1.644854, z_0.8 = 0.841621
    assert minimum_detectable_effect(0.01) == pytest.approx((1.959964 + 0.841621) * 0.01)
    assert minimum_detectable_effect(0.02, confidence=0.9) == pytest.approx(
        (1.644854 + 0.841621) * 0.02
    )
    assert minimum_detectable_effect(0.01, power=0.5) == pytest.approx(1.959964 * 0.01)
    assert minimum_detectable_effect(0.0) == 0.0
    with pytest.raises(LlmclfError, match="confidence"):
        minimum_detectable_effect(0.01, confidence=1.2)


def test_the_mde_of_a_constructed_pair_matches_the_analytic_standard_error():
    """Single-label micro-F1 is accuracy, so delta micro-F1 is the mean of per-example
    differences d in {-1, 0, +1}: its standard error is sqrt(var(d) / n). Of 400 examples,
    10 only A gets right and 30 only B: var(d) = 40/400 - (20/400)^2 = 0.0975, SE =
    sqrt(0.0975 / 400) = 0.015612, MDE = 2.801585 * SE = 0.043740."""
    truth = np.zeros(400, dtype=int)
    a, b = truth.copy(), truth.copy()
    b[:10] = 1  # only A right
    a[10:40] = 1  # only B right
    result = paired_bootstrap(truth, a, b, num_classes=2, resamples=10_000, seed=0)
    assert result.delta_micro_f1 == pytest.approx(20 / 400)
    assert result.micro_se == pytest.approx(0.015612, rel=0.03)
    assert result.micro_mde == pytest.approx(0.043740, rel=0.03)
    # exactly the formula on the resamples' spread
    deltas = bootstrap_deltas(truth, a, b, 2, 10_000, 0)
    assert result.micro_se == pytest.approx(deltas[:, 1].std(ddof=1))
    assert result.macro_mde == pytest.approx(2.8015852 * deltas[:, 0].std(ddof=1))
    # four times the examples, the same rates: half the detectable difference
    larger = paired_bootstrap(*(np.tile(x, 4) for x in (truth, a, b)), 2, 10_000, seed=0)
    assert larger.micro_mde == pytest.approx(result.micro_mde / 2, rel=0.05)
