"""effattn bench: the statistics, the scaling analysis, the memory guard and the JSON schema (not timing)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from effattn.bench import benchmark as bench
from effattn.bench.benchmark import BenchResults, BenchRow, attention_map_bytes, growth_exponent, run_bench
from effattn.bench.timing import LatencyStats
from effattn.errors import BackendError, InputError, ModelError
from effattn.models import load_model
from effattn.shapes import ShapeProfile


def _row(model, backend, size, ms, mib=None):
    stats = LatencyStats.from_samples([ms / 1e3] * 3)
    return BenchRow(model, backend, "cpu", [1, 64, size, size], stats, None, mib)


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0])
def test_growth_exponent_recovers_a_power_law(k):
    assert growth_exponent([(n, 3.0 * n**k) for n in (16, 64, 256, 1024)]) == pytest.approx(k)
    assert growth_exponent([(10, 1.0)]) is None


def test_scaling_fits_from_64_and_finds_the_crossover():
    rows = []
    for size in (32, 64, 128, 256):
        n = size * size
        rows.append(_row("efficient_attention", "onnxruntime", size, 0.01 * n, 0.001 * n))
        rows.append(_row("dot_product_attention", "onnxruntime", size, 1e-6 * n * n, 1e-5 * n * n))
    rows[-2:] = [
        *rows[-2:-1],
        BenchRow(
            "dot_product_attention", "onnxruntime", "cpu", [1, 64, 256, 256], status="out of memory (not run): ..."
        ),
    ]
    # at 32 px dot-product is faster (1e-6 n^2 < 0.01 n for n < 1e4): the crossover is 128 px
    results = BenchResults(rows)
    exps = {s["model"]: s for s in results.scaling()}
    assert exps["efficient_attention"]["time_exponent"] == pytest.approx(1.0)
    assert exps["efficient_attention"]["fit_sizes"] == [64, 128, 256]
    assert exps["dot_product_attention"]["memory_exponent"] == pytest.approx(2.0)
    (cross,) = results.crossover()
    assert cross["faster_from_size"] == 128 and cross["faster_at_sizes"] == [128]
    assert cross["slow_largest_size"] == 128 and cross["slow_stopped"].startswith("out of memory")
    table = results.table()
    assert "out of memory (not run)" in table and "crossover on onnxruntime" in table


def test_row_throughput_and_dict():
    row = _row("m", "onnxruntime", 32, 4.0)
    row.shape[0] = 8
    assert row.throughput == pytest.approx(2000.0)  # 8 items per 4 ms
    d = row.to_dict()
    assert d["throughput_per_s"] == 2000.0 and d["median_ms"] == 4.0 and d["status"] == "ok"


def test_attention_map_bytes_counts_the_n_by_n_maps():
    from effattn.models import DotProductAttention, EfficientAttention

    dp = DotProductAttention(64, 32, 4, 64)
    assert attention_map_bytes(dp, (2, 64, 8, 8)) == 2 * 4 * 2 * 4 * 64 * 64
    assert attention_map_bytes(EfficientAttention(64, 32, 4, 64), (2, 64, 8, 8)) == 0


def test_dot_product_too_big_is_reported_not_run(monkeypatch):
    monkeypatch.setattr(bench, "available_bytes", lambda: 1_000_000)
    results = run_bench(
        ["dot_product_attention"],
        [8, 32],
        backends=["onnxruntime"],
        min_seconds=0.01,
        memory=False,
        startup=False,
        quiet=True,
    )
    by = {(r.shape[2], r.backend): r for r in results.rows}
    assert by[(8, "torch")].stats is not None  # 8x8: 2*4*4*64^2 bytes fit in 0.5 MB
    assert by[(32, "torch")].stats is None and "need 32.0 MiB, 1.0 MiB available" in by[(32, "torch")].status
    assert by[(32, "onnxruntime")].status.startswith("out of memory (not run)")


def test_max_seconds_bounds_the_run():
    results = run_bench(
        ["efficient_attention"],
        [8, 16, 24],
        backends=["onnxruntime"],
        min_seconds=0.05,
        max_seconds=0.0,
        memory=False,
        startup=False,
        quiet=True,
    )
    assert len(results.rows) == 6 and all(r.status.startswith("skipped") for r in results.rows)


def test_unknown_or_misplaced_backend_is_refused():
    with pytest.raises(BackendError, match="unknown bench backend 'onnx'"):
        run_bench(["efficient_attention"], [8], backends=["onnx"])
    with pytest.raises(BackendError, match="'tensorrt-fp16' runs on cuda, not cpu"):
        run_bench(["efficient_attention"], [8], backends=["tensorrt-fp16"])


def test_full_run_schema_memory_startup_and_plot(tmp_path, monkeypatch):
    assert bench.measure_bandwidth("cpu", mib=16) > 0
    monkeypatch.setattr(bench, "measure_bandwidth", lambda device: 12.5)  # GB/s, so the floors are known exactly
    results = run_bench(
        ["efficient_attention"],
        [16, 64],
        batches=[1, 2],
        backends=["onnxruntime", "onnxruntime-fp16"],
        min_seconds=0.01,
        quiet=True,
    )
    data = results.to_dict()
    assert data["schema"] == "effattn.bench/2"
    assert {"cpu", "threads", "torch", "onnxruntime", "command"} <= set(data["environment"])
    assert len(data["rows"]) == 2 * 2 * 3
    for row in data["rows"]:
        assert row["status"] == "ok" and row["median_ms"] > 0 and row["p99_ms"] >= row["median_ms"]
        # exact: the same arithmetic and rounding as BenchRow (a 1e-3 tolerance failed on 4.39 vs 4.3854)
        assert row["throughput_per_s"] == round(row["shape"][0] / (row["median_ms"] / 1e3), 2)
        assert row["peak_host_mib"] is not None and row["speedup_vs_eager"] > 0
    assert data["environment"]["copy_bandwidth_gb_s"] == 12.5
    for row, stored in zip(results.rows, data["rows"]):  # an attention block: it moves 2 x 4 bytes per element
        # exact: the bench's arithmetic on the bandwidth it used (a tolerance once covered its rounding to 0.1)
        assert row.floor_ms == 2 * math.prod(row.shape) * 4 / (12.5 * 1e9) * 1e3
        # exact: the stored values are the unrounded ones, rounded as BenchRow rounds them (a 1 % tolerance on
        # the ratio of rounded values failed when the floor was 0.00475 ms, stored as 0.0047)
        assert stored["bandwidth_floor_ms"] == round(row.floor_ms, 4)
        assert stored["times_bandwidth_floor"] == round(row.stats.median_ms / row.floor_ms, 2)
    eager = [r for r in data["rows"] if r["backend"] == "torch"]
    assert all(r["speedup_vs_eager"] == 1.0 for r in eager)
    # a 2x64x64x64 input alone is 2 MiB: the probe must see at least that much moving
    big = next(r for r in data["rows"] if r["backend"] == "onnxruntime" and r["shape"] == [2, 64, 64, 64])
    assert big["peak_host_mib"] >= 2.0
    assert {s["backend"] for s in data["startup"]} == {"onnxruntime", "onnxruntime-fp16"}
    assert all(s["cold_ms"] > 0 and s["warm_ms"] > 0 for s in data["startup"])
    again = BenchResults.from_dict(json.loads(json.dumps(data)))

    def key(rows):
        return [(r["model"], r["backend"], r["shape"], r["status"], r["median_ms"], r["peak_host_mib"]) for r in rows]

    assert key(again.to_dict()["rows"]) == key(data["rows"]) and again.scaling() == results.scaling()
    png = bench.plot(results, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results.fit_from = 16
    exponents = {s["backend"]: s["time_exponent"] for s in results.scaling()}
    assert set(exponents) == {"torch", "onnxruntime", "onnxruntime-fp16"}
    assert all(math.isfinite(e) for e in exponents.values())


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BackendError, match="--device cuda asked for, but torch sees no CUDA device"):
        run_bench(["efficient_attention"], [8], device="cuda")


def test_low_precision_backends_run_their_own_graphs(caplog):
    """onnxruntime-int8 / openvino-int8 run the INT8 QDQ file, openvino the FP32 one at OpenVINO's default,
    torch-bf16 a BF16 copy (the FP32 baseline stays FP32); the environment names the CPU flags and load."""
    pytest.importorskip("openvino", reason="openvino is not installed (the 'cpu' extra)")
    backends = [
        "onnxruntime-int8",
        "openvino",
        "openvino-static",
        "openvino-fp32",
        "openvino-int8",
        "openvino-dynamic-int8",
        "openvino-plain-int8",
        "torch-bf16",
    ]
    results = run_bench(["efficient_attention"], [8], backends=backends, min_seconds=0.01, memory=False, quiet=True)
    rows = {r.backend: r for r in results.rows}
    assert set(rows) == {"torch", *backends} and all(r.status == "ok" for r in rows.values()), results.table()
    assert rows["torch"].speedup_vs_eager == 1.0
    assert {s.backend for s in results.startup} == set(backends)
    env = results.environment
    assert env["openvino"] and len(env["load_average"]) == 3 and isinstance(env["cpu_flags"], list)
    if env["nominal_peak_gop_s"]:  # every timed row says what share of the CPU's peak it used
        assert all(r.percent_of_peak and 0 < r.percent_of_peak < 100 for r in rows.values()), results.table()
    assert "random normal inputs" in caplog.text  # the random-weight block is calibrated on noise, and says so


def test_openvino_rows_compile_as_they_say(monkeypatch, tmp_path):
    """``openvino`` is OpenVINO's default (one dynamic-shape compile); effattn's runner compiles per shape."""
    from effattn.bench import backends as bench_backends

    calls = {}
    monkeypatch.setattr(bench_backends, "load", lambda path, backend, **options: calls.setdefault(path.name, options))
    made = bench_backends.Backends(
        load_model("efficient_attention"),
        ShapeProfile.single("1x64x8x8", "1x64x8x8", "1x64x8x8"),
        tmp_path,
        "cpu",
        2,
        ["output"],
    )
    monkeypatch.setattr(made, "onnx", lambda precision: tmp_path / f"{precision}.onnx")
    for backend in ("openvino", "openvino-static", "openvino-fp32", "openvino-int8", "openvino-dynamic-int8"):
        calls.clear()
        made.make(backend)
        (options,) = calls.values()
        assert options.get("static_shapes", True) is (backend not in ("openvino", "openvino-dynamic-int8")), backend
        assert options.get("precision") == ("fp32" if backend == "openvino-fp32" else None), backend


def test_plain_openvino_computes_what_the_runner_computes(onnx_models, tmp_path):
    """The overhead yardstick runs the same file at the same precision as effattn's runner: only the calling differs."""
    pytest.importorskip("openvino", reason="openvino is not installed (the 'cpu' extra)")
    from effattn.bench.backends import PlainOpenVINO
    from effattn.export import quantize
    from effattn.runtime.openvino_runner import OpenVINORunner
    from effattn.shapes import random_inputs

    block = onnx_models["ea16"]
    path = quantize(block.path, tmp_path / "block.int8.onnx").path
    feed = random_inputs(block.profile, "opt", seed=5)
    with PlainOpenVINO(path, threads=2) as plain, OpenVINORunner(path, threads=2, static_shapes=False) as ours:
        assert plain.precision == ours.precision == "int8" and list(plain.outputs) == list(ours.outputs)
        a, b = plain.infer(feed)["output"], ours.infer(feed)["output"]
    assert a.shape == b.shape and np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(b)


