"""What a bench run found: one row per model x backend x shape, start-up rows, the scaling study
(growth exponents and the EfficientAttention / dot-product crossover), the JSON schema and the table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InputError
from .timing import LatencyStats

SCHEMA = "effattn.bench/2"


@dataclass
class BenchRow:
    model: str
    backend: str
    device: str
    shape: list[int]
    stats: LatencyStats | None = None
    speedup_vs_eager: float | None = None  # eager FP32 median / this median, same run
    peak_host_mib: float | None = None
    peak_device_mib: float | None = None
    status: str = "ok"  # otherwise why there is no measurement ("out of memory: ...", "skipped: ...")
    floor_ms: float | None = None  # attention blocks: time to move their input and output at measured bandwidth
    host_copy_ms: float | None = None  # CUDA: copying the feed in and the outputs out, not in the timed call
    roofline_ms: float | None = None  # max(bytes moved / bandwidth, FLOPs / matmul peak at the row's precision)
    inputs: dict[str, list[int]] | None = None  # every input's shape (``shape`` is the first one's)
    percent_of_peak: float | None = None  # FLOPs / median / the CPU's nominal peak at the row's precision

    @property
    def positions(self) -> int:
        return math.prod(self.shape[2:])

    @property
    def throughput(self) -> float | None:
        """Items (images or sequences) per second at the median latency."""
        return self.shape[0] / (self.stats.median_ms / 1e3) if self.stats else None

    def to_dict(self) -> dict:
        def r(x, digits=4):
            return None if x is None else round(x, digits)

        return {
            "model": self.model,
            "backend": self.backend,
            "device": self.device,
            "shape": self.shape,
            "inputs": self.inputs,
            "status": self.status,
            "speedup_vs_eager": r(self.speedup_vs_eager),
            "throughput_per_s": r(self.throughput, 2),
            "peak_host_mib": r(self.peak_host_mib, 2),
            "peak_device_mib": r(self.peak_device_mib, 2),
            "bandwidth_floor_ms": r(self.floor_ms),
            "times_bandwidth_floor": (
                r(self.stats.median_ms / self.floor_ms, 2) if self.stats and self.floor_ms else None
            ),
            "host_copy_ms": r(self.host_copy_ms),
            "roofline_floor_ms": r(self.roofline_ms),
            "times_roofline_floor": (
                r(self.stats.median_ms / self.roofline_ms, 2) if self.stats and self.roofline_ms else None
            ),
            "percent_of_nominal_peak": r(self.percent_of_peak, 2),
            **(self.stats.to_dict() if self.stats else {}),
        }


@dataclass
class StartRow:
    """Runner creation plus the first answer: cold (the first of this file in the process; a TensorRT build)
    and warm (again: files in the page cache, the engine from the engine cache)."""

    model: str
    backend: str
    cold_ms: float
    warm_ms: float | None
    warm_means: str

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "backend": self.backend,
            "cold_ms": round(self.cold_ms, 2),
            "warm_ms": None if self.warm_ms is None else round(self.warm_ms, 2),
            "warm_means": self.warm_means,
        }


def growth_exponent(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) on log(x): 1 is linear growth, 2 quadratic."""
    points = [(x, y) for x, y in points if x > 0 and y and y > 0]
    if len(points) < 2:
        return None
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else None


@dataclass
class BenchResults:
    rows: list[BenchRow] = field(default_factory=list)
    startup: list[StartRow] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    fit_from: int = 64  # the scaling fit uses inputs from fit_from x fit_from positions up
    #: why the timings may not be trusted (a machine busy with other work): see :mod:`.contention`
    warnings: list[str] = field(default_factory=list)

    def series(self, model: str, backend: str, what: str = "time", batch: int | None = None) -> list[tuple[int, float]]:
        """(positions, median ms or peak MiB) of the measured rows of one model on one backend."""
        out = []
        for r in self.rows:
            if r.model == model and r.backend == backend and r.stats and (batch is None or r.shape[0] == batch):
                value = r.stats.median_ms if what == "time" else (r.peak_device_mib or r.peak_host_mib)
                if value is not None:  # memory not measured on this row: no point, rather than a None to plot
                    out.append((r.positions, value))
        return sorted(out)

    def spread(self, model: str, backend: str) -> list[tuple[int, float, float]]:
        """(positions, p10 ms, p90 ms) of the measured rows of one model on one backend that recorded p10."""
        return sorted(
            (r.positions, r.stats.p10_ms, r.stats.p90_ms)
            for r in self.rows
            if r.model == model and r.backend == backend and r.stats and r.stats.p10_ms is not None
        )

    def scaling(self) -> list[dict]:
        """Growth exponents in positions, fitted from ``fit_from``² positions up, per model and backend."""
        out = []
        for model, backend in dict.fromkeys((r.model, r.backend) for r in self.rows):
            start = self.fit_from**2
            time_pts = [p for p in self.series(model, backend, "time") if p[0] >= start]
            mem_pts = [p for p in self.series(model, backend, "memory") if p[0] >= start]
            sizes = sorted({math.isqrt(p) for p, _ in time_pts})
            out.append(
                {
                    "model": model,
                    "backend": backend,
                    "fit_sizes": sizes,
                    "time_exponent": _round(growth_exponent(time_pts)),
                    "memory_exponent": _round(growth_exponent(mem_pts)),
                }
            )
        return [s for s in out if s["time_exponent"] is not None]

    def crossover(self, fast: str = "efficient_attention", slow: str = "dot_product_attention") -> list[dict]:
        """Per backend: the smallest size from which ``fast`` is faster than ``slow`` at every measured size,
        and the largest size ``slow`` could run at all."""
        out = []
        for backend in dict.fromkeys(r.backend for r in self.rows):
            a, b = dict(self.series(fast, backend)), dict(self.series(slow, backend))
            common = sorted(set(a) & set(b))
            if not common:
                continue
            wins = [n for n in common if a[n] < b[n]]
            since = next((n for n in common if all(a[m] < b[m] for m in common if m >= n)), None)
            dp_rows = [r for r in self.rows if r.model == slow and r.backend == backend]
            ran = [r.positions for r in dp_rows if r.stats]
            failed = [r for r in dp_rows if not r.stats]
            out.append(
                {
                    "backend": backend,
                    "fast": fast,
                    "slow": slow,
                    "faster_from_size": math.isqrt(since) if since else None,
                    "faster_at_sizes": [math.isqrt(n) for n in wins],
                    "slow_largest_size": math.isqrt(max(ran)) if ran else None,
                    "slow_stopped": failed[0].status if failed else None,
                }
            )
        return out

    @classmethod
    def from_dict(cls, data: dict) -> BenchResults:
        """Results read back from their JSON (to re-plot or re-analyse without re-measuring)."""
        if data.get("schema") != SCHEMA:
            raise InputError(f"not an {SCHEMA} results file (schema {data.get('schema')!r})")
        stat_fields = LatencyStats.__dataclass_fields__
        rows = [
            BenchRow(
                r["model"],
                r["backend"],
                r["device"],
                r["shape"],
                LatencyStats(**{k: r[k] for k in stat_fields if k in r}) if r["status"] == "ok" else None,
                r["speedup_vs_eager"],
                r["peak_host_mib"],
                r["peak_device_mib"],
                r["status"],
                r["bandwidth_floor_ms"],
                r.get("host_copy_ms"),
                r.get("roofline_floor_ms"),
                r.get("inputs"),
                r.get("percent_of_nominal_peak"),
            )
            for r in data["rows"]
        ]
        startup = [
            StartRow(s["model"], s["backend"], s["cold_ms"], s["warm_ms"], s["warm_means"]) for s in data["startup"]
        ]
        return cls(rows, startup, data["environment"], data["scaling"]["fit_from_size"], data.get("warnings", []))

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "environment": self.environment,
            "warnings": self.warnings,
            "rows": [r.to_dict() for r in self.rows],
            "startup": [s.to_dict() for s in self.startup],
            "scaling": {"fit_from_size": self.fit_from, "exponents": self.scaling(), "crossover": self.crossover()},
        }

    def table(self) -> str:
        """The rows, start-up, scaling and crossover as text, then what the ratios mean and the machine."""
        return "\n".join(
            [
                *_row_lines(self.rows),
                *_startup_lines(self.startup),
                *self._scaling_lines(),
                *_footer_lines(self.rows, self.environment),
                *(f"WARNING: {w}" for w in self.warnings),
            ]
        )

    def _scaling_lines(self) -> list[str]:
        lines = []
        scaling = self.scaling()
        if scaling:
            lines += ["", f"growth in positions (log-log fit from {self.fit_from}x{self.fit_from}): time, memory"]
            lines += [
                f"  {s['model']:<24}{s['backend']:<18}{_fmt(s['time_exponent'], '>6.2f')}"
                f"{_fmt(s['memory_exponent'], '>8.2f')}"
                for s in scaling
            ]
        for c in self.crossover():
            lines.append(
                f"  crossover on {c['backend']}: {c['fast']} faster from {c['faster_from_size']} px up; "
                f"{c['slow']} ran up to {c['slow_largest_size']} px"
                + (f" ({c['slow_stopped']})" if c["slow_stopped"] else "")
            )
        return lines


