import pytest

from effattn.bench.timing import LatencyStats, measure


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


def test_interleaved_gives_each_callable_its_runs_and_drops_the_failing_one():
    from effattn.bench.timing import measure_interleaved

    order, calls = [], {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
            order.append(name)

        return fn

    def broken():
        raise MemoryError("out of memory")

    out = measure_interleaved(
        {"a": make("a"), "b": make("b"), "c": broken}, rounds=5, warmup_s=0.0, min_runs=10, min_seconds=0.0
    )
    assert out["a"].runs == 10 and out["b"].runs == 10
    assert isinstance(out["c"], MemoryError)
    timed = order[2:]  # after one warm-up call each, a and b alternate in blocks of two
    assert timed == ["a", "a", "b", "b"] * 5


def test_min_runs_is_a_floor_even_past_max_seconds():
    """trtexec's --iterations: every callable gets its calls, however slow against the time budget."""
    from effattn.bench.timing import measure_interleaved

    calls = {"a": [], "b": []}
    stats = measure_interleaved(
        {name: (lambda name=name: calls[name].append(1)) for name in calls},
        warmup_s=0.0,
        min_runs=7,
        min_seconds=0.0,
        max_seconds=1e-12,  # spent after the first call: only the floor keeps them going
    )
    assert [s.runs for s in stats.values()] == [7, 7] and [len(c) for c in calls.values()] == [8, 8]  # 1 warm-up