def test_the_graph_a_backend_runs():
    assert [
        bench.BACKENDS[b].graph
        for b in (
            "onnxruntime",
            "onnxruntime-fp16",
            "openvino-int8",
            "openvino-fp32",
            "torch-bf16",
            "openvino-static",
            "openvino-dynamic-int8",
        )
    ] == ["fp32", "fp16", "int8", "fp32", None, "fp32", "int8"]


USER_MODELS = """
from torch import nn

from effattn.shapes import ShapeProfile


class Tiny(nn.Module):
    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def with_profile():
    model = Tiny(3)
    model.default_profile = ShapeProfile.single("1x3x16x16", name="image")
    return model


def without_profile(channels: int = 2):
    return Tiny(channels)
"""


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """A module of user factories importable as ``bench_user_models`` (in this process and the memory probe's)."""
    (tmp_path / "bench_user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bench_user_models", raising=False)
    yield "bench_user_models"
    sys.modules.pop("bench_user_models", None)


def test_user_factories_are_benchmarked(user_models):
    """package.module:factory runs like a zoo name: its default_profile, else the input shape given; the
    memory probe (a child process) imports it too."""
    results = run_bench(
        [f"{user_models}:with_profile", f"{user_models}:without_profile"],
        [8],
        batches=[2],
        backends=["onnxruntime"],
        min_seconds=0.01,
        input_shape="1x2x4x4",
        startup=False,
        quiet=True,
    )
    rows = {(r.model.split(":")[1], r.backend): r for r in results.rows}
    assert set(rows) == {(m, b) for m in ("with_profile", "without_profile") for b in ("torch", "onnxruntime")}
    assert all(r.status == "ok" and r.stats.runs > 0 and r.peak_host_mib is not None for r in rows.values()), (
        results.table()
    )
    assert rows["with_profile", "onnxruntime"].shape == [2, 3, 8, 8]  # channels from the model's profile
    assert rows["without_profile", "onnxruntime"].shape == [2, 2, 8, 8]  # channels from input_shape
    assert rows["with_profile", "torch"].speedup_vs_eager == 1.0
    assert all(r.floor_ms is None for r in rows.values())  # not an attention block: no bandwidth floor
    assert results.rows[0].model == f"{user_models}:with_profile"


