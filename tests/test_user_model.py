"""A user's own network (defined here, not in the zoo) through every command: export, compare, run, bench, serve."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from effattn.cli import main
from tests.harness import http, running_server

NETS = """
from torch import nn
from effattn.models import EfficientAttention


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.attention = EfficientAttention(width, width // 2, 2, width)
        self.head = nn.Conv2d(width, 2, 1)

    def forward(self, x):
        return self.head(self.attention(self.stem(x).relu()))


def build(width: int = 8):
    return Net(width)
"""


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "user_nets.py").write_text(NETS)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        from user_nets import build

        torch.manual_seed(1)
        model = build(width=8).eval()
        torch.save(model.state_dict(), folder / "w.pt")
        save_file(model.state_dict(), str(folder / "w.safetensors"))  # the same weights, the other format
        onnx = folder / "mine.onnx"
        assert (
            main(
                [
                    "export",
                    "user_nets:build",
                    "--arg",
                    "width=8",
                    "--checkpoint",
                    str(folder / "w.pt"),
                    "-o",
                    str(onnx),
                    "--min",
                    "1x3x16x16",
                    "--opt",
                    "1x3x32x32",
                    "--max",
                    "2x3x48x48",
                    "-q",
                ]
            )
            == 0
        )
        yield folder, onnx, model, mp


def test_compare_accepts_the_same_weights_in_another_format(user_model, capsys):
    folder, onnx, _, _ = user_model
    capsys.readouterr()
    assert (
        main(
            [
                "compare",
                str(onnx),
                "user_nets:build",
                "--arg",
                "width=8",
                "--checkpoint",
                str(folder / "w.safetensors"),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and {r["metric"] for r in report["rows"]} >= {"output", "argmax"}


def test_run_at_a_shape_inside_the_profile_matches_eager(user_model, capsys, rng):
    _, onnx, model, _ = user_model
    x = rng.standard_normal((2, 3, 24, 40), dtype=np.float32)
    np.save(onnx.with_name("x.npy"), x)
    out = onnx.with_name("y.npz")
    assert main(["run", str(onnx), "--input", str(onnx.with_name("x.npy")), "--output", str(out), "-q"]) == 0
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = np.load(out)["logits"]
    assert got.shape == (2, 2, 24, 40) and np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5


def test_bench_times_a_user_factory(user_model, capsys):
    capsys.readouterr()
    assert (
        main(
            [
                "bench",
                "--models",
                "user_nets:build",
                "--shape",
                "1x3x16x16",
                "--sizes",
                "16",
                "24",
                "--seconds",
                "0.02",
                "--no-memory",
                "--no-startup",
                "-q",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["model"], r["backend"], r["shape"]) for r in rows] == [
        ("user_nets:build", backend, [1, 3, size, size]) for size in (16, 24) for backend in ("torch", "onnxruntime")
    ]


def test_serve_answers_like_eager(user_model, rng):
    _, onnx, model, _ = user_model
    x = rng.standard_normal((1, 3, 20, 28), dtype=np.float32)
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    ).encode()
    with running_server({"mine": onnx}) as (_, base):
        status, _, answer = http("POST", f"{base}/v2/models/mine/infer", body, {"Content-Type": "application/json"})
    assert status == 200, answer
    output = json.loads(answer)["outputs"][0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = np.asarray(output["data"], np.float32).reshape(output["shape"])
    assert got.shape == want.shape and np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5
