"""The demo's torch rows on a GPU: eager FP16 on CUDA and the fused kernel in FP16 beside it; none on the CPU (the
CPU demo is test_cli.py's). What is asked of the runners is checked here; the GPU run is gpu-marked."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from effattn import pipeline
from effattn.errors import ModelError
from effattn.models import load_model

FUSED, EAGER = "torch-fused-fp16 (cuda)", "torch-fp16 (eager, cuda)"


@pytest.fixture
def seg():
    source = load_model("ea_segnet_tiny", pretrained=True)
    return source, source.profile


def test_no_torch_rows_on_the_cpu(seg, monkeypatch):
    if not torch.cuda.is_available():
        assert pipeline._torch_cuda_rows(*seg, ["logits"], on_cpu=False) == ({}, [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU, but the demo runs on the CPU
    monkeypatch.setattr(pipeline, "TorchRunner", None)  # nothing is made
    assert pipeline._torch_cuda_rows(*seg, ["logits"], on_cpu=True) == ({}, [])


class FakeRunner:
    """Records what the demo asks of a TorchRunner; ``refuse_fused``: fuse() found nothing to fuse."""

    made: ClassVar[list[dict]] = []
    refuse_fused = False

    def __init__(self, model, profile, output_names, **options) -> None:
        if options.get("fused") and FakeRunner.refuse_fused:
            raise ModelError("fuse: nothing to fuse in DotProductAttention: ...")
        FakeRunner.made.append({"outputs": output_names, **options})
        self.name = "?"


@pytest.mark.parametrize("refuse_fused", [False, True])
def test_on_a_gpu_eager_fp16_and_fused_fp16_rows(seg, monkeypatch, refuse_fused):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(pipeline, "TorchRunner", FakeRunner)
    monkeypatch.setattr(FakeRunner, "made", [])
    monkeypatch.setattr(FakeRunner, "refuse_fused", refuse_fused)
    rows, notes = pipeline._torch_cuda_rows(*seg, ["logits"], on_cpu=False)
    asked = {"outputs": ["logits"], "device": "cuda", "dtype": torch.float16}
    if refuse_fused:
        assert list(rows) == [EAGER] and notes == ["no fused row: fuse: nothing to fuse in DotProductAttention: ..."]
        assert FakeRunner.made == [asked | {"fused": False}]
    else:
        assert list(rows) == [EAGER, FUSED] and notes == []
        assert FakeRunner.made == [asked | {"fused": False}, asked | {"fused": True}]
    assert [r.name for r in rows.values()] == list(rows)


@pytest.mark.gpu
def test_the_gpu_demo_shows_the_fused_row(tmp_path, capsys):
    from effattn.cli import main

    code = main(["demo", "--device", "cuda", "--out", str(tmp_path), "--seconds", "0.2", "-q"])
    text = capsys.readouterr().out
    assert code == 0, text
    latency = text[text.index("latency at") :]
    assert FUSED in latency and EAGER in latency and "FAIL" not in text