def test_a_user_model_without_a_profile_needs_a_shape_before_anything_runs(user_models, monkeypatch):
    monkeypatch.setattr(bench, "environment", lambda *a: pytest.fail("the run started"))
    with pytest.raises(InputError, match="has no default shape profile: give the model it returns a default_profile"):
        run_bench([f"{user_models}:without_profile"], [8], quiet=True)
    with pytest.raises(ModelError, match="has no attribute 'missing'"):
        run_bench([f"{user_models}:missing"], [8], quiet=True)
    with pytest.raises(InputError, match="not 5x2"):
        run_bench([f"{user_models}:without_profile"], [8], input_shape="5x2", quiet=True)


def test_runners_come_from_the_one_runtime_dispatch(monkeypatch):
    """The bench makes every runner through effattn.runtime.load, with the backend, device and threads."""
    from effattn.bench import backends

    calls = []

    def recording_load(source, backend="auto", device=None, threads=None, **options):
        calls.append((backend, device, threads, options.get("dtype"), options.get("precision")))
        return real_load(source, backend=backend, device=device, threads=threads, **options)

    real_load = backends.load
    monkeypatch.setattr(backends, "load", recording_load)
    results = run_bench(
        ["efficient_attention"], [8], backends=["onnxruntime"], threads=1, min_seconds=0.01, memory=False, quiet=True
    )
    assert all(r.status == "ok" for r in results.rows)
    # eager (torch's threads are process-wide, set by run_bench); onnxruntime cold and warm start-up
    assert calls == [("torch", "cpu", None, torch.float32, None)] + [("onnxruntime", "cpu", 1, None, None)] * 2


