"""The paper's eight claims as comparisons of study records, and the rules that turn
each comparison into a verdict: *holds here*, *does not hold here*, *not decidable at
this budget* (or *not run yet*, while a grid it needs has no results).

How a comparison is made (``contrast``): runs of group A and group B are paired by seed
(a group of one run is paired with every run of the other); each pair is tested with
llmclf's exact McNemar test and its paired bootstrap of ΔF1 (B minus A; macro-F1 on
single-label data, micro-F1 on multi-label, llmclf's primary metrics). Every pair draws
the same bootstrap rows (``bootstrap_deltas`` depends only on n, resamples and seed), so
the mean of the pairs' resampled differences is the bootstrap distribution of the
seed-averaged ΔF1. Within one claim, the McNemar p-values of all its pairs are
Holm-adjusted together, and each of its m comparisons gets a percentile interval at the
simultaneous level 1 - 0.05 / m (Bonferroni: Holm's first step; intervals have no
step-down form). The rules below read those adjusted figures only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from benchmarks.paper_study.results import evaluation_of
from llmclf.errors import LlmclfError
from llmclf.evaluation.calibration import expected_calibration_error, rescale_proba
from llmclf.evaluation.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    MIN_RESAMPLES,
    bootstrap_deltas,
    bootstrap_indices,
    f1_from_counts,
    holm,
    indicator,
    mcnemar_test,
)

HOLDS = "holds here"
FAILS = "does not hold here"
UNDECIDED = "not decidable at this budget"
NOT_RUN = "not run yet"

ALPHA = 0.05
# The thresholds every rule reads; EXPERIMENTS.md prints them with the rules.
MATCH_MARGIN = 0.01  # "matches or beats": B - A > -0.01
COMPETITIVE_MARGIN = 0.02  # "competitive" / "rivals": B - A > -0.02
POOLING_BAND = 0.014  # "last and mean within ~0.014 F1"
FAIL_GAP = 0.05  # "fails": at least 0.05 F1 below last-token pooling
ZERO_SHOT_GAP = 0.20  # "far behind": at least 0.20 F1 below the trained head
ECE_REASONABLE = 0.15  # "reasonably calibrated": ECE below 0.15 (the paper: 0.09)
DISTILL_KEEP = 0.97  # "keeps >= 97 % of the teacher's F1"
DISTILL_SPEEDUP = 30.0  # "~45x the throughput": at least 2/3 of it, measured here
LARGE_BUDGET = 100e6  # "large budgets (>= ~100M trainable)"
PARAMETER_RATIO = 10.0  # "10-30x fewer trainable parameters": at least 10x
ECE_RESAMPLES = MIN_RESAMPLES  # ECE is re-binned per resample: fewer resamples

# The LoRA setting every grid shares, so cells of different grids are the same runs.
CORE_LORA = {"lora_r": 16, "target_modules": ["all-linear"]}


# ---------------------------------------------------------------------------------------
# Verdict rules on an interval [low, high] of B - A
# ---------------------------------------------------------------------------------------


def at_least(low: float, high: float, bound: float) -> str:
    """B - A > bound: holds when the whole interval is above ``bound``, does not hold
    when it is wholly below, is not decidable when it straddles ``bound``.

    >>> at_least(-0.005, 0.03, -0.01), at_least(-0.08, -0.02, -0.01), at_least(-0.03, 0.01, -0.01)
    ('holds here', 'does not hold here', 'not decidable at this budget')
    """
    if low > bound:
        return HOLDS
    if high < bound:
        return FAILS
    return UNDECIDED


def below(low: float, high: float, bound: float) -> str:
    """B - A < bound: the mirror of ``at_least``."""
    if high < bound:
        return HOLDS
    if low > bound:
        return FAILS
    return UNDECIDED


def within(low: float, high: float, band: float) -> str:
    """|B - A| < band: holds when the interval lies inside (-band, band), does not hold
    when it lies wholly outside it.

    >>> within(-0.01, 0.012, 0.014), within(0.02, 0.05, 0.014), within(-0.01, 0.03, 0.014)
    ('holds here', 'does not hold here', 'not decidable at this budget')
    """
    if -band < low and high < band:
        return HOLDS
    if low > band or high < -band:
        return FAILS
    return UNDECIDED


def all_of(verdicts: list[str]) -> str:
    """A claim (or part) of several conditions: holds when all hold, does not hold when
    one does not, else not decidable; not run yet when none could be tested."""
    if not verdicts or all(v == NOT_RUN for v in verdicts):
        return NOT_RUN
    if FAILS in verdicts:
        return FAILS
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return UNDECIDED


def any_of(verdicts: list[str]) -> str:
    """ "There is one such run": holds when one holds, does not hold when all do not."""
    if not verdicts or all(v == NOT_RUN for v in verdicts):
        return NOT_RUN
    if HOLDS in verdicts:
        return HOLDS
    if all(v == FAILS for v in verdicts):
        return FAILS
    return UNDECIDED


# ---------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------


def seed_of(record: dict):
    return record["config"].get("seed")


def primary_index(record: dict) -> int:
    """Column of ``bootstrap_deltas``: 0 macro-F1 (single-label), 1 micro-F1 (multi-label)."""
    return 1 if record["multi_label"] else 0


def primary_name(record: dict) -> str:
    return "micro-F1" if record["multi_label"] else "macro-F1"


def f1_scores(record: dict) -> tuple[float, float]:
    """(macro-F1, micro-F1) of a record's test predictions, counted as the bootstrap
    counts them (an unparsed answer is a false negative)."""
    k = len(record["classes"])
    truth = indicator(np.asarray(record["truth"]), k).astype(bool)
    predicted = indicator(np.asarray(record["predicted"]), k).astype(bool)
    counts = [(truth & predicted), (~truth & predicted), (truth & ~predicted)]
    macro, micro = f1_from_counts(*(c.sum(axis=0) for c in counts))
    return float(macro), float(micro)


def primary_f1(record: dict) -> float:
    return f1_scores(record)[primary_index(record)]


def pair_by_seed(a: list[dict], b: list[dict]) -> list[tuple[dict, dict]]:
    """Runs paired by seed; a group of one run is paired with every run of the other."""
    if len(a) == 1 or len(b) == 1:
        return [(x, y) for x in a for y in b]
    by_seed = {seed_of(y): y for y in b}
    return [(x, by_seed[seed_of(x)]) for x in a if seed_of(x) in by_seed]


@dataclass
class Contrast:
    """B minus A, over seed pairs; ``low`` / ``high`` and the adjusted p-values are set by
    ``adjust`` once the claim's comparisons are all known."""

    label: str
    a: list[dict]
    b: list[dict]
    metric: str = ""
    pairs: list[dict] = field(default_factory=list)
    delta: float = float("nan")
    deltas: np.ndarray | None = None  # [resamples] seed-averaged bootstrap differences
    low: float = float("nan")
    high: float = float("nan")
    confidence: float = 1 - ALPHA
    verdict: str = NOT_RUN
    rule: str = ""

    @property
    def ran(self) -> bool:
        return bool(self.pairs)


