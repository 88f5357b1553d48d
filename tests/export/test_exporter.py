"""Export: dynamic shapes, graph quality, metadata, validation and the refusal paths."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from effattn import metadata
from effattn.errors import ExportError, FileExistsNoForceError, ParityError
from effattn.export import export_onnx, read_metadata
from effattn.models import EfficientAttention, load_model
from effattn.pipeline import export_verified
from effattn.runtime import load
from effattn.runtime.torch_runner import TorchRunner
from effattn.shapes import ShapeProfile
from tests.conftest import rel_l2
from tests.fixtures import ONNX_MODELS


@pytest.fixture(scope="module")
def block_onnx(tmp_path_factory):
    """Exported here, not taken from onnx_models: export_verified is what this module tests."""
    row = ONNX_MODELS["ea16_4heads"]
    block = row.build()
    path = tmp_path_factory.mktemp("block") / "block.onnx"
    result = export_verified(block, path, row.profile)
    return block, path, result


@pytest.fixture(scope="module")
def trained_seg_onnx(onnx_models):
    seg = onnx_models["seg"]
    return seg.source, seg.path


def test_export_writes_checked_graph_with_dynamic_axes(block_onnx):
    _, path, result = block_onnx
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 16, "height", "width"]
    assert result.report.passed and {r.metric for r in result.report.rows} == {"output", "branch"}


@pytest.mark.parametrize("shape", [(1, 16, 4, 4), (3, 16, 20, 36), (4, 16, 48, 17), (2, 16, 33, 5)])
def test_block_matches_eager_at_many_shapes(block_onnx, shape, rng):
    block, path, _ = block_onnx
    x = rng.standard_normal(shape, dtype=np.float32)
    with load(path) as runner:
        got = runner.infer({"input": x})["output"]
    with torch.no_grad():
        want = block(torch.from_numpy(x)).numpy()
    assert got.shape == shape
    assert rel_l2(want, got) <= 1e-5
    assert rel_l2(want - x, got - x) <= 1e-5  # the attention branch, which the residual would hide


def _node_count(heads: int, exporter: str, tmp_path) -> int:
    path = tmp_path / f"h{heads}-{exporter}.onnx"
    profile = ShapeProfile.single("1x32x4x4", "2x32x8x8", "2x32x16x16")
    export_onnx(EfficientAttention(32, 16, heads, 32), profile, path, exporter=exporter)
    return len(onnx.load(path).graph.node)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_node_count_does_not_grow_with_heads(exporter, tmp_path):
    counts = {h: _node_count(h, exporter, tmp_path) for h in (1, 2, 8)}
    assert len(set(counts.values())) == 1, counts
    assert counts[8] < 40, f"{counts[8]} nodes for 8 heads (the reference's loop exports 277)"


def test_metadata_describes_the_file(trained_seg_onnx):
    source, path = trained_seg_onnx
    meta = read_metadata(path)
    assert meta[metadata.MODEL] == "ea_segnet_tiny"
    assert meta[metadata.TASK] == "segmentation"
    assert meta[metadata.CHECKPOINT_SHA256] == source.checkpoint_sha256
    assert ShapeProfile.from_json(meta[metadata.PROFILE]) == source.profile
    assert meta[metadata.EXPORTER].startswith("dynamo")
    assert meta[metadata.VERSION]


def test_trained_segmenter_argmax_agrees_on_task_images(trained_seg_onnx):
    source, path = trained_seg_onnx
    feeds = source.task_inputs(source.profile)
    assert len(feeds) == 3
    from effattn.runtime import compare

    with load(path) as runner:
        report = compare(TorchRunner(source.model, source.profile, ["logits"]), runner, feeds)
    rows = {r.metric: r for r in report.rows}
    assert rows["argmax"].value >= 0.999, report
    assert rows["output"].value <= 1e-5, report


@pytest.mark.parametrize("name", ["ea_resnet_tiny", "ea_segnet_tiny", "efficient_attention_1d"])
def test_hosts_and_1d_export_and_match_at_non_square_batched_shapes(name, tmp_path, rng):
    source = load_model(name)
    p = source.profile["input"]
    shape = (3, *p.opt[1:-1], p.opt[-1] + 7) if p.rank == 3 else (3, 3, 40, 72)
    path = tmp_path / f"{name}.onnx"
    export_onnx(source, source.profile, path)
    x = rng.standard_normal(shape, dtype=np.float32)
    with load(path) as runner:
        got = next(iter(runner.infer(x).values()))
    with torch.no_grad():
        want = source.model(torch.from_numpy(x)).numpy()
    assert rel_l2(want, got) <= 1e-5


def test_torchscript_fallback_exports_hosts(tmp_path, rng):
    source = load_model("ea_segnet_tiny", pretrained=True)
    result = export_verified(source, tmp_path / "ts.onnx", exporter="torchscript")
    assert result.report.passed
    x = rng.standard_normal((2, 3, 48, 80), dtype=np.float32)
    with load(result.path) as runner:
        assert runner.infer(x)["logits"].shape == (2, 3, 48, 80)


def test_existing_file_is_not_overwritten(tmp_path):
    path = tmp_path / "keep.onnx"
    path.write_bytes(b"the user's file")
    with pytest.raises(FileExistsNoForceError, match="exists; pass --force to overwrite it"):
        export_onnx(EfficientAttention(8, 4, 2, 8), torch.randn(1, 8, 4, 4), path)
    assert path.read_bytes() == b"the user's file"


class ExportOnlyBug(nn.Module):
    """Behaves differently while exported: the validation must catch it and refuse to write."""

    def forward(self, x):
        return x + 1.0 if torch.compiler.is_exporting() else x


def test_validation_failure_writes_nothing(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ParityError, match="disagrees with eager PyTorch; the file was not written") as err:
        export_verified(ExportOnlyBug(), path, ShapeProfile.single("1x3x4x4", "1x3x8x8", "2x3x8x8"))
    assert "FAIL" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_the_export_stage_writes_only_after_its_verify_hook_passes(tmp_path):
    seen = []

    def verify(tmp):
        seen.append(onnx.load(tmp).graph.input[0].name)  # the finished file, under its temporary name
        raise ParityError("the hook said no")

    with pytest.raises(ParityError, match="the hook said no"):
        export_onnx(ExportOnlyBug(), ShapeProfile.single("1x3x4x4"), tmp_path / "x.onnx", verify=verify)
    assert seen == ["input"] and list(tmp_path.iterdir()) == []


def test_a_model_without_a_profile_says_what_to_give(tmp_path):
    source = load_model("tests.conftest:make_user_model", channels=8)  # a user model has no zoo profile
    with pytest.raises(ExportError, match=r"has no shape profile: give one, e.g. ShapeProfile.single\("):
        export_onnx(source, None, tmp_path / "x.onnx")
    given = load_model("tests.conftest:make_user_model", channels=8, profile=ShapeProfile.single("1x3x4x4"))
    assert export_verified(given, tmp_path / "x.onnx").report.passed


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


def test_exporter_failure_is_one_clear_error(tmp_path):
    with pytest.raises(ExportError, match=r"dynamo exporter failed on DataDependent: .*\(try exporter='torchscript'\)"):
        export_onnx(DataDependent(), ShapeProfile.single("1x3x4x4", "1x3x8x8", "2x3x8x8"), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_read_metadata_refuses_foreign_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ExportError, match="is not an ONNX model"):
        read_metadata(junk)
    with pytest.raises(ExportError, match="does not exist"):
        read_metadata(tmp_path / "missing.onnx")


@pytest.mark.parametrize("opset", [0, 999])
def test_an_opset_onnx_does_not_know_is_refused(tmp_path, opset):
    with pytest.raises(ExportError, match=f"opset {opset} is outside what this onnx supports"):
        export_onnx(EfficientAttention(8, 4, 2, 8), torch.randn(1, 8, 4, 4), tmp_path / "x.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []
