"""A busy machine is named in the results instead of passing for a measurement (readings injected, no real load)."""

from __future__ import annotations

import json

from effattn.bench.benchmark import BenchResults, run_bench
from effattn.bench.contention import LoadCheck


def _check(loads, calibrations=None, cores=2, threads=2):
    loads, calibrations = iter(loads), iter(calibrations or [[0.004] * 7] * 2)
    return LoadCheck(cores, threads, read_load=lambda: next(loads), calibrate=lambda: next(calibrations))


def test_a_quiet_machine_has_no_warning_and_the_runs_own_threads_do_not_count():
    assert _check([(0.2, 0.1, 0.1), (0.3, 0.2, 0.1)]).start().stop().warnings() == []
    # after the run the load average holds this run's 2 threads: 3.9 - 2 on 2 cores is not busy
    assert _check([(0.2, 0.1, 0.1), (3.9, 1.0, 0.5)]).start().stop().warnings() == []


def test_a_loaded_machine_is_named_before_and_after():
    before, after = _check([(7.5, 6.0, 5.0), (9.0, 7.0, 5.0)]).start().stop().warnings()
    assert before.startswith("machine busy before the run: load average 7.5 on 2 cores")
    assert after.startswith("machine busy after the run: load average 9.0 on 2 cores (2 of it this run's threads")


def test_calibration_spread_and_drift_are_named():
    steady, slow, noisy = [0.004] * 7, [0.010] * 7, [0.004] * 3 + [0.010] * 4
    quiet = [(0.0, 0.0, 0.0)] * 2
    (drift,) = _check(quiet, [steady, slow]).start().stop().warnings()
    assert drift == (
        "machine changed during the run: a fixed calibration loop took 10.00 ms after it vs 4.00 ms "
        "before (other work or a clock change)"
    )
    (spread,) = _check(quiet, [noisy, noisy]).start().stop().warnings()[:1]
    assert spread.startswith("timing unsteady before the run: a fixed calibration loop's median was 2.5x")


def test_no_load_average_is_no_warning():
    assert _check([None, None]).start().stop().warnings() == []
    assert _check([None, None]).start().stop().to_dict()["load_average_end"] is None


def test_bench_results_carry_the_warning_in_json_and_table():
    check = _check([(7.5, 6.0, 5.0)] * 2)
    results = run_bench(
        ["efficient_attention"],
        [8],
        backends=[],
        min_seconds=0.01,
        memory=False,
        startup=False,
        quiet=True,
        load_check=check,
    )
    data = results.to_dict()
    assert [w.split(":")[0] for w in data["warnings"]] == ["machine busy before the run", "machine busy after the run"]
    assert data["environment"]["load_average_end"] == [7.5, 6.0, 5.0]
    assert data["environment"]["calibration_ms"] == {"before": 4.0, "after": 4.0}
    assert results.table().splitlines()[-2].startswith("WARNING: machine busy before the run: load average 7.5")
    assert BenchResults.from_dict(json.loads(json.dumps(data))).warnings == data["warnings"]


def test_the_real_readings_work_here():
    check = LoadCheck(cores=2, threads=1).start().stop()
    assert len(check.calibration_before) == 7 and min(check.calibration_after) > 0
    assert isinstance(check.warnings(), list)  # what they say depends on this machine's load
