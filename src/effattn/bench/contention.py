"""Is the machine too busy for a bench's timings to be trusted? Compares the 1-minute load average with
the cores and times a fixed calibration loop, before and after a run; both readings are injectable
(:class:`LoadCheck`'s ``read_load`` and ``calibrate``) for tests. Why: docs/benchmarks.md#how-the-bench-measures."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: load average per core above which other work had more than every core (ours subtracted after the run)
BUSY_LOAD_PER_CORE = 1.0
#: calibration median / fastest within one reading, or slower / faster fastest between the two readings
UNSTEADY_RATIO = 1.5

LoadReading = tuple[float, float, float]


def load_average() -> LoadReading | None:
    """The 1, 5 and 15-minute load averages, or None where the system has none."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def calibration_seconds(repeats: int = 7, n: int = 100_000) -> list[float]:
    """Seconds of one fixed pure-Python loop (a few ms, one thread), ``repeats`` times."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = 0
        for i in range(n):
            total += i * i
        times.append(time.perf_counter() - t0)
    return times


@dataclass
class LoadCheck:
    """``check.start()`` before the run, ``check.stop()`` after it, then ``check.warnings()``: one line per
    reason the timings may be unreliable (empty on a quiet machine)."""

    cores: int
    threads: int  # the run's own threads, part of the load average read after it
    read_load: Callable[[], LoadReading | None] = load_average
    calibrate: Callable[[], list[float]] = calibration_seconds
    load_before: LoadReading | None = field(default=None, init=False)
    load_after: LoadReading | None = field(default=None, init=False)
    calibration_before: list[float] = field(default_factory=list, init=False)
    calibration_after: list[float] = field(default_factory=list, init=False)

    def start(self) -> LoadCheck:
        self.load_before, self.calibration_before = self.read_load(), self.calibrate()
        return self

    def stop(self) -> LoadCheck:
        self.calibration_after, self.load_after = self.calibrate(), self.read_load()
        return self

    def warnings(self) -> list[str]:
        checks = (
            self._busy("before", self.load_before, 0),
            self._busy("after", self.load_after, self.threads),
            *self._unsteady(),
        )
        return [w for w in checks if w]

    def _busy(self, when: str, load: LoadReading | None, own: int) -> str | None:
        if load is None or (load[0] - own) / max(self.cores, 1) <= BUSY_LOAD_PER_CORE:
            return None
        ours = f" ({own} of it this run's threads at most)" if own else ""
        return (
            f"machine busy {when} the run: load average {load[0]:.1f} on {self.cores} cores{ours}; other work "
            "shared the cores, so latencies and ratios may be far off: rerun on an idle machine"
        )

    def _unsteady(self) -> list[str]:
        out = []
        for when, times in (("before", self.calibration_before), ("after", self.calibration_after)):
            if times and min(times) > 0 and statistics.median(times) / min(times) > UNSTEADY_RATIO:
                out.append(
                    f"timing unsteady {when} the run: a fixed calibration loop's median was "
                    f"{statistics.median(times) / min(times):.1f}x its fastest repetition"
                )
        if self.calibration_before and self.calibration_after:
            a, b = min(self.calibration_before), min(self.calibration_after)
            if min(a, b) > 0 and max(a, b) / min(a, b) > UNSTEADY_RATIO:
                out.append(
                    f"machine changed during the run: a fixed calibration loop took {b * 1e3:.2f} ms after "
                    f"it vs {a * 1e3:.2f} ms before (other work or a clock change)"
                )
        return out

    def to_dict(self) -> dict:
        """The readings, for the results' environment."""

        def ms(times: list[float]) -> float | None:
            return round(min(times) * 1e3, 3) if times else None

        return {
            "load_average_end": None if self.load_after is None else [round(x, 2) for x in self.load_after],
            "calibration_ms": {"before": ms(self.calibration_before), "after": ms(self.calibration_after)},
        }