def _row_lines(rows: Sequence[BenchRow]) -> list[str]:
    head = (
        f"{'model':<22}{'shape':<15}{'backend':<18}{'median ms':>10}{'p90':>9}{'p99':>9}{'items/s':>10}"
        f"{'peak MiB':>10}{'vs eager':>9}{'x floor':>8}{'copy ms':>9}{'x roof':>8}{'% peak':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(map(str, r.shape))
        if r.stats is None:
            lines.append(f"{r.model:<22}{shape:<15}{r.backend:<18}  {r.status}")
            continue
        peak = r.peak_device_mib if r.peak_device_mib is not None else r.peak_host_mib
        lines.append(
            f"{r.model:<22}{shape:<15}{r.backend:<18}{r.stats.median_ms:>10.3f}{r.stats.p90_ms:>9.3f}"
            f"{r.stats.p99_ms:>9.3f}{r.throughput:>10.1f}{_fmt(peak, '>10.1f')}"
            f"{_fmt(r.speedup_vs_eager, '>8.2f')}x"
            f"{_fmt(r.stats.median_ms / r.floor_ms if r.floor_ms else None, '>8.1f')}"
            f"{_fmt(r.host_copy_ms, '>9.3f')}"
            f"{_fmt(r.stats.median_ms / r.roofline_ms if r.roofline_ms else None, '>8.1f')}"
            f"{_fmt(r.percent_of_peak, '>8.1f')}"
        )
    return lines


def _startup_lines(startup: Sequence[StartRow]) -> list[str]:
    if not startup:
        return []
    return [
        "",
        f"{'start-up (create + first answer)':<42}{'cold ms':>9}{'warm ms':>11}   warm means",
        *(
            f"  {s.model:<22}{s.backend:<18}{s.cold_ms:>9.1f}{_fmt(s.warm_ms, '>11.1f')}   {s.warm_means}"
            for s in startup
        ),
    ]


def _footer_lines(rows: Sequence[BenchRow], env: dict) -> list[str]:
    lines = []
    if any(r.host_copy_ms is not None for r in rows):
        lines.append(
            "\nGPU rows: tensors already on the device, timed between CUDA events; 'copy ms' is the "
            "host->device feed and device->host outputs, not in the median"
        )
    lines.append(
        f"\nx floor: median / (bytes the block must read and write / copy bandwidth "
        f"{env.get('copy_bandwidth_gb_s')} GB/s measured in this run)"
    )
    if env.get("matmul_peak_gflop_s"):
        lines.append(
            "x roof: median / max(I/O + weight bytes / bandwidth, FLOPs / matmul peak at the row's "
            f"precision: {env['matmul_peak_gflop_s']} GFLOP/s, the faster of a torch and an OpenVINO matmul "
            "measured in this run; below 1 = kernels faster than both)"
        )
    if env.get("nominal_peak_gop_s"):
        lines.append(
            f"% peak: FLOPs / median / the nominal peak at the row's precision, {env['nominal_peak_gop_s']} "
            f"GFLOP/s (GOP/s INT8) from the CPU flags at {env.get('cpu_ghz')} GHz x {env.get('threads')} cores"
        )
    lines.append(
        f"{env.get('cpu', '?')}, {env.get('threads')} threads; {env.get('gpu') or 'no GPU'}; "
        f"torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}"
    )
    return lines


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _fmt(x: float | None, spec: str) -> str:
    return format("-", spec.rsplit(".", 1)[0]) if x is None else format(x, spec)
