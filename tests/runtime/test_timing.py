import pytest

from effattn.runtime import LatencyStats, measure


def test_stats_percentiles():
    stats = LatencyStats.from_samples([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats.runs == 100
    assert stats.median_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.min_ms == pytest.approx(1.0)
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_measure_respects_run_bounds():
    calls = []
    stats = measure(lambda: calls.append(1), warmup_s=0.0, min_runs=7, max_runs=7, min_seconds=0.0)
    assert stats.runs == 7
    assert len(calls) == 8  # one warm-up call, then the timed ones
