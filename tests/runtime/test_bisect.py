"""compare --bisect: tensor by tensor against the FP32 export, in graph order, the first tensor out of tolerance."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from effattn.cli import main
from effattn.errors import InputError
from effattn.export import quantize, to_fp16
from effattn.runtime.bisect import bisect


@pytest.fixture(scope="module")
def seg(onnx_models, tmp_path_factory):
    """The trained segmenter (small profile), its INT8 QDQ graph (4 task images) and its FP16 graph."""
    folder = tmp_path_factory.mktemp("bisect")
    fp32 = onnx_models["seg_small"].path
    int8 = quantize(fp32, folder / "seg.int8.onnx", samples=4).path
    return {"fp32": fp32, "int8": int8, "fp16": to_fp16(fp32, folder / "seg.fp16.onnx")}


def _edited(source, target, rng, change) -> str:
    """``source`` with one Conv's weight (a random Conv past the first) changed by ``change``; its node's name."""
    model = onnx.load(str(source))
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    node = convs[int(rng.integers(1, len(convs)))]
    weight = numpy_helper.to_array(inits[node.input[1]]).copy()
    change(weight)
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
    onnx.save(model, str(target))
    return node.name


def test_a_wrong_constant_is_found_at_its_node(onnx_models, tmp_path, rng):
    """One Conv weight scaled by 1.5: every tensor before its output matches exactly, its output is the first
    out of tolerance (the FP32 row, 1e-5), and nothing is unmatched (the same graph)."""
    fp32 = onnx_models["seg_small"].path
    node = _edited(fp32, tmp_path / "edited.onnx", rng, lambda w: w.__imul__(1.5))
    feed = {"input": rng.standard_normal((1, 3, 48, 40), dtype=np.float32)}
    result = bisect(tmp_path / "edited.onnx", fp32, [feed])
    first = result.first
    assert first is not None and first.node == node and first.op == "Conv" and first.rel_l2 > 0.1
    before = result.rows[: result.rows.index(first)]
    assert before and all(r.rel_l2 == 0 and r.passed for r in before)
    assert not result.unmatched and result.tolerance == "fp32" and result.arithmetic == "FP32"


def test_a_nan_is_reported_where_it_appears(onnx_models, tmp_path, rng, capsys):
    """A NaN in one Conv weight: the first tensor out of tolerance is that Conv's output, with its NaN count;
    through the CLI (--json), exit code 1."""
    fp32 = onnx_models["seg_small"].path
    node = _edited(fp32, tmp_path / "nan.onnx", rng, lambda w: w.reshape(-1).__setitem__(0, np.nan))
    np.savez(tmp_path / "x.npz", input=rng.standard_normal((1, 3, 32, 32), dtype=np.float32))
    argv = ["compare", str(tmp_path / "nan.onnx"), "--bisect", str(fp32), "--load-inputs", str(tmp_path / "x.npz")]
    assert main([*argv, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    first = next(t for t in out["tensors"] if not t["passed"])
    assert out["first"] == first["name"] and first["node"] == node
    assert first["nan"] > 0 and first["reference_nan"] == 0


def test_int8_names_the_first_tensor_past_a_tight_tolerance(seg):
    """The QDQ graph held to the FP32 row: the first tensor out is a Conv reading a DequantizeLinear (the first
    quantized op), and every tensor before it is within 1e-5; at its own INT8 row the table says so."""
    result = bisect(seg["int8"], seg["fp32"], tolerance="fp32", seed=0)
    first = result.first
    assert first is not None and first.op == "Conv"
    model = onnx.load(str(seg["int8"]))
    producers = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if first.name in n.output)
    assert producers[conv.input[0]].op_type == "DequantizeLinear"
    assert all(r.passed for r in result.rows[: result.rows.index(first)])
    text = str(bisect(seg["int8"], seg["fp32"], seed=0))
    assert "INT8 Q/DQ rounding as written, float math in FP32" in text and "(the int8 row)" in text


def test_fp16_matches_every_tensor_and_says_its_arithmetic(seg):
    """The FP16 graph's tensors all match (those of the nodes kept FP32 under onnxconverter-common's
    ``_output_cast_`` names), within the FP16 row, and the output says ONNX Runtime computed in FP32."""
    result = bisect(seg["fp16"], seg["fp32"])
    assert not result.unmatched and result.passed and result.rows[-1].name == "logits"
    assert max(r.rel_l2 for r in result.rows) < 1e-2
    assert "most nodes computed in FP32" in result.arithmetic


def test_bisect_refusals(seg, onnx_models, tmp_path, capsys):
    with pytest.raises(InputError, match=r"is fp16; give the FP32 export it was made from"):
        bisect(seg["int8"], seg["fp16"])
    with pytest.raises(InputError, match=r"record different effattn.model \('ea_segnet_tiny' vs "):
        bisect(seg["int8"], onnx_models["ea8"].path)
    with pytest.raises(InputError, match=r"axis 2 \(height\) is 200; it must be in \[32, 64\]"):
        bisect(seg["int8"], seg["fp32"], [{"input": np.zeros((1, 3, 200, 32), np.float32)}])
    assert main(["compare", str(seg["int8"]), "ea_segnet_tiny", "--bisect", str(seg["fp32"])]) == 2
    assert "MODEL: --bisect compares two ONNX files" in capsys.readouterr().err
