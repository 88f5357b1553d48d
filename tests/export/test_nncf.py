"""NNCF's INT8 OpenVINO IR (``effattn quantize -o model.xml``): the artifact loads, agrees with eager within the
INT8 row (random block, trained segmenter), keeps the attention products float where asked, refuses in one line,
and is a bench row. Skipped with a reason without nncf (the ``nncf`` extra)."""

import json

import numpy as np
import openvino as ov
import pytest
import torch

from effattn.bench import benchmark
from effattn.errors import BackendError, FileExistsNoForceError, InputError
from effattn.export import quantize
from effattn.export.quantize import nncf_openvino
from effattn.models.synthetic import shapes_batch
from effattn.runtime import TOLERANCES, compare, load, profile_inputs
from effattn.runtime.torch_runner import TorchRunner
from tests.export.test_quantize import BLOCK_PROFILE, _iou

pytestmark = pytest.mark.skipif(
    not nncf_openvino.nncf_available(), reason="nncf is not installed (pip install 'effattn[cpu,nncf]')"
)
SAMPLES = 8  # calibration images: a few suffice for the tiny models, and keep NNCF's statistics pass short


@pytest.fixture(scope="module")
def irs(tmp_path_factory, onnx_models):
    d = tmp_path_factory.mktemp("nncf")
    seg, block = onnx_models["seg"], onnx_models["ea16_quant"]
    return {
        "seg": seg.source,
        "block": block.source,
        "seg_fp32": seg.path,
        "seg_ir": quantize(seg.path, d / "seg.xml", samples=SAMPLES),
        "seg_all": quantize(seg.path, d / "seg.all.xml", samples=SAMPLES, keep_float="none"),
        "block_ir": quantize(block.path, d / "block.xml", samples=SAMPLES, preset="mixed"),
    }


def _matmuls(path) -> dict[str, bool]:
    """Each MatMul of the IR -> whether it reads a fake-quantized operand."""
    model = ov.Core().read_model(str(path))
    return {
        op.get_friendly_name(): nncf_openvino.fake_quantized(op)
        for op in model.get_ordered_ops()
        if op.get_type_name() == "MatMul"
    }


def test_attention_products_stay_float_only_where_asked(irs):
    """keep_float='attention': the MatMuls the EA softmaxes feed read no FakeQuantize, every Conv does (the IR
    itself, inspected); keep_float='none' (NNCF alone) quantizes those same MatMuls: the scope is what keeps them."""
    import onnx

    names = nncf_openvino.ignored_attention(onnx.load(irs["seg_fp32"]))
    assert len(names) == 2  # one EA block: the context product and the queries' product
    kept, alone = _matmuls(irs["seg_ir"].path), _matmuls(irs["seg_all"].path)
    assert set(names) <= set(kept) and not any(kept[n] for n in names)
    assert all(alone[n] for n in names)
    assert irs["seg_ir"].quantized.get("Convolution", 0) >= 8 and "MatMul" not in irs["seg_ir"].quantized
    assert irs["seg_all"].quantized["MatMul"] == 2


def test_trained_segmenter_agrees_with_eager(irs):
    """Fresh held-out task images (32 at 64 x 64): argmax agreement >= 99 % and IoU drop <= 1 point per class,
    as the QDQ graph's test asks; the IR runs on OpenVINO with its INT8 kernels."""
    images, labels = shapes_batch(32, 64, 64)
    with torch.inference_mode():
        eager = irs["seg"].model(images).argmax(1).numpy()
    with load(irs["seg_ir"].path) as runner:
        assert runner.backend == "openvino-cpu-int8"
        got = np.concatenate([runner.infer(images[i : i + 8].numpy())["logits"] for i in range(0, 32, 8)]).argmax(1)
    assert (got == eager).mean() >= 0.99
    assert (_iou(eager, labels.numpy()) - _iou(got, labels.numpy())).max() <= 0.01


