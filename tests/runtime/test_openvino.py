"""The OpenVINO runner: parity at the precision it reports, the precision it picks from file and CPU,
what ``load(backend="auto")`` picks on the CPU, and clear refusals (input checks and concurrency are in
test_runner.py and test_concurrency.py, shared with the other runners)."""

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="openvino is not installed (it comes with the 'cpu' extra)")

from effattn import metadata
from effattn.errors import BackendError
from effattn.export import quantize
from effattn.runtime import TOLERANCES, choose_backend, compare, load, profile_inputs
from effattn.runtime.openvino_runner import OpenVINORunner, choose_precision, cpu_has_bf16
from effattn.runtime.torch_runner import TorchRunner
from tests.fixtures import ONNX_MODELS

PROFILE = ONNX_MODELS["ea16"].profile
needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no BF16 arithmetic (AVX512-BF16 or AMX)")


@pytest.fixture(scope="module")
def files(tmp_path_factory, onnx_models):
    d = tmp_path_factory.mktemp("openvino")
    block = onnx_models["ea16"]
    return {"block": block.source, "fp32": block.path, "int8": quantize(block.path, d / "block.int8.onnx").path}


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_parity_at_the_precision_it_reports(files, precision):
    """Fresh random inputs at min/opt/max, output and attention branch, against the tolerance of its precision."""
    with OpenVINORunner(files["fp32"], precision=precision) as runner:
        assert runner.precision == precision and runner.profile == PROFILE
        assert runner.inputs["input"].shape == ("batch", 16, "height", "width")
        report = compare(
            TorchRunner(files["block"], PROFILE),
            runner,
            profile_inputs(PROFILE),
            precision=runner.precision,
            residuals=metadata.residuals_of(runner.metadata),
        )
    assert report.passed, report
    branch = next(r for r in report.rows if r.metric == "branch")
    if precision == "bf16":  # really BF16, not FP32 under another name
        assert branch.value > TOLERANCES["fp32"].branch_rel_l2


def test_precision_from_the_file_and_the_cpu(files):
    hint = "bf16" if cpu_has_bf16() else "f32"
    assert choose_precision("fp32") == ("bf16" if cpu_has_bf16() else "fp32", hint)
    assert choose_precision("fp32", "fp32") == ("fp32", "f32")
    assert choose_precision("int8") == ("int8", hint)  # the attention's float ops in BF16 where there is BF16
    assert choose_precision("int8", "fp32") == ("int8", "f32")
    assert choose_precision("fp16", "auto") == ("fp16", "f32")
    with pytest.raises(BackendError, match="unknown OpenVINO precision 'int4'"):
        choose_precision("fp32", "int4")
    if cpu_has_bf16():
        with pytest.raises(BackendError, match="the file is fp16; BF16 applies to FP32 and INT8 graphs"):
            choose_precision("fp16", "bf16")
    with OpenVINORunner(files["int8"]) as runner:
        assert runner.precision == "int8" and runner.backend == "openvino-cpu-int8" and runner.hint == hint


def test_auto_on_the_cpu_picks_openvino_for_int8_and_onnxruntime_for_fp32(files, caplog):
    with caplog.at_level("INFO", logger="effattn"), load(files["int8"], device="cpu") as runner:
        assert runner.backend == "openvino-cpu-int8"
    assert "backend auto: OpenVINO (INT8 graph" in caplog.text
    with load(files["fp32"], device="cpu") as runner:
        assert runner.backend == "onnxruntime-cpu"  # FP32 stays FP32: OpenVINO's default would be BF16
    with load(files["int8"], backend="onnxruntime", device="cpu") as runner:
        assert runner.backend == "onnxruntime-cpu"
    assert "compiled per input shape" in choose_backend(files["int8"], device="cpu").reason
    reason = choose_backend(files["fp32"], device="cpu").reason  # says why, and what the fast path is
    assert "an FP32 file stays FP32" in reason and "effattn quantize" in reason


def test_int8_on_openvino_matches_onnxruntime_on_the_same_graph(files):
    """Both runtimes run the one QDQ graph (OpenVINO's float ops kept FP32 here): their answers agree far
    more closely than either with eager FP32."""
    feed = profile_inputs(PROFILE)[1]
    with (
        load(files["int8"], backend="openvino", precision="fp32") as ov,
        load(files["int8"], backend="onnxruntime") as ort,
    ):
        a, b = ov.infer(feed)["output"], ort.infer(feed)["output"]
    with torch.inference_mode():
        eager = files["block"](torch.from_numpy(feed["input"])).numpy()
    branch = eager - feed["input"]
    assert np.linalg.norm(a - b) < 0.2 * np.linalg.norm(a - eager)
    assert np.linalg.norm(a - eager) <= TOLERANCES["int8"].branch_rel_l2 * np.linalg.norm(branch)


