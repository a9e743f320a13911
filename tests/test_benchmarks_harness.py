"""The benchmark harness: ratio and median arithmetic, targets, interleaving."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# benchmarks/ is a top-level part of the repository, not an installed
# package: make it importable however pytest was started.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402
    Metric,
    Target,
    compare,
    interleave,
    median,
    not_measured,
    percentile,
    ratio,
)

THROUGHPUT = Metric("throughput", "throughput", "tasks/s", higher_is_better=True)
COST = Metric("us", "cost", "us", higher_is_better=False)


# -- ratio, median, percentile -----------------------------------------------------


def test_ratio_is_subject_over_baseline():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 4.0) == 0.25


@pytest.mark.parametrize("subject, baseline", [
    (1.0, 0.0), (None, 1.0), (1.0, None), (float("nan"), 1.0), (1.0, float("nan")),
])
def test_ratio_is_none_when_it_cannot_be_computed(subject, baseline):
    # JSON holds no infinities: a zero baseline gives no ratio at all.
    assert ratio(subject, baseline) is None


def test_median_of_odd_and_even_counts():
    assert median([5.0, 1.0, 3.0]) == 3.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_median_skips_missing_values_and_may_be_none():
    assert median([None, 2.0, None, 4.0]) == 3.0
    assert median([]) is None
    assert median([None]) is None


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.0) == 1


def test_percentile_does_not_need_sorted_input():
    assert percentile([9.0, 1.0, 5.0], 0.5) == 5.0


def test_percentile_rejects_nonsense():
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


# -- targets -------------------------------------------------------------------------


@pytest.mark.parametrize("target, value, met", [
    (Target.at_least(2.0), 2.0, True),
    (Target.at_least(2.0), 1.99, False),
    (Target.above(1.0), 1.0, False),
    (Target.above(1.0), 1.01, True),
    (Target.at_most(0.5), 0.5, True),
    (Target.at_most(0.5), 0.51, False),
    (Target("<", 1.0), 1.0, False),
])
def test_target_met(target, value, met):
    assert target.met(value) is met


def test_target_without_a_value_is_neither_met_nor_missed():
    assert Target.at_least(1.0).met(None) is None


def test_target_reads_as_a_bound_on_the_ratio():
    assert str(Target.at_least(2.0)) == ">= 2.00x"
    assert str(Target.at_most(0.45)) == "<= 0.45x"


def test_target_rejects_an_unknown_operator():
    with pytest.raises(ValueError, match="op must be"):
        Target("==", 1.0)


def test_metric_says_which_way_is_better():
    assert THROUGHPUT.better == "higher"
    assert COST.better == "lower"


# -- interleave ----------------------------------------------------------------------


def _recorder(log, name, value=1.0):
    def run():
        log.append(name)
        return {"throughput": value}
    return run


def test_interleave_rotates_who_goes_first():
    log = []
    contenders = {name: _recorder(log, name) for name in "ABC"}
    interleave(contenders, rounds=3)
    assert log == list("ABC" "BCA" "CAB")


def test_interleave_with_two_contenders_alternates_the_order():
    log = []
    interleave({"A": _recorder(log, "A"), "B": _recorder(log, "B")}, rounds=4)
    assert log == list("AB" "BA" "AB" "BA")


def test_interleave_throws_warmup_rounds_away():
    values = iter(range(100))
    samples = interleave({"A": lambda: {"x": float(next(values))}}, rounds=2, warmup=3)
    assert samples == {"A": [{"x": 3.0}, {"x": 4.0}]}


def test_interleave_reports_each_run_round_zero_for_warmup():
    seen = []
    interleave({"A": lambda: {}, "B": lambda: {}}, rounds=2, warmup=1,
               on_run=lambda round_, name: seen.append((round_, name)))
    assert seen == [(0, "A"), (0, "B"), (1, "B"), (1, "A"), (2, "A"), (2, "B")]


@pytest.mark.parametrize("rounds, warmup, contenders", [
    (0, 0, {"A": dict}), (1, -1, {"A": dict}), (1, 0, {}),
])
def test_interleave_rejects_bad_arguments(rounds, warmup, contenders):
    with pytest.raises(ValueError):
        interleave(contenders, rounds, warmup=warmup)


# -- compare ---------------------------------------------------------------------------


def _samples(baseline, subject):
    return {
        "base": [{"throughput": v} for v in baseline],
        "taskqueue": [{"throughput": v} for v in subject],
    }


def test_compare_takes_the_median_of_per_round_ratios():
    # Given rounds whose ratios are 3, 1 and 3, while the ratio of the
    # medians would be 30 / 20 = 1.5
    samples = _samples([10.0, 20.0, 30.0], [30.0, 20.0, 90.0])
    # When they are compared
    row = compare(samples, scenario="s", metric=THROUGHPUT, subject="taskqueue", baseline="base")
    # Then the figures are medians and the ratio is the median of the paired ratios
    assert row.baseline == 20.0
    assert row.taskqueue == 30.0
    assert row.ratios == [3.0, 1.0, 3.0]
    assert row.ratio == 3.0
    assert (row.ratio_min, row.ratio_max) == (1.0, 3.0)
    assert (row.baseline_min, row.baseline_max) == (10.0, 30.0)
    assert (row.taskqueue_min, row.taskqueue_max) == (20.0, 90.0)
    assert row.baseline_values == [10.0, 20.0, 30.0]
    assert row.rounds == 3


def test_compare_pairs_rounds_so_that_drift_cancels():
    # The machine got twice as slow in round 2, for both sides alike.
    samples = _samples([10.0, 20.0], [15.0, 30.0])
    row = compare(samples, scenario="s", metric=THROUGHPUT, subject="taskqueue", baseline="base")
    assert row.ratio == 1.5
    assert row.ratio_min == row.ratio_max == 1.5


def test_compare_judges_the_median_ratio_against_the_target():
    samples = _samples([100.0] * 5, [150.0, 250.0, 210.0, 190.0, 230.0])
    met = compare(samples, scenario="s", metric=THROUGHPUT, subject="taskqueue",
                  baseline="base", target=Target.at_least(2.0))
    missed = compare(samples, scenario="s", metric=THROUGHPUT, subject="taskqueue",
                     baseline="base", target=Target.at_least(2.2))
    assert met.ratio == 2.1
    assert met.met is True
    assert missed.met is False


def test_compare_without_target_has_no_verdict():
    row = compare(_samples([1.0], [1.0]), scenario="s", metric=THROUGHPUT,
                  subject="taskqueue", baseline="base")
    assert row.target is None
    assert row.met is None


def test_compare_keeps_sizes_and_note():
    row = compare(_samples([1.0], [2.0]), scenario="s", metric=THROUGHPUT, subject="taskqueue",
                  baseline="base", sizes={"tasks": 10}, note="why")
    assert row.sizes == {"tasks": 10}
    assert row.note == "why"


def test_compare_drops_rounds_whose_ratio_is_undefined():
    row = compare(_samples([0.0, 2.0], [1.0, 3.0]), scenario="s", metric=THROUGHPUT,
                  subject="taskqueue", baseline="base")
    assert row.ratios == [1.5]
    assert row.ratio == 1.5


def test_compare_names_a_missing_contender():
    with pytest.raises(KeyError):
        compare(_samples([1.0], [1.0]), scenario="s", metric=THROUGHPUT,
                subject="taskqueue", baseline="nobody")


def test_not_measured_invents_no_number():
    samples = {"taskqueue": [{"throughput": 5.0}, {"throughput": 7.0}]}
    row = not_measured(samples, scenario="peers", metric=THROUGHPUT, subject="taskqueue",
                       baseline="Huey", note="Huey: not installed", target=Target.above(1.0))
    assert row.baseline is None
    assert row.ratio is None and row.ratio_min is None and row.ratio_max is None
    assert row.met is None
    assert row.taskqueue == 6.0
    assert row.note == "Huey: not installed"


def test_not_measured_without_samples():
    row = not_measured(None, scenario="x", metric=THROUGHPUT, subject="taskqueue",
                       baseline="-", note="error")
    assert row.taskqueue is None
    assert row.rounds == 0