def test_block_within_the_int8_row(irs):
    """Random weights, fresh random inputs at min/opt/max (mixed preset): the output within TOLERANCES['int8']."""
    draws = [feed for _ in range(2) for feed in profile_inputs(BLOCK_PROFILE)]
    with load(irs["block_ir"].path, backend="openvino") as runner:
        reports = [
            compare(TorchRunner(irs["block"], BLOCK_PROFILE), runner, [feed], precision="int8") for feed in draws
        ]
    outputs = [r.value for report in reports for r in report.rows if r.metric == "output"]
    assert len(outputs) == 6 and max(outputs) <= TOLERANCES["int8"].rel_l2, outputs


def test_ir_keeps_the_export_metadata(irs):
    runner = load(irs["seg_ir"].path)
    assert runner.profile is not None and runner.profile.inputs[0].max == (8, 3, 256, 256)
    meta = runner.metadata
    assert meta["effattn.precision"] == "int8" and meta["effattn.model"] == "ea_segnet_tiny"
    assert meta["effattn.nncf"].startswith("preset=performance keep_float=attention")
    assert irs["seg_ir"].calibration == f"{SAMPLES} task images of ea_segnet_tiny (its sample generator)"


def test_refusals_in_one_line(irs, tmp_path):
    seg = irs["seg_fp32"]
    with pytest.raises(InputError, match=r"\.xml\) is INT8"):
        quantize(seg, tmp_path / "x.xml", precision="fp8")
    with pytest.raises(InputError, match="preset must be one of"):
        quantize(seg, tmp_path / "x.xml", preset="fast")
    (tmp_path / "y.bin").write_bytes(b"not ours")  # the .bin an IR would overwrite is refused without force
    with pytest.raises(FileExistsNoForceError):
        quantize(seg, tmp_path / "y.xml")
    assert (tmp_path / "y.bin").read_bytes() == b"not ours" and not (tmp_path / "y.xml").exists()
    with pytest.raises(BackendError, match="only the openvino backend"):
        load(irs["seg_ir"].path, backend="onnxruntime")
    lone = tmp_path / "lone.xml"
    lone.write_bytes(irs["seg_ir"].path.read_bytes())
    with pytest.raises(BackendError, match=r"no weights file lone\.bin"):
        load(lone)


def test_the_bench_row_and_its_skip(monkeypatch, tmp_path):
    """nncf-openvino is a timed row in the bench's JSON; without nncf it is a row that says why it was skipped."""
    results = benchmark.run_bench(
        ["efficient_attention"], [8], backends=["nncf-openvino"], min_seconds=0.01, memory=False, quiet=True
    )
    rows = {r["backend"]: r for r in json.loads(json.dumps(results.to_dict()))["rows"]}
    assert rows["nncf-openvino"]["status"] == "ok" and rows["nncf-openvino"]["median_ms"] > 0
    monkeypatch.setattr("effattn.bench.backends.nncf_available", lambda: False)
    results = benchmark.run_bench(
        ["efficient_attention"], [8], backends=["openvino-nncf"], min_seconds=0.01, memory=False, quiet=True
    )
    (row,) = [r for r in results.rows if r.backend == "openvino-nncf"]
    assert row.status == "skipped: nncf is not installed (pip install 'effattn[cpu,nncf]')" and row.stats is None


def test_json_output_stays_parseable_while_nncf_logs_and_draws_its_progress(irs, tmp_path, capfd):
    """NNCF writes INFO lines and a progress bar to stdout (its own handler, rich's console): `quantize --json`
    must still print one JSON document there, NNCF's output going to stderr."""
    from effattn.cli import main

    out = tmp_path / "seg.xml"
    assert main(["quantize", str(irs["seg_fp32"]), "-o", str(out), "--samples", "2", "--json"]) == 0
    captured = capfd.readouterr()
    assert json.loads(captured.out)["path"] == str(out)
    assert "Statistics collection" in captured.err  # the bar was drawn, on stderr


def test_an_upper_case_xml_output_is_refused_not_written_as_onnx(irs, tmp_path):
    """`-o model.XML` was taken as an ONNX output (the IR test was case-sensitive, `load` is not): a QDQ graph
    named .XML that `load` then read as an IR. Now one line, and nothing written."""
    with pytest.raises(InputError, match=r"OpenVINO IR is written to a \.xml file"):
        quantize(irs["seg_fp32"], tmp_path / "seg.int8.XML", samples=2)
    assert list(tmp_path.iterdir()) == []
