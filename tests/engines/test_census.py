"""The layer census (FP16, BF16, INT8) and the builder's choices that need no GPU (issue: GPU correctness).

Inspector JSON under data/ carries its provenance (``_provenance``): real captures (TensorRT 10-era static;
dynamic without a context), TensorRT 11 layouts reconstructed from its migration guide and Polygraphy 0.53.6,
and files written from the developer guide's documented format (``*.documented.json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from effattn.engines.precision import INSPECTOR_EXCERPT, census, precision_refusal
from effattn.engines.tensorrt_build import scratch_path

DATA = Path(__file__).parent / "data"


def _load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def _layer(*types: str, key: str = "Format/Datatype") -> dict:
    return {"Name": "l", "LayerType": "x", "Outputs": [{"Name": "t", key: t} for t in types]}


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8", "fp8"])
def test_a_dynamic_engine_inspected_without_context_is_refused_with_the_inspectors_words(precision):
    layers = census(_load("inspector_trt8_dynamic_no_context.json"))
    assert layers["layers"] == 3 and layers["formats"] == "unknown"
    refusal = precision_refusal(precision, layers)
    assert refusal is not None and refusal.startswith("has no layer types in its inspector output (3 layers)")
    assert f"no layer is known to run in {precision.upper()}" in refusal
    assert "N/A due to dynamic shapes" in refusal  # the inspector's own output, quoted
    assert precision_refusal("fp32", layers) is None


def test_a_layer_names_only_engine_is_refused():
    """ProfilingVerbosity.LAYER_NAMES_ONLY (TensorRT's default) lists names only: nothing to count, so no pass."""
    layers = census(_load("inspector_layer_names_only.documented.json"))
    assert layers["layers"] == 5 and layers["formats"] == "unknown"
    refusal = precision_refusal("int8", layers)
    assert refusal is not None and "/attn/values/Conv" in refusal


@pytest.mark.parametrize("info", [{}, {"Layers": []}, {"Bindings": ["input"]}, [], {"Layers": "none"}])
def test_an_inspection_with_no_layers_is_refused(info):
    layers = census(info)
    assert layers["layers"] == 0 and layers["formats"] == "unknown"
    for precision in ("fp16", "bf16", "int8", "fp8"):
        assert precision_refusal(precision, layers) is not None
    assert precision_refusal("fp16", {}) is not None  # a sidecar with no census at all


def test_an_inspector_error_is_refused_with_its_words():
    refusal = precision_refusal("fp16", {"error": "RuntimeError: inspector unavailable"})
    assert (
        refusal == "could not be inspected (RuntimeError: inspector unavailable), so no layer is known to run in FP16"
    )
    assert precision_refusal("fp32", {"error": "RuntimeError: inspector unavailable"}) is None


def test_the_quoted_inspector_output_is_truncated():
    info = {"Layers": [{"Name": "x" * 5000, "LayerType": "Myelin"}]}
    said = census(info)["inspector"]
    assert len(said) == INSPECTOR_EXCERPT + len(" ...") and said.endswith(" ...")
    assert census(info, raw="raw text")["inspector"] == "raw text"


def test_census_reads_the_documented_tensorrt10_detailed_format():
    layers = census(_load("inspector_trt10_fp16_detailed.documented.json"))
    assert layers == {"layers": 5, "reformat": 1, "fp16": 2, "fp32": 2}
    assert precision_refusal("fp16", layers) is None


def _respell(value, spell):
    """``value`` with every JSON key respelt by ``spell`` (another case or punctuation)."""
    if isinstance(value, dict):
        return {spell(k): _respell(v, spell) for k, v in value.items()}
    if isinstance(value, list):
        return [_respell(v, spell) for v in value]
    return value


@pytest.mark.parametrize(
    "spell",
    [
        str.lower,
        str.upper,
        lambda k: k.replace("/", "_").lower(),  # format_datatype
        lambda k: k.replace("Datatype", "DataType"),  # Format/DataType, DataType
        lambda k: "layer_type" if k == "LayerType" else k,
    ],
)
@pytest.mark.parametrize(
    "name", ["inspector_trt10_fp16_detailed.documented.json", "inspector_trt11_with_context.reconstructed.json"]
)
def test_census_reads_keys_whatever_their_case_or_layout(name, spell):
    info = _load(name)
    assert census(_respell(info, spell)) == census(info)
    assert "formats" not in census(info)


def test_layers_given_as_json_strings_are_read():
    info = _load("inspector_trt10_fp16_detailed.documented.json")
    as_strings = {"Layers": [json.dumps(layer) for layer in info["Layers"]]}
    assert census(as_strings) == census(info)


def test_a_format_only_tensor_is_read_from_its_format():
    info = {"Layers": [{"LayerType": "gemm", "Outputs": [{"Format": "Row major linear FP16 format (kLINEAR)"}]}]}
    assert census(info) == {"layers": 1, "fp16": 1}


def test_census_reads_real_tensorrt10_formats():
    # the FP32 -> Int8 Reformat (the input's quantizer) moves data: only the convolution is an INT8 layer
    assert census(_load("inspector_trt10_static.json")) == {"layers": 3, "reformat": 1, "int8": 1, "fp32": 1}


def _typed_layer(kind: str, inputs: list[str], outputs: list[str]) -> dict:
    return {
        "Name": "l",
        "LayerType": kind,
        "Inputs": [{"Name": "i", "Datatype": t} for t in inputs],
        "Outputs": [{"Name": "o", "Datatype": t} for t in outputs],
    }


def test_census_counts_an_int8_convolution_with_a_float_output_as_int8():
    """effattn's QDQ graphs quantize Conv inputs only (no Q on outputs): TensorRT's fused INT8 convolution reads
    Int8 and writes Float. Q/DQ and Reformat layers only convert, so an engine of those alone has no INT8 layer."""
    info = {
        "Layers": [
            _typed_layer("CaskConvolution", ["Int8"], ["Float"]),
            _typed_layer("Reformat", ["Float"], ["Int8"]),
            _typed_layer("Dequantize", ["Int8"], ["Float"]),
            _typed_layer("Myelin", ["Float"], ["Float"]),
        ]
    }
    layers = census(info)
    assert layers == {"layers": 4, "int8": 1, "reformat": 2, "fp32": 1}
    assert precision_refusal("int8", layers) is None
    only_quantizers = census({"Layers": info["Layers"][1:]})
    assert precision_refusal("int8", only_quantizers) == "runs 0 of 3 layers in INT8"


def test_refusal_per_precision():
    assert precision_refusal("bf16", {"layers": 4, "fp32": 4}) == "runs 0 of 4 layers in BF16"
    assert precision_refusal("bf16", {"layers": 4, "fp32": 3, "bf16": 1}) is None
    assert precision_refusal("fp32", {"layers": 4, "fp16": 4}) is None  # an FP32 graph may hold anything TensorRT picks
    assert precision_refusal("fp32", {"layers": 4, "formats": "unknown"}) is None
    assert precision_refusal("int8", {"layers": 4, "formats": "unknown"}) is not None


def test_census_reads_tensorrt11_datatype_keys():
    for name in ("inspector_trt11_with_context.reconstructed.json", "inspector_trt11_no_context.reconstructed.json"):
        assert census(_load(name)) == {"layers": 1, "fp16": 1}


def test_census_classifies_the_fp16_spellings_tensorrt_uses():
    info = {
        "Layers": [
            _layer("Row major linear FP16 format"),
            _layer("Channel major FP16 format where channel % 4 == 0"),
            _layer("Half"),
            _layer("Half", key="Datatype"),
            _layer("BFloat16", key="Datatype"),
            _layer("Row major linear FP32"),
            _layer("Float"),
            "a layer name only",
        ]
    }
    assert census(info) == {"layers": 8, "fp16": 4, "bf16": 1, "fp32": 2, "other": 1}  # a bare name: untyped


def test_fp16_refused_when_none_or_nothing_is_known():
    assert precision_refusal("fp16", {"layers": 5, "fp32": 5}) == "runs 0 of 5 layers in FP16"
    assert precision_refusal("fp16", {"layers": 5, "fp32": 4, "fp16": 1}) is None
    assert precision_refusal("fp16", {"layers": 5, "formats": "unknown"}) is not None
    assert precision_refusal("fp16", {"error": "inspector unavailable"}) is not None


def test_scratch_files_are_named_by_content_and_precision(tmp_path):
    a, b = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    for path, content in ((a, b"first"), (b, b"second")):
        path.parent.mkdir()
        path.write_bytes(content)
    cache = tmp_path / "cache"
    assert scratch_path(cache, a, "fp16") != scratch_path(cache, b, "fp16")
    assert scratch_path(cache, a, "fp16") != scratch_path(cache, a, "bf16")
    assert scratch_path(cache, a, "fp16").parent == cache and scratch_path(cache, a, "bf16").name.startswith("model.")


def test_polygraphy_is_bound_to_one_tensorrt_before_its_first_import():
    """Polygraphy reads POLYGRAPHY_USE_TENSORRT_RTX once, at import: the choice is made then (and the
    variable restored); asking for the other library later is refused, not mixed. In a fresh process."""
    code = (
        "import os\n"
        "from effattn.engines.tensorrt_build import polygraphy_loaders, RTX_SWITCH\n"
        "from effattn.errors import BackendError\n"
        "polygraphy_loaders(rtx=False)\n"
        "assert RTX_SWITCH not in os.environ\n"
        "from polygraphy import config\n"
        "assert config.USE_TENSORRT_RTX is False\n"
        "try:\n"
        "    polygraphy_loaders(rtx=True)\n"
        "except BackendError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "POLYGRAPHY_USE_TENSORRT_RTX"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "bound to TensorRT (chosen when it was first imported" in out.stdout


@pytest.mark.parametrize("rtx", [True, False])
def test_rtx_choice_made_at_first_import(rtx):
    code = (
        "from effattn.engines.tensorrt_build import polygraphy_loaders\n"
        f"polygraphy_loaders(rtx={rtx})\n"
        "from polygraphy import config\n"
        "print(config.USE_TENSORRT_RTX)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "POLYGRAPHY_USE_TENSORRT_RTX"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == str(rtx), out.stderr


def test_census_counts_an_fp8_convolution_as_fp8():
    """The inspector names FP8 tensors "FP8" (TensorRT's DataType.FP8); an FP8 convolution reading FP8 and writing
    Float is an FP8 layer, as an INT8 one is an INT8 layer, and "FP8" is never read as FP32 ("float")."""
    for name in ("FP8", "Row major linear FP8 format", "Float8E4M3"):
        info = {
            "Layers": [
                _typed_layer("CaskConvolution", [name], ["Float"]),
                _typed_layer("Quantize", ["Float"], [name]),
                _typed_layer("Myelin", ["Float"], ["Float"]),
            ]
        }
        layers = census(info)
        assert layers == {"layers": 3, "fp8": 1, "reformat": 1, "fp32": 1}, name
        assert precision_refusal("fp8", layers) is None
    assert precision_refusal("fp8", {"layers": 3, "int8": 3}) == "runs 0 of 3 layers in FP8"
