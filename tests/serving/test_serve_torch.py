"""``effattn serve --backend torch``: a model source (zoo name or package.module:factory) on the torch runner, fused
or not, answering as eager PyTorch over HTTP; and the command lines it refuses, each with one clear line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from effattn.cli import main
from effattn.models import load_model
from tests.harness import free_port, http, running_server

SHAPES = ("--min", "1x3x32x32", "--opt", "1x3x32x32", "--max", "2x3x64x64")  # small: the kernel is interpreted


def _infer(base: str, model: str, x: np.ndarray) -> tuple[int, dict]:
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    ).encode()
    status, _, answer = http("POST", f"{base}/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    return status, json.loads(answer)


def test_serve_fused_answers_as_eager_pytorch(rng, tmp_path):
    if not torch.cuda.is_available():  # else the fused blocks would run their own forward: a test of nothing
        assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets it: the kernel runs interpreted"
    eager = load_model("ea_segnet_tiny", pretrained=True).model
    log = tmp_path / "serve.log"
    args = ("--pretrained", "--backend", "torch", "--fused", *SHAPES)
    with running_server({"seg": "ea_segnet_tiny"}, *args, log=log, startup_timeout=180) as (_, base):
        meta = json.loads(http("GET", f"{base}/v2/models/seg")[2])
        config = json.loads(http("GET", f"{base}/v2/models/seg/config")[2])
        answers = []
        for shape in [(1, 3, 40, 48), (2, 3, 64, 32)]:
            x = rng.standard_normal(shape, dtype=np.float32)
            status, answer = _infer(base, "seg", x)
            assert status == 200, answer
            answers.append((x, answer["outputs"]))
        status, refused = _infer(base, "seg", rng.standard_normal((1, 3, 96, 96), dtype=np.float32))
    assert status == 400 and "96" in refused["error"]  # outside the profile: refused, named
    assert meta["platform"] == "effattn_torch-cpu-fused" and meta["parameters"]["max_batch_size"] == 1
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, -1, -1, -1]}]
    assert config["platform"] == "pytorch_libtorch" and config["max_batch_size"] == 0
    for x, outputs in answers:
        [out] = outputs
        assert out["name"] == "logits"
        got = np.asarray(out["data"], np.float32).reshape(out["shape"])
        with torch.inference_mode():
            want = eager(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape
        assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5
    text = log.read_text()
    assert "run their own forward" not in text and "Traceback" not in text  # the kernel ran (fuse() warns if not)


def _refused(argv: list[str], capsys) -> str:
    assert main(["serve", *argv, "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["m.onnx", "--fused"], "--fused is for serving a model source on eager PyTorch: add --backend torch"),
        (
            ["m.onnx", "--checkpoint", "w.pt", "--min", "1x3x8x8"],
            "--checkpoint, --min are for serving a model source on eager PyTorch: add --backend torch",
        ),
        (
            ["dot_product_attention", "--backend", "torch", "--fused"],
            "fuse: nothing to fuse in DotProductAttention",
        ),
        (["seg.onnx", "--backend", "torch"], "seg.onnx is a file: --backend torch serves a model source"),
        (["no_such_model", "--backend", "torch"], "no_such_model"),
        (
            ["a=efficient_attention", "a=ea_segnet_tiny", "--backend", "torch"],
            "two models are named 'a'; name them: NAME=SOURCE",
        ),
        (
            ["efficient_attention", "ea_segnet_tiny", "--backend", "torch", "--checkpoint", "w.pt"],
            "--checkpoint loads one state_dict: serve one model source with it",
        ),
        (
            [
                "seg=ea_segnet_tiny",
                "--backend",
                "torch",
                "--min",
                "1x5x32x32",
                "--opt",
                "1x5x32x32",
                "--max",
                "1x5x32x32",
            ],
            "seg (ea_segnet_tiny) does not run at its smallest shape 1x5x32x32:",
        ),
    ],
)
def test_serve_refuses_with_one_line(argv, message, capsys):
    assert message in _refused(argv, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of --device cuda needs a machine without CUDA")
def test_serve_on_cuda_without_cuda_is_refused(capsys):
    err = _refused(["efficient_attention", "--backend", "torch", "--device", "cuda"], capsys)
    assert "torch backend on cuda asked for, but torch sees no CUDA device" in err
