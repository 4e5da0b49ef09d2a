"""Percentiles, summaries, throughput and the stage recorder of tinymm.bench.stats."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tinymm.bench.stats import (
    OVERHEAD_STAGE, RunRecord, StageRecorder, StageTimer, percentile, summarize, throughput,
)

FIXED_ARRAYS = (
    [3.0],
    [1.0, 2.0],
    [5.0, 1.0, 4.0, 2.0, 3.0],
    [0.010, 0.012, 0.011, 0.050, 0.013, 0.012, 0.0105, 0.2],
    list(np.random.default_rng(0).exponential(0.01, 101)),
)
QUANTILES = (0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 100.0)


@pytest.mark.parametrize("values", FIXED_ARRAYS)
@pytest.mark.parametrize("q", QUANTILES)
def test_percentile_matches_numpy_linear(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-15)


def test_percentile_known_values():
    # Ranks 0..4 of [1..5]: p50 is the middle, p90 is 90% of the way from rank 3 to rank 4.
    assert percentile([1, 2, 3, 4, 5], 50) == 3.0
    assert percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)
    assert percentile([10, 20], 50) == 15.0


@pytest.mark.parametrize("values, q", [([], 50), ([1.0], -1), ([1.0], 100.5)])
def test_percentile_refuses_bad_arguments(values, q):
    with pytest.raises(ValueError):
        percentile(values, q)


def test_summarize_matches_numpy_and_reports_milliseconds():
    values = FIXED_ARRAYS[3]
    s = summarize(values)
    assert s.count == len(values)
    assert s.mean_s == pytest.approx(np.mean(values))
    assert s.std_s == pytest.approx(np.std(values))  # population std, ddof=0
    assert (s.min_s, s.max_s) == (min(values), max(values))
    assert s.p50_s <= s.p90_s <= s.p99_s <= s.max_s
    d = s.to_dict()
    assert d["count"] == len(values)
    assert d["p50_ms"] == pytest.approx(s.p50_s * 1000, abs=1e-6)
    assert set(d) == {"count", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"}


def test_throughput_arithmetic():
    assert throughput(40, 2.0) == 20.0
    assert throughput(3, 0.0) == 0.0
    with pytest.raises(ValueError):
        throughput(1, -1.0)


def test_stage_timer_times_known_sleeps():
    timer = StageTimer()
    for name, seconds in (("a", 0.005), ("b", 0.010), ("c", 0.020)):
        with timer.stage(name):
            time.sleep(seconds)
    timer.add("c", 0.001)  # a stage timed twice adds up
    stages = timer.stages
    assert list(stages) == ["a", "b", "c"]
    assert stages["a"] >= 0.005 and stages["b"] >= 0.010 and stages["c"] >= 0.021
    # Sleeps overshoot on a busy machine, but the order of 5 < 10 < 20 ms holds by a wide margin.
    assert stages["a"] < stages["c"]


def test_stage_timer_refuses_reserved_name_and_negative_time():
    timer = StageTimer()
    with pytest.raises(ValueError, match="reserved"):
        timer.add(OVERHEAD_STAGE, 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        timer.add("x", -0.1)


def test_recorder_reports_overhead_and_accepts_stages_that_add_up():
    recorder = StageRecorder()
    for total in (0.100, 0.110, 0.120):
        recorder.record(RunRecord(total, {"encode": total * 0.6, "decode": total * 0.38}))
    summaries = recorder.stage_summaries()
    assert list(summaries) == ["encode", "decode", OVERHEAD_STAGE]
    assert summaries[OVERHEAD_STAGE].mean_s == pytest.approx(0.02 * 0.110)
    check = recorder.check(tolerance=0.05)
    assert check.ok, check.message
    assert check.overhead_share == pytest.approx(0.02)
    assert check.runs_over_total == 0


def test_recorder_flags_large_overhead():
    recorder = StageRecorder()
    recorder.record(RunRecord(0.100, {"encode": 0.050}))
    check = recorder.check(tolerance=0.05)
    assert not check.ok
    assert check.overhead_share == pytest.approx(0.5)
    assert "50.0%" in check.message and "overhead" in check.message


def test_recorder_flags_stages_that_exceed_the_total():
    recorder = StageRecorder()
    recorder.record(RunRecord(0.100, {"encode": 0.080, "decode": 0.040}))  # 120 ms of stages in 100 ms
    recorder.record(RunRecord(0.100, {"encode": 0.060, "decode": 0.039}))
    check = recorder.check(tolerance=0.05)
    assert not check.ok
    assert check.runs_over_total == 1
    assert "more than the end-to-end time" in check.message
    # A run whose stages exceed the total counts 0 overhead, not a negative one.
    assert recorder.stage_summaries()[OVERHEAD_STAGE].min_s == 0.0


def test_recorder_without_stages_is_not_judged_and_runs_missing_a_stage_count_zero():
    recorder = StageRecorder()
    recorder.record(RunRecord(0.01))
    assert recorder.check().ok
    recorder.record(RunRecord(0.01, {"encode": 0.01, "decode": 0.0}))
    summaries = recorder.stage_summaries()
    assert summaries["encode"].min_s == 0.0
    assert "decode" not in summaries  # 0 s in every run: a stage this task does not have


def test_recorder_run_context_times_end_to_end():
    ticks = iter([0.0, 0.5, 1.5, 10.0])  # run start, stage start, stage end, run end
    recorder = StageRecorder(clock=lambda: next(ticks))
    with recorder.run(items=4, tokens=7) as timer:
        with timer.stage("encode"):
            pass
    (run,) = recorder.runs
    assert run.total_s == 10.0 and run.stages == {"encode": 1.0}
    assert (run.items, run.tokens, run.overhead_s) == (4, 7, 9.0)


def test_check_refuses_bad_tolerance():
    with pytest.raises(ValueError):
        StageRecorder().check(tolerance=1.5)