def test_a_file_runs_only_the_rows_that_time_it_as_labelled(onnx_models, tmp_path):
    """On a file, `openvino-plain-int8` is plain OpenVINO on that file (not effattn's runner under its label) and
    the NNCF rows, which time an IR made from a model source, are skipped saying so. The file was exported from a
    module: its metadata names a class, not a zoo model, so it gets no eager row (it used to fail the bench)."""
    pytest.importorskip("openvino", reason="openvino is not installed (the 'cpu' extra)")
    from effattn.bench.backends import FileBackends, PlainOpenVINO
    from effattn.export import quantize
    from effattn.runtime.openvino_runner import OpenVINORunner

    path = quantize(onnx_models["ea16"].path, tmp_path / "block.int8.onnx", samples=2).path
    made = FileBackends(path, "cpu", 2)
    for backend in ("nncf-openvino", "openvino-nncf", "openvino-nncf-mixed"):
        assert made.fits(backend).startswith(f"skipped: {backend} times NNCF's IR (preset=")  # none beside it
        assert made.fits(backend).endswith("this file has no such IR beside it")
    assert made.fits("openvino-plain-int8") is None and made.fits("openvino-int8") is None
    with made.make("openvino-plain-int8") as plain, made.make("openvino-int8") as ours:
        assert type(plain) is PlainOpenVINO and type(ours) is OpenVINORunner
    assert made.eager is None and made.fits("torch").startswith("skipped: eager PyTorch runs a zoo model")