def contrast(
    label: str,
    a: list[dict],
    b: list[dict],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Contrast:
    """Compare group B with group A (B minus A): McNemar per seed pair and the bootstrap
    distribution of the seed-averaged ΔF1. Empty when either group has no run."""
    result = Contrast(label, a, b)
    pairs = pair_by_seed(a, b)
    if not pairs:
        return result
    column = primary_index(pairs[0][0])
    result.metric = primary_name(pairs[0][0])
    draws = []
    for x, y in pairs:
        if x["test_set_hash"] != y["test_set_hash"]:
            raise LlmclfError(f"{x['name']} and {y['name']} were tested on different test sets")
        ex, ey = evaluation_of(x), evaluation_of(y)
        mcnemar = mcnemar_test(ex.correct, ey.correct)
        k = len(x["classes"])
        draws.append(bootstrap_deltas(ex.truth, ex.predicted, ey.predicted, k, resamples, seed))
        result.pairs.append(
            {
                "a": x["name"],
                "b": y["name"],
                "delta": primary_f1(y) - primary_f1(x),
                "only_a": mcnemar.only_a,
                "only_b": mcnemar.only_b,
                "mcnemar_p": mcnemar.p_value,
                "mcnemar_p_adjusted": mcnemar.p_value,
            }
        )
    result.deltas = np.mean([d[:, column] for d in draws], axis=0)
    result.delta = float(np.mean([p["delta"] for p in result.pairs]))
    return result


def adjust(contrasts: list[Contrast]) -> None:
    """Holm over every McNemar p-value of the claim; intervals at 1 - 0.05 / m."""
    ran = [c for c in contrasts if c.ran]
    pairs = [p for c in ran for p in c.pairs]
    for pair, adjusted in zip(pairs, holm([p["mcnemar_p"] for p in pairs])):
        pair["mcnemar_p_adjusted"] = adjusted
    confidence = 1 - ALPHA / max(1, len(ran))
    tail = (1 - confidence) / 2 * 100
    for c in ran:
        c.confidence = confidence
        c.low, c.high = (float(v) for v in np.percentile(c.deltas, [tail, 100 - tail]))


def decide(c: Contrast, rule: Callable[[float, float], str], text: str) -> str:
    """Apply an interval rule to a comparison (not run yet when it has no pairs)."""
    c.rule = text
    c.verdict = rule(c.low, c.high) if c.ran else NOT_RUN
    return c.verdict


def certified(c: Contrast) -> bool:
    """Some seed pair differs at Holm-adjusted p < 0.05 and the interval excludes 0."""
    significant = any(p["mcnemar_p_adjusted"] < ALPHA for p in c.pairs)
    return significant and (c.low > 0 or c.high < 0)


# ---------------------------------------------------------------------------------------
# Calibration: ECE and what temperature scaling does to it, by bootstrap
# ---------------------------------------------------------------------------------------


@dataclass
class CalibrationCheck:
    runs: list[dict]
    ece_before: float = float("nan")
    ece_after: float = float("nan")
    before_interval: tuple[float, float] = (float("nan"), float("nan"))
    gain_interval: tuple[float, float] = (float("nan"), float("nan"))  # before - after
    temperatures: list[float] = field(default_factory=list)
    confidence: float = 1 - ALPHA


def calibration_check(
    runs: list[dict], confidence: float, resamples: int = ECE_RESAMPLES, seed: int = 0
) -> CalibrationCheck:
    """Seed-averaged test ECE before (T = 1) and after each run's fitted temperature,
    with bootstrap intervals of ECE and of the gain (before minus after); the same rows
    are drawn for every run and for both temperatures."""
    check = CalibrationCheck(runs, confidence=confidence)
    if not runs:
        return check
    befores, afters, observed = [], [], []
    for record in runs:
        e = evaluation_of(record)
        multi = e.schema.multi_label
        raw = rescale_proba(e.proba, multi, e.proba_temperature, 1.0)
        scaled = rescale_proba(raw, multi, 1.0, e.temperature)
        rows = list(bootstrap_indices(len(e.truth), resamples, seed))
        befores.append([expected_calibration_error(e.truth[i], raw[i]) for i in rows])
        afters.append([expected_calibration_error(e.truth[i], scaled[i]) for i in rows])
        observed.append(
            (expected_calibration_error(e.truth, raw), expected_calibration_error(e.truth, scaled))
        )
        check.temperatures.append(e.temperature)
    before, after = np.mean(befores, axis=0), np.mean(afters, axis=0)
    tail = (1 - confidence) / 2 * 100
    check.ece_before = float(np.mean([o[0] for o in observed]))
    check.ece_after = float(np.mean([o[1] for o in observed]))
    check.before_interval = tuple(float(v) for v in np.percentile(before, [tail, 100 - tail]))
    check.gain_interval = tuple(float(v) for v in np.percentile(before - after, [tail, 100 - tail]))
    return check


# ---------------------------------------------------------------------------------------
# Which runs a claim reads
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Datasets:
    """The study's data sets (a micro study in the tests passes its own files)."""

    single: str = "bbc-news"  # single-label: every claim's main set
    second: str = "reuters-r8"  # a second single-label set (claims 1-3)
    multi: str = "bbc-news-multi"  # multi-label (claims 2 and 4)


def _same(value, wanted) -> bool:
    if isinstance(wanted, (int, float)) and isinstance(value, (int, float)):
        return float(value) == float(wanted)
    return value == wanted


def select(records: list[dict], data: str, method: str, kind: str = "train", **options) -> list:
    """The records of ``method`` on ``data`` whose config has every one of ``options``,
    sorted by seed."""
    found = [
        r
        for r in records
        if r["data"] == data
        and r["method"] == method
        and r["kind"] == kind
        and all(_same(r["config"].get(k), v) for k, v in options.items())
    ]
    return sorted(found, key=lambda r: (seed_of(r) is None, seed_of(r) or 0, r["name"]))


def head_runs(records, data, pooling="last", **lora) -> list[dict]:
    return select(records, data, "head", pooling=pooling, **(lora or CORE_LORA))


def instruct_runs(records, data, verbalizer="names", **lora) -> list[dict]:
    return select(records, data, "instruct", verbalizer=verbalizer, **(lora or CORE_LORA))


def sweep_runs(records, data, method) -> list[dict]:
    """The LoRA-budget sweep's runs of ``method`` (seed 42, any rank and target modules)."""
    extra = {"pooling": "last"} if method == "head" else {"verbalizer": "names"}
    return [r for r in select(records, data, method, seed=42, **extra) if "lora_r" in r["config"]]


def trainable(record: dict) -> int:
    return int(record["metrics"].get("trainable_params") or 0)


# ---------------------------------------------------------------------------------------
# The claims
# ---------------------------------------------------------------------------------------


@dataclass
class Part:
    title: str
    verdict: str
    rule: str
    contrasts: list[Contrast] = field(default_factory=list)
    note: str = ""
    runs: list[dict] = field(default_factory=list)


@dataclass
class Claim:
    number: int
    statement: str
    grids: list[str]
    parts: list[Part]
    combine: str = "all parts must hold"
    calibration: CalibrationCheck | None = None

    @property
    def verdict(self) -> str:
        return all_of([p.verdict for p in self.parts])

    @property
    def contrasts(self) -> list[Contrast]:
        return [c for p in self.parts for c in p.contrasts]

    @property
    def runs(self) -> list[dict]:
        seen, out = set(), []
        for r in [r for p in self.parts for r in p.runs] + [
            r for c in self.contrasts for r in c.a + c.b
        ]:
            if r["name"] not in seen:
                seen.add(r["name"])
                out.append(r)
        return out


def _rule_at_least(bound: float) -> tuple[Callable, str]:
    return (lambda lo, hi: at_least(lo, hi, bound)), f"interval of Δ above {bound:+.3f}"


def _rule_below(bound: float) -> tuple[Callable, str]:
    return (lambda lo, hi: below(lo, hi, bound)), f"interval of Δ below {bound:+.3f}"


def _rule_within(band: float) -> tuple[Callable, str]:
    return (lambda lo, hi: within(lo, hi, band)), f"interval of Δ inside ±{band:.3f}"


def _part(title: str, c: Contrast, rule: tuple[Callable, str], note: str = "") -> Part:
    fn, text = rule
    return Part(title, decide(c, fn, text), text, [c], note)


def claim_1(records: list[dict], ds: Datasets, **kw) -> Claim:
    """Head vs instruct on single-label data, at one LoRA budget and across the sweep."""
    same = [
        contrast(f"head − instruct, {d}", instruct_runs(records, d), head_runs(records, d), **kw)
        for d in (ds.single, ds.second)
    ]
    best_instruct = max(sweep_runs(records, ds.single, "instruct"), key=primary_f1, default=None)
    small_heads = []
    if best_instruct is not None:
        limit = trainable(best_instruct) / PARAMETER_RATIO
        small_heads = [r for r in sweep_runs(records, ds.single, "head") if trainable(r) <= limit]
    sweep = [
        contrast(f"head ({trainable(h):,} trainable) − best instruct", [best_instruct], [h], **kw)
        for h in small_heads
    ]
    adjust(same + sweep)
    rule = _rule_at_least(-MATCH_MARGIN)
    parts = [_part(f"matches or beats at the same LoRA budget ({c.label})", c, rule) for c in same]
    for c in sweep:
        decide(c, *rule)
    note = (
        f"best instruct cell: {best_instruct['name']} ({trainable(best_instruct):,} trainable)"
        if best_instruct
        else ""
    )
    verdict = any_of([c.verdict for c in sweep]) if sweep else NOT_RUN
    if best_instruct is not None and not sweep:
        verdict, note = UNDECIDED, note + f"; no head cell has ≥ {PARAMETER_RATIO:.0f}× fewer"
    parts.append(
        Part(
            f"with ≥ {PARAMETER_RATIO:.0f}× fewer trainable parameters (LoRA sweep, {ds.single}):"
            " some head cell that small matches or beats the best instruct cell",
            verdict,
            rule[1] + " for at least one such head cell (none: does not hold)",
            sweep,
            note,
        )
    )
    return Claim(
        1,
        "The embedding head matches or beats instruction tuning on single-label data with "
        "10–30× fewer trainable parameters.",
        ["core", "reuters", "lora-budget"],
        parts,
    )


def claim_2(records: list[dict], ds: Datasets, **kw) -> Claim:
    multi = contrast(
        f"instruct − head, {ds.multi}",
        head_runs(records, ds.multi),
        instruct_runs(records, ds.multi),
        **kw,
    )
    single = [
        contrast(f"instruct − head, {d}", head_runs(records, d), instruct_runs(records, d), **kw)
        for d in (ds.single, ds.second)
    ]
    adjust([multi, *single])
    parts = [
        _part("competitive on multi-label", multi, _rule_at_least(-COMPETITIVE_MARGIN)),
        *[
            _part(
                f"not competitive on single-label ({c.label.split(', ')[1]})",
                c,
                _rule_below(-COMPETITIVE_MARGIN),
            )
            for c in single
        ],
    ]
    sweep = sweep_runs(records, ds.single, "instruct")
    largest = max((trainable(r) for r in sweep), default=0)
    if not sweep:
        budget = Part("only with ≥ 100M trainable parameters", NOT_RUN, "")
    elif largest < LARGE_BUDGET:
        budget = Part(
            "only with ≥ 100M trainable parameters",
            UNDECIDED,
            f"needs instruct cells on both sides of {LARGE_BUDGET:,.0f} trainable parameters",
            note=f"the largest instruct budget here is {largest:,} trainable parameters",
            runs=sweep,
        )
    else:  # a larger model: small budgets must lose, large ones be competitive
        best_head = max(sweep_runs(records, ds.single, "head"), key=primary_f1)
        checks = [
            contrast(f"instruct {trainable(r):,} − best head", [best_head], [r], **kw)
            for r in sweep
        ]
        adjust(checks)
        for c, r in zip(checks, sweep):
            rule = (
                _rule_at_least(-COMPETITIVE_MARGIN)
                if trainable(r) >= LARGE_BUDGET
                else _rule_below(-COMPETITIVE_MARGIN)
            )
            decide(c, *rule)
        budget = Part(
            "only with ≥ 100M trainable parameters",
            all_of([c.verdict for c in checks]),
            "competitive at ≥ 100M, not competitive below",
            checks,
        )
    parts.append(budget)
    return Claim(
        2,
        "Instruction tuning is competitive only on multi-label data, and only with large "
        "budgets (≥ ~100M trainable parameters).",
        ["core", "multi-label", "reuters", "lora-budget"],
        parts,
    )


def claim_3(records: list[dict], ds: Datasets, **kw) -> Claim:
    rivals = []
    for d in (ds.single, ds.second):
        encoder = select(records, d, "encoder")
        rivals.append(contrast(f"head − encoder, {d}", encoder, head_runs(records, d), **kw))
        rivals.append(
            contrast(f"instruct − encoder, {d}", encoder, instruct_runs(records, d), **kw)
        )
    adjust(rivals)
    parts = [
        _part(f"rivals the encoder ({c.label})", c, _rule_at_least(-COMPETITIVE_MARGIN))
        for c in rivals
    ]
    lead = rivals[0]  # head - encoder on the main set, adjusted with the others
    if not lead.ran:
        verdict = NOT_RUN
    elif certified(lead) or lead.high < 0:
        verdict = FAILS
    elif all(p["delta"] > 0 for p in lead.pairs):
        verdict = HOLDS
    else:
        verdict = UNDECIDED
    parts.append(
        Part(
            f"the head's lead over the encoder ({ds.single}) is consistent in direction but "
            "not certified at p < 0.05",
            verdict,
            "holds: ΔF1 > 0 in every seed pair and no Holm-adjusted McNemar p < 0.05; does not "
            "hold: a certified difference (adjusted p < 0.05 and an interval excluding 0) or an "
            "interval wholly below 0",
            [],
            "the paper: McNemar p = 0.24",
        )
    )
    return Claim(
        3,
        "Both rival a fine-tuned BERT-class encoder; the head's lead over it is consistent in "
        "direction but not statistically certified at p < 0.05.",
        ["core", "reuters"],
        parts,
    )


def claim_4(records: list[dict], ds: Datasets, **kw) -> Claim:
    mean = contrast(
        f"mean − last, {ds.single}",
        head_runs(records, ds.single),
        head_runs(records, ds.single, pooling="mean"),
        **kw,
    )
    last_multi = head_runs(records, ds.multi)
    fails = [
        contrast(
            f"{p} − last, {ds.multi}", last_multi, head_runs(records, ds.multi, pooling=p), **kw
        )
        for p in ("max", "token")
    ]
    adjust([mean, *fails])
    parts = [_part("last-token and mean pooling within 0.014 F1", mean, _rule_within(POOLING_BAND))]
    for c in fails:
        parts.append(
            _part(
                f"{c.label.split(' ')[0]} pooling fails on multi-label", c, _rule_below(-FAIL_GAP)
            )
        )
    context = [r for p in ("max", "token") for r in head_runs(records, ds.single, pooling=p)]
    parts[0].runs = context  # max / token on single-label, shown for context
    return Claim(
        4,
        "Pooling: last-token and mean pooling are within ~0.014 F1; max pooling and a "
        "learnable [CLS]-like token fail on multi-label data.",
        ["core", "multi-label", "pooling", "pooling-multi"],
        parts,
    )


def claim_5(records: list[dict], ds: Datasets, **kw) -> Claim:
    runs = {
        v: instruct_runs(records, ds.single, verbalizer=v) for v in ("names", "letters", "numbers")
    }
    runs = {v: [r for r in rs if seed_of(r) == 42] for v, rs in runs.items()}
    pairs = [("names", "letters"), ("names", "numbers"), ("letters", "numbers")]
    contrasts = [contrast(f"{b} − {a}", runs[a], runs[b], **kw) for a, b in pairs]
    adjust(contrasts)
    for c in contrasts:
        decide(c, *_rule_within(MATCH_MARGIN))  # "the same": inside ±0.01
    ran = [c for c in contrasts if c.ran]
    if not ran:
        verdict = NOT_RUN
    elif any(certified(c) for c in ran):
        verdict = HOLDS
    elif len(ran) == len(contrasts) and all(c.verdict == HOLDS for c in ran):
        verdict = FAILS  # every verbalizer gives the same F1
    else:
        verdict = UNDECIDED
    part = Part(
        f"the label words change instruct's F1 ({ds.single}, seed 42)",
        verdict,
        "holds: some pair of verbalizers differs with Holm-adjusted McNemar p < 0.05 and an "
        f"interval excluding 0; does not hold: every pair's interval inside ±{MATCH_MARGIN}",
        contrasts,
    )
    return Claim(
        5,
        "The verbalizer (the label words) matters for instruction tuning.",
        ["core", "verbalizer"],
        [part],
    )


def claim_6(records: list[dict], ds: Datasets, **kw) -> Claim:
    heads = head_runs(records, ds.single)
    calibrated = [r for r in heads if "temperature" in r["calibration"]]
    check = calibration_check(calibrated, confidence=1 - ALPHA / 2)
    low, high = check.before_interval
    gain_low, gain_high = check.gain_interval
    ran = bool(calibrated)
    parts = [
        Part(
            "the head is reasonably calibrated (test ECE, T = 1)",
            below(low, high, ECE_REASONABLE) if ran else NOT_RUN,
            f"interval of the seed-averaged ECE below {ECE_REASONABLE} (the paper: 0.09)",
            runs=heads,
        ),
        Part(
            "temperature scaling (fitted on validation) lowers the test ECE",
            at_least(gain_low, gain_high, 0.0) if ran else NOT_RUN,
            "interval of ECE before − after above 0",
        ),
    ]
    claim = Claim(
        6,
        "Calibration: the head is reasonably calibrated (ECE ≈ 0.09) and temperature scaling "
        "helps.",
        ["core"],
        parts,
    )
    claim.calibration = check
    return claim


def claim_7(records: list[dict], ds: Datasets, **kw) -> Claim:
    students = select(records, ds.single, "encoder", kind="distill")
    teacher_names = {s["metrics"].get("teacher_run") for s in students}
    teachers = [r for r in records if r["name"] in teacher_names and r["data"] == ds.single]
    c = contrast("student − teacher", teachers[:1], students[:1], **kw)
    adjust([c])
    parts = []
    if c.ran:
        keep = -(1 - DISTILL_KEEP) * primary_f1(teachers[0])
        parts.append(
            _part(f"keeps ≥ {DISTILL_KEEP:.0%} of the teacher's F1", c, _rule_at_least(keep))
        )
        ratio = students[0]["metrics"].get("throughput_ratio") or 0.0
        parts.append(
            Part(
                f"at ~45× the throughput (measured: {ratio:.1f}×)",
                HOLDS if ratio >= DISTILL_SPEEDUP else FAILS,
                f"student / teacher test examples per second, timed side by side, ≥ {DISTILL_SPEEDUP:.0f}",
            )
        )
    else:
        parts.append(Part(f"keeps ≥ {DISTILL_KEEP:.0%} of the teacher's F1", NOT_RUN, "", [c]))
    return Claim(
        7,
        "A distilled encoder keeps ≥ 97 % of the teacher's F1 at ~45× the throughput.",
        ["core"],
        parts,
    )


def claim_8(records: list[dict], ds: Datasets, **kw) -> Claim:
    zero = select(records, ds.single, "instruct", kind="zero-shot")
    behind = contrast("zero-shot − head", head_runs(records, ds.single), zero, **kw)
    adjust([behind])
    part = _part(
        "zero-shot prompting is far behind the trained head", behind, _rule_below(-ZERO_SHOT_GAP)
    )
    if zero:
        part.note = f"zero-shot {primary_name(zero[0])} {primary_f1(zero[0]):.3f} (the paper: 0.21)"
    return Claim(8, "Zero-shot prompting is far behind (F1 ≈ 0.21).", ["core"], [part])


CLAIMS = (claim_1, claim_2, claim_3, claim_4, claim_5, claim_6, claim_7, claim_8)

RULES = [
    "Δ is B − A of macro-F1 (single-label data) or micro-F1 (multi-label), averaged over "
    "seed pairs; its interval is the percentile bootstrap interval at 1 − 0.05/m for the claim's m comparisons.",
    f"*matches or beats*: interval above −{MATCH_MARGIN}; *competitive* / *rivals*: above "
    f"−{COMPETITIVE_MARGIN}; *not competitive*: below −{COMPETITIVE_MARGIN}.",
    f"*within 0.014*: interval inside ±{POOLING_BAND}; *fails*: interval below −{FAIL_GAP} "
    f"(vs last-token pooling); *far behind*: below −{ZERO_SHOT_GAP}.",
    f"*reasonably calibrated*: interval of the test ECE below {ECE_REASONABLE}; *temperature "
    "scaling helps*: interval of ECE before − after above 0 (2,000 resamples, same rows "
    "for both).",
    f"*keeps ≥ 97 %*: interval of student − teacher above −{1 - DISTILL_KEEP:.2f} × the "
    f"teacher's F1; *~45× the throughput*: the measured ratio ≥ {DISTILL_SPEEDUP:.0f}.",
    f"*10–30× fewer parameters*: a head cell with ≤ 1/{PARAMETER_RATIO:.0f} of the best instruct "
    f"cell's trainable parameters; *large budget*: ≥ {LARGE_BUDGET:,.0f} trainable.",
    "*certified*: some seed pair's Holm-adjusted McNemar p < 0.05 and an interval excluding 0.",
    "An interval wholly on the claim's side: *holds here*; wholly on the other side: *does not "
    "hold here*; straddling the threshold: *not decidable at this budget*. A claim holds when "
    "all its parts hold and does not hold when one part does not.",
]


def evaluate_claims(records: list[dict], datasets: Datasets | None = None, **kw) -> list[Claim]:
    """Every claim, decided on ``records`` (``kw``: bootstrap resamples and seed)."""
    ds = datasets or Datasets()
    return [claim(records, ds, **kw) for claim in CLAIMS]