def test_refusals(files, tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        OpenVINORunner(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(BackendError, match=r"junk\.onnx is not an ONNX model") as info:  # before any backend
        load(junk, backend="openvino")
    assert "\n" not in str(info.value)
    with pytest.raises(BackendError, match="the openvino backend runs on the CPU, not cuda"):
        load(files["fp32"], backend="openvino", device="cuda")


def test_cli_compare_on_openvino_uses_the_runners_precision(onnx_models, capsys):
    """``effattn compare --backend openvino`` on an FP32 file checks BF16 numerics against BF16 limits."""
    from effattn.cli import main

    assert main(["compare", str(onnx_models["seg_small"].path), "--backend", "openvino"]) == 0
    out = capsys.readouterr().out
    backend = "openvino-cpu-bf16" if cpu_has_bf16() else "openvino-cpu"
    assert backend in out and "argmax agreement" in out
    assert (">= 99.5%" if cpu_has_bf16() else ">= 99.9%") in out


def test_static_shapes_compile_per_shape_and_match_the_dynamic_compile(files):
    """The default compiles one static-shape graph per input shape (the profile's opt at load), keeps at most
    STATIC_CACHE of them (least recently used goes) and computes what the dynamic-shape compile computes;
    inputs are still checked against the profile."""
    feeds = profile_inputs(PROFILE, seed=3)
    with (
        OpenVINORunner(files["fp32"], precision="fp32") as static,
        OpenVINORunner(files["fp32"], precision="fp32", static_shapes=False) as dynamic,
    ):
        assert list(static._static) == [((2, 16, 16, 16),)] and dynamic.compiled is not None
        static.STATIC_CACHE = 2
        for feed in feeds:  # min, opt, max: three shapes, two kept
            a, b = static.infer(feed)["output"], dynamic.infer(feed)["output"]
            assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)
        assert list(static._static) == [((2, 16, 16, 16),), ((4, 16, 32, 24),)]
        with pytest.raises(Exception, match="input"):
            static.infer(np.zeros((1, 16, 64, 64), np.float32))  # outside the profile: refused before compiling
        assert len(static._static) == 2


def test_zero_copy_inputs_are_left_alone_and_outputs_are_the_callers(files):
    """Inputs go in without a copy (share_inputs) yet stay unchanged; each call's outputs are the caller's own
    arrays, not views of the pooled request a later call overwrites."""
    feeds = profile_inputs(PROFILE, seed=4)
    with OpenVINORunner(files["int8"]) as runner:
        before = feeds[1]["input"].copy()
        first = runner.infer(feeds[1])["output"]
        kept = first.copy()
        assert np.array_equal(feeds[1]["input"], before)
        second = runner.infer({"input": feeds[1]["input"] + 1})["output"]
        assert np.array_equal(first, kept) and not np.array_equal(first, second)
        assert first.flags.owndata and first.flags.writeable


def test_layer_summary_is_per_run_by_type_and_kernel():
    """Exact sums over two runs: ms per run, share of the layers' total, layers per run, slowest first."""
    from effattn.runtime.openvino_runner import LayerTime, summarize_layers

    run = [
        LayerTime("conv", "Convolution", "brgconv_avx512_amx_I8", 3.0),
        LayerTime("resize", "Interpolate", "jit_avx512_BF16", 4.0),
        LayerTime("out", "Reorder", "jit_uni_BF16", 1.0),
        LayerTime("conv2", "Convolution", "jit_avx512_BF16", 2.0),
    ]
    s = summarize_layers(run + run, iterations=2, top=2)
    assert s["layers_ms"] == 10.0 and s["iterations"] == 2
    assert s["by_type"] == [
        {"name": "Convolution", "ms": 5.0, "share": 0.5, "layers": 2},
        {"name": "Interpolate", "ms": 4.0, "share": 0.4, "layers": 1},
        {"name": "Reorder", "ms": 1.0, "share": 0.1, "layers": 1},
    ]
    assert [k["name"] for k in s["by_kernel"]] == ["jit_avx512_BF16", "brgconv_avx512_amx_I8", "jit_uni_BF16"]
    assert s["by_kernel"][0]["ms"] == 6.0
    assert s["slowest"] == [
        {"name": "resize", "type": "Interpolate", "kernel": "jit_avx512_BF16", "ms": 4.0, "share": 0.4},
        {"name": "conv", "type": "Convolution", "kernel": "brgconv_avx512_amx_I8", "ms": 3.0, "share": 0.3},
    ]


def test_profile_counts_real_layers_and_the_cli_writes_it(files, tmp_path, capsys):
    """PERF_COUNT on the INT8 block: its convolutions are among the executed layers; the CLI saves the summary
    with the CPU named and never overwrites a file without --force."""
    import json

    from effattn.cli import main

    with pytest.raises(BackendError, match="perf_counters=True"):
        OpenVINORunner(files["int8"]).layer_times(np.zeros((2, 16, 16, 16), np.float32))
    with OpenVINORunner(files["int8"], perf_counters=True) as runner:
        layers = runner.layer_times(profile_inputs(PROFILE)[1], iterations=2)
    assert {"Convolution", "MatMul"} <= {layer.type for layer in layers} and all(x.ms >= 0 for x in layers)
    out = tmp_path / "p.json"
    assert main(["profile", str(files["int8"]), "--iterations", "2", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["inputs"] == {"input": [2, 16, 16, 16]} and report["environment"]["cpu"]
    assert "Convolution" in {row["name"] for row in report["by_type"]} and "slowest layers" in capsys.readouterr().out
    assert main(["profile", str(files["int8"]), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
