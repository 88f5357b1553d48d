"""Roofline floors: FLOPs counted without running, the floor's two limits, and the precision a row runs."""

import pytest
from torch import nn

from effattn.bench.catalog import BACKENDS
from effattn.bench.roofline import (
    WEIGHT_BYTES,
    arithmetic_of,
    floor_ms,
    measure_peaks,
    model_cost,
    nominal_peaks,
    percent_of_peak,
)
from effattn.models import DotProductAttention


def test_model_cost_counts_two_flops_per_multiply_add_without_running():
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    flops, out = model_cost(conv, (2, 8, 10, 12))
    assert flops == 2 * 8 * 16 * 9 * 2 * 10 * 12 and out == 2 * 16 * 10 * 12
    # 4 heads x two n x n products at 256 x 256 positions: counted on the meta device, nothing allocated
    flops, _ = model_cost(DotProductAttention(64, 32, 4, 64), (1, 64, 256, 256))
    assert flops > 2 * 2 * (256 * 256) ** 2 * 16


def test_floor_is_the_larger_of_moving_and_computing():
    peaks = {"fp32": 100.0, "int8": 400.0}
    assert floor_ms(1e9, 0, 0, "fp32", 10.0, peaks) == pytest.approx(10.0)  # 1 GFLOP at 100 GFLOP/s
    assert floor_ms(1e9, 0, 0, "int8", 10.0, peaks) == pytest.approx(2.5)
    assert floor_ms(1e9, 0, 0, "fp16", 10.0, peaks) == pytest.approx(10.0)  # no FP16 peak: FP32's
    assert floor_ms(0, 1e9, 0, "fp32", 10.0, peaks) == pytest.approx(100.0)  # 1 GB at 10 GB/s
    assert floor_ms(0, 0, 10**9, "int8", 10.0, peaks) == pytest.approx(100.0)  # INT8 weights: 1 byte each
    assert floor_ms(1.0, 0, 0, "fp32", 10.0, {}) is None


def test_peaks_and_row_precisions():
    peaks = measure_peaks(("fp32",), n=256, repeats=2)
    assert peaks["fp32"] > 0

    class Reports:
        precision = "bf16"

    assert arithmetic_of(BACKENDS["openvino"], Reports()) == "bf16"
    assert [arithmetic_of(BACKENDS[b], None) for b in ("onnxruntime-int8", "torch-bf16", "onnxruntime")] == [
        "int8",
        "bf16",
        "fp32",
    ]
    assert WEIGHT_BYTES == {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "fp8": 1}


def test_nominal_peaks_from_the_flags_and_the_clock():
    """Zen 4 (AVX-512 on 256-bit ports, VNNI, BF16, no AMX) at 3.7 GHz x 2 cores: the issue's measured ~230 /
    ~460 / ~910; Sapphire Rapids' AMX tiles; AVX2 alone; no clock or no SIMD: no peak rather than a wrong one."""
    zen4 = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert nominal_peaks(zen4, "AuthenticAMD", 3.7, 2) == {"fp32": 236.8, "bf16": 473.6, "int8": 947.2}
    spr = [*zen4, "amx_tile", "amx_int8", "amx_bf16"]
    assert nominal_peaks(spr, "GenuineIntel", 2.0, 1) == {"fp32": 128.0, "bf16": 2048.0, "int8": 4096.0}
    assert nominal_peaks(["avx2"], "GenuineIntel", 1.0, 4) == {"fp32": 128.0, "bf16": 128.0, "int8": 256.0}
    assert nominal_peaks(zen4, "AuthenticAMD", None, 2) == {} and nominal_peaks([], "GenuineIntel", 3.0, 2) == {}


def test_percent_of_peak():
    peaks = {"fp32": 100.0, "int8": 400.0}
    assert percent_of_peak(1e9, 10.0, "fp32", peaks) == pytest.approx(100.0)  # 1 GFLOP in 10 ms at 100 GFLOP/s
    assert percent_of_peak(1e9, 10.0, "int8", peaks) == pytest.approx(25.0)
    assert percent_of_peak(1e9, 20.0, "fp16", peaks) == pytest.approx(50.0)  # FP16 on a CPU: FP32's peak
    assert percent_of_peak(1e9, 10.0, "fp32", {}) is None


def test_the_openvino_peaks_run_the_precision_they_name():
    """The INT8 product compiles to one of OpenVINO's INT8 kernels (brgemm_avx512_amx_I8, ..._I8: not the BF16
    kernel that INT8 weights alone would give), the FP32 one to an FP32 kernel: each peak is of the arithmetic it
    names."""
    pytest.importorskip("openvino", reason="openvino is not installed (it comes with the 'cpu' extra)")
    from effattn.bench.roofline import _openvino_matmul

    for precision, kernel in (("int8", "i8"), ("fp32", "f32")):
        run = _openvino_matmul(precision, 64, 1)
        assert run()[0].shape == (64, 64)
        layers = run.func.__self__.get_compiled_model().get_runtime_model().get_ordered_ops()
        info = [op.get_rt_info() for op in layers]
        products = [i for i in info if i["layerType"].astype(str) in ("FullyConnected", "MatMul")]
        assert len(products) == 1 and products[0]["primitiveType"].astype(str).lower().endswith(kernel)
    assert measure_peaks(("int8",), n=256, repeats=1)["int8"] > 0


@pytest.mark.parametrize("amx", [True, False])
def test_the_nominal_peak_follows_an_isa_cap(monkeypatch, amx):
    """Under ONEDNN_MAX_CPU_ISA below AMX (has_amx False) the AMX flags no longer set the nominal peak: the bench
    reports % of what the capped kernels can reach (VNNI / AVX512-BF16), and records the cap."""
    from effattn.bench import benchmark

    monkeypatch.setattr(benchmark, "has_amx", lambda: amx)
    monkeypatch.setattr(benchmark, "measure_bandwidth", lambda device: 20.0)
    monkeypatch.setattr(benchmark, "measure_peaks", lambda threads=None: {})
    spr = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]
    env = {"cpu_flags": spr, "cpu_vendor": "GenuineIntel", "cpu_ghz": 2.0}
    benchmark._measure_machine(env, "cpu", 1)
    assert env["nominal_peak_gop_s"] == (
        {"fp32": 128.0, "bf16": 2048.0, "int8": 4096.0} if amx else {"fp32": 128.0, "bf16": 256.0, "int8": 512.0}
    )
