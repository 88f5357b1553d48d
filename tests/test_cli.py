"""The command line, driven in-process: results on stdout, one-line errors on stderr, exit codes."""

import importlib.util
import json
import re

import numpy as np
import pytest

from effattn.cli import main
from tests.fixtures import two_input_onnx


@pytest.fixture(scope="module")
def seg_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "seg.onnx"
    assert (
        main(
            [
                "export",
                "ea_segnet_tiny",
                "--pretrained",
                "-o",
                str(path),
                "-q",
                "--min",
                "input:1x3x32x32",  # trtexec's named form; the unnamed one below
                "--opt",
                "1x3x64x64",
                "--max",
                "2x3x96x96",
            ]
        )
        == 0
    )
    return path


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    return err[-1]


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("models", "export", "run", "compare", "demo", "bench"):
        assert command in out
    assert "effattn export ea_segnet_tiny --pretrained" in out


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    seg = next(r for r in rows if r["name"] == "ea_segnet_tiny")
    assert seg["pretrained"] and seg["task"] == "segmentation" and seg["params"] > 1000


def test_export_refuses_to_overwrite(seg_onnx, capsys):
    before = seg_onnx.read_bytes()
    assert main(["export", "ea_segnet_tiny", "--pretrained", "-o", str(seg_onnx), "-q"]) == 2
    assert "exists; pass --force to overwrite it" in _error_line(capsys)
    assert seg_onnx.read_bytes() == before


@pytest.mark.parametrize(
    "model,flags,match",
    [
        ("tests.conftest:make_user_model", [], r"no weights to export: give its weights with --checkpoint FILE"),
        ("tests.conftest:make_user_model", ["--pretrained"], r"\(--pretrained is for zoo models\)"),
        ("ea_segnet_tiny", [], r"add --pretrained for its shipped trained weights"),
        ("efficient_attention", [], r"it ships no trained weights"),
        ("ea_segnet_tiny", ["--pretrained", "--random-weights"], r"--random-weights exports untrained weights"),
    ],
)
def test_export_refuses_random_weights_unless_asked(tmp_path, capsys, model, flags, match):
    out = tmp_path / "m.onnx"
    assert main(["export", model, *flags, "-o", str(out), "--min", "1x3x8x8", "--opt", "1x3x8x8", "-q"]) == 2
    line = _error_line(capsys)
    assert re.search(match, line) and "--random-weights" in line, line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_run_with_shape_and_output(seg_onnx, tmp_path, capsys):
    out = tmp_path / "out.npz"
    assert main(["run", str(seg_onnx), "--shape", "2x3x40x72", "--output", str(out), "--json", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backend"] == "onnxruntime-cpu"
    assert summary["outputs"]["logits"]["shape"] == [2, 3, 40, 72]
    assert np.load(out)["logits"].shape == (2, 3, 40, 72)


def test_run_with_input_file(seg_onnx, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 32, 48), np.float32))
    assert main(["run", str(seg_onnx), "--input", str(x)]) == 0
    assert "logits: float32[1x3x32x48]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--shape", "1x3x200x200"], r"input 'input' axis 2 \(height\) is 200; it must be in \[32, 96\]"),
        (["--shape", "1x4x64x64"], r"axis 1 \(channels\) is 4, expected 3"),
        (["--shape", "1xax64"], "cannot read shape '1xax64'"),
        (["--shape", "1x3x64x"], "cannot read shape '1x3x64x'"),  # was read as 1x3x64
    ],
)
def test_run_bad_input_is_one_line(seg_onnx, capsys, argv, match):
    import re

    assert main(["run", str(seg_onnx), *argv]) == 2
    line = _error_line(capsys)
    assert line.startswith("effattn run: error: ") and re.search(match, line), line


def test_run_wrong_dtype_file(seg_onnx, tmp_path, capsys):
    x = tmp_path / "x64.npy"
    np.save(x, np.zeros((1, 3, 32, 32), np.float64))
    assert main(["run", str(seg_onnx), "--input", str(x)]) == 2
    assert "has dtype float64, expected float32" in _error_line(capsys)


def test_unknown_model_and_missing_file_are_one_line(tmp_path, capsys):
    assert main(["export", "nope", "-o", str(tmp_path / "n.onnx")]) == 2
    assert "unknown model 'nope'" in _error_line(capsys)
    assert main(["run", str(tmp_path / "missing.onnx")]) == 2
    assert "does not exist" in _error_line(capsys)


def test_compare_rebuilds_the_reference_from_metadata(seg_onnx, capsys):
    assert main(["compare", str(seg_onnx), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["file"] == str(seg_onnx) and report["backend"].startswith("onnxruntime")
    assert {r["metric"] for r in report["rows"]} == {"output", "argmax"}


def test_compare_saves_its_inputs_and_replays_them(seg_onnx, tmp_path, capsys):
    """--save-inputs writes each feed (min/opt/max and task images) as an .npz that --load-inputs replays to the
    same numbers; --tolerance swaps the limits for another precision's row."""
    saved = tmp_path / "in.npz"
    assert main(["compare", str(seg_onnx), "--save-inputs", str(saved), "--json", "--device", "cpu"]) == 0
    first = json.loads(capsys.readouterr().out)
    files = sorted(tmp_path.glob("in.*.npz"))
    assert len(files) >= 3 and not saved.exists() and {np.load(f)["input"].shape[0] for f in files} <= {1, 2}
    argv = ["compare", str(seg_onnx), "--load-inputs", *map(str, files), "--json", "--device", "cpu"]
    assert main([*argv, "--tolerance", "int8"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["value"] for r in again["rows"]] == [r["value"] for r in first["rows"]]
    assert {r["limit"] for r in again["rows"] if r["metric"] == "output"} == {0.2}
    assert main(["compare", str(seg_onnx), "--save-inputs", str(tmp_path / "in.npz")]) == 2  # in.0.npz exists
    assert "exists; pass --force to overwrite it" in _error_line(capsys)


def test_compare_checks_loaded_inputs_against_the_profile(seg_onnx, tmp_path, capsys):
    np.savez(tmp_path / "big.npz", input=np.zeros((1, 3, 200, 32), np.float32))
    assert main(["compare", str(seg_onnx), "--load-inputs", str(tmp_path / "big.npz")]) == 2
    assert "input 'input' axis 2 (height) is 200; it must be in [32, 96]" in _error_line(capsys)
    np.savez(tmp_path / "named.npz", image=np.zeros((1, 3, 32, 32), np.float32))
    assert main(["compare", str(seg_onnx), "--load-inputs", str(tmp_path / "named.npz")]) == 2
    assert "unknown ['image']" in _error_line(capsys)


def test_compare_refuses_random_weights(tmp_path, capsys):
    path = tmp_path / "rand.onnx"
    assert (
        main(
            [
                "export",
                "efficient_attention",
                "--random-weights",
                "-o",
                str(path),
                "-q",
                "--max",
                "2x64x32x32",
                "--opt",
                "1x64x16x16",
                "--min",
                "1x64x8x8",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["compare", str(path)]) == 2
    assert "exported with random weights" in _error_line(capsys)


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seconds", "0.1", "-q"]) == 0
    text = capsys.readouterr().out
    assert "parity vs eager PyTorch" in text and "PASS" in text and "FAIL" not in text
    # the FP16 graph, checked at FP16 tolerance, on whichever backend auto picked (the CPU here)
    assert re.search(r"(onnxruntime-(cpu|cuda)|tensorrt) fp16", text) and "<= 1e-02" in text
    assert (
        "speedup" in text and (out / "ea_segnet_tiny.onnx").is_file() and (out / "ea_segnet_tiny.fp16.onnx").is_file()
    )
    int8 = "openvino-cpu-int8" if importlib.util.find_spec("openvino") else "onnxruntime-cpu int8"
    assert int8 in text and ">= 95.0%" in text and (out / "ea_segnet_tiny.int8.onnx").is_file()
    assert main(["demo", "--out", str(out), "--seconds", "0.1", "-q"]) == 2  # no silent overwrite
    assert "--force" in _error_line(capsys)


def test_bench_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert (
        main(
            [
                "bench",
                "--models",
                "efficient_attention",
                "--sizes",
                "8",
                "16",
                "--seconds",
                "0.02",
                "--no-memory",
                "--no-startup",
                "-q",
                "-o",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["schema"] == "effattn.bench/2"
    rows = data["rows"]
    assert [(r["backend"], r["shape"]) for r in rows] == [
        ("torch", [1, 64, 8, 8]),
        ("onnxruntime", [1, 64, 8, 8]),
        ("torch", [1, 64, 16, 16]),
        ("onnxruntime", [1, 64, 16, 16]),
    ]
    assert rows[0]["speedup_vs_eager"] == 1.0
    assert png.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "vs eager" in printed and f"wrote {png}" in printed
    assert main(["bench", "--models", "efficient_attention", "--sizes", "8", "-q", "-o", str(out)]) == 2
    assert "--force" in _error_line(capsys)


def test_build_onnxruntime_optimised_graph_runs(seg_onnx, tmp_path, capsys):
    out = tmp_path / "seg.ort.onnx"
    assert main(["build", str(seg_onnx), "-o", str(out), "--backend", "onnxruntime", "--precision", "fp32"]) == 0
    assert main(["run", str(out), "--shape", "1x3x40x40", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["outputs"]["logits"]["shape"] == [1, 3, 40, 40]


def test_build_tensorrt_without_it_is_one_line(seg_onnx, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    assert main(["build", str(seg_onnx), "-o", str(tmp_path / "seg.plan")]) == 2
    assert "tensorrt is not installed" in _error_line(capsys)


def test_inspect_onnx_and_refuse_junk(seg_onnx, tmp_path, capsys):
    assert main(["inspect", str(seg_onnx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}]
    assert info["metadata"]["effattn.model"] == "ea_segnet_tiny" and info["ops"]["Conv"] > 0
    junk = tmp_path / "junk.plan"
    junk.write_bytes(b"nope")
    assert main(["inspect", str(junk)]) == 2
    assert "sidecar" in _error_line(capsys)


def _tampered(source, tmp_path, **meta):
    """A copy of ``source`` whose effattn metadata is replaced by ``meta`` (keys without the prefix)."""
    import onnx

    from effattn.export import set_metadata

    proto = onnx.load(str(source))
    set_metadata(proto, {f"effattn.{k}": v for k, v in meta.items()})
    path = tmp_path / "tampered.onnx"
    onnx.save(proto, path)
    return path


def test_compare_never_runs_a_factory_the_file_names(seg_onnx, tmp_path, capsys):
    marker, checkpoint = tmp_path / "ran", tmp_path / "w.pt"
    checkpoint.write_bytes(b"anything")
    from effattn.models import sha256_file

    path = _tampered(
        seg_onnx,
        tmp_path,
        model="os:system",
        model_args=json.dumps({"command": f"touch {marker}"}),
        checkpoint_sha256=sha256_file(checkpoint),
    )
    assert main(["compare", str(path), "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "metadata names the factory 'os:system'" in err and "--trust-metadata" in err
    assert not marker.exists()


@pytest.mark.parametrize(
    "meta,match",
    [
        ({"precision": "int3"}, "effattn.precision is 'int3'"),
        ({"residual": "logits=nope"}, "effattn.residual names"),
        ({"model_args": "{"}, "effattn.model_args is not valid JSON"),
        (
            {
                "profile": json.dumps(
                    {"input": {"min": [1, 3, 32, 32], "opt": [1, 3, 64, 64], "max": [2**20, 3, 2**20, 2**20]}}
                )
            },
            "elements",
        ),
        ({"model_args": '{"a": ' + "9" * 4400 + "}"}, "effattn.model_args is not valid JSON (the number"),
        ({"profile": '{"input": {"min": [' + "9" * 4400 + "]}}"}, "has 4400 digits"),  # past Python's int-string limit
    ],
)
def test_compare_and_run_tampered_metadata_is_one_line(seg_onnx, tmp_path, capsys, meta, match):
    path = _tampered(seg_onnx, tmp_path, **meta)
    for command in (["compare", str(path)], ["run", str(path)]):
        code = main(command)
        if command[0] == "run" and "profile" not in meta and "precision" not in meta:
            assert code == 0  # run reads the profile, and checks the precision against the graph
            continue
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and match in err, err


def test_run_output_never_overwrites_whatever_the_suffix(seg_onnx, tmp_path, capsys):
    (tmp_path / "out.npz").write_bytes(b"the user's file")
    (tmp_path / "taken").write_bytes(b"another file")
    assert main(["run", str(seg_onnx), "--output", str(tmp_path / "out"), "-q"]) == 0  # writes "out", exactly
    assert np.load(tmp_path / "out")["logits"].shape[1] == 3
    assert (tmp_path / "out.npz").read_bytes() == b"the user's file"
    assert main(["run", str(seg_onnx), "--output", str(tmp_path / "taken"), "-q"]) == 2
    assert "exists; pass --force" in _error_line(capsys) and (tmp_path / "taken").read_bytes() == b"another file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.npz", "taken"]


def _npy_header(shape) -> bytes:
    import io

    from numpy.lib import format as npy

    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_run_input_files_that_lie_are_one_line(seg_onnx, tmp_path, capsys):
    import zipfile

    with zipfile.ZipFile(tmp_path / "truncated.npz", "w") as z:  # the header promises 49152 bytes, 10 follow
        z.writestr("input.npy", _npy_header((1, 3, 64, 64)) + b"\0" * 10)
    (tmp_path / "huge.npy").write_bytes(_npy_header((10**6, 3, 10**6, 10**6)) + b"\0" * 64)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04junk")
    for name in ("truncated.npz", "huge.npy", "junk.npz"):
        assert main(["run", str(seg_onnx), "--input", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"cannot read {tmp_path / name} as .npy/.npz" in err, err


def test_paths_that_cannot_be_written_and_bad_seeds_are_refused(seg_onnx, tmp_path, capsys):
    (tmp_path / "a-file").write_text("in the way")
    for argv in (
        ["triton", str(seg_onnx), "--repository", str(tmp_path / "a-file")],
        ["run", str(seg_onnx), "--output", str(tmp_path / "a-file" / "out.npz")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "a-file" in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as e:
        main(["run", str(seg_onnx), "--seed", "-1"])
    assert e.value.code == 2 and "--seed: expected an integer from 0 to" in capsys.readouterr().err


def test_compare_runs_a_user_factory_only_when_named_or_trusted(tmp_path, capsys):
    from safetensors.torch import save_file

    from tests.conftest import make_user_model

    checkpoint, path = tmp_path / "user.safetensors", tmp_path / "user.onnx"
    save_file(make_user_model(channels=4).state_dict(), checkpoint)
    assert (
        main(
            [
                "export",
                "tests.conftest:make_user_model",
                "--arg",
                "channels=4",
                "--checkpoint",
                str(checkpoint),
                "-o",
                str(path),
                "-q",
                "--min",
                "1x3x8x8",
                "--opt",
                "1x3x8x8",
                "--max",
                "2x3x8x8",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["compare", str(path), "--checkpoint", str(checkpoint)]) == 2
    assert "names the factory 'tests.conftest:make_user_model'" in _error_line(capsys)
    for named in (["tests.conftest:make_user_model"], ["--trust-metadata"]):
        assert main(["compare", str(path), *named, "--checkpoint", str(checkpoint), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["passed"]


def test_build_onnxruntime_writes_through_a_hidden_file(seg_onnx, tmp_path, monkeypatch, capsys):
    """ONNX Runtime writes the optimised graph where it is told: into a hidden file, renamed once whole."""
    import effattn.pipeline as pipeline

    written = []
    real = pipeline.optimize_model
    monkeypatch.setattr(pipeline, "optimize_model", lambda src, out, **kw: written.append(out) or real(src, out, **kw))
    out = tmp_path / "seg.ort.onnx"
    assert main(["build", str(seg_onnx), "-o", str(out), "--backend", "onnxruntime", "--precision", "fp32"]) == 0
    assert written[0].name.startswith(".seg.ort.onnx.") and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.ort.onnx"]


def test_build_onnxruntime_fp16_leaves_only_its_output(seg_onnx, tmp_path, capsys):
    """The FP16 graph an FP32 file goes through is scratch: nothing but the output is left beside it."""
    out = tmp_path / "seg.ort16.onnx"
    assert main(["build", str(seg_onnx), "-o", str(out), "--backend", "onnxruntime", "--precision", "fp16"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.ort16.onnx"]
    assert "optimised fp16 graph" in capsys.readouterr().out


def test_build_onnxruntime_refusals_are_one_line_and_write_nothing(seg_onnx, tmp_path, capsys):
    """BF16 has no ONNX Runtime CPU convolution; INT8 needs a QDQ file: each is said, and nothing is written."""
    for precision, says in (("bf16", "no BF16 convolution"), ("int8", "an INT8 engine needs an INT8 QDQ graph")):
        out = tmp_path / f"seg.{precision}.onnx"
        assert main(["build", str(seg_onnx), "-o", str(out), "--backend", "onnxruntime", "--precision", precision]) == 2
        assert says in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- numbers, files, messages
HOSTILE_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e300", "9" * 4400, "1x", "", "²"]


def _numeric_options():
    """(command, minimal argv, option string, its type) for every option of every subcommand that takes a number,
    read off the parsers themselves, so an option added later is swept too."""
    import argparse

    from effattn import cli

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    numeric = (int, float, getattr(cli, "Number", int))
    found = []
    for command, parser in sub.choices.items():
        argv = [command]
        for action in parser._actions:
            if action.required or (not action.option_strings and action.nargs in (None, "+")):
                argv += [*action.option_strings[:1], "x"]
        found += [
            (command, argv, a.option_strings[-1], a.type)
            for a in parser._actions
            if a.type in numeric or isinstance(a.type, numeric[-1])
        ]
    return found


@pytest.mark.parametrize(
    "command,argv,option,number", _numeric_options(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_numeric_option_refuses_what_is_out_of_range(capsys, command, argv, option, number):
    from effattn.cli import Number, build_parser

    assert isinstance(number, Number), f"{command} {option}: a plain {number} escapes the range check"
    parser = build_parser()
    for text in [*HOSTILE_NUMBERS, str(number.lo), str(number.hi)]:
        try:
            value = getattr(parser.parse_args([*argv, f"{option}={text}"]), option.lstrip("-").replace("-", "_"))
        except SystemExit as e:
            line = capsys.readouterr().err.strip().splitlines()[-1]
            assert e.code == 2 and f"argument {option}: expected {number}, got" in line, line
            continue
        value = value[0] if isinstance(value, list) else value
        assert number.lo <= value <= number.hi, (option, text, value)
        assert text in (str(number.lo), str(number.hi), "0"), f"{option} accepted {text!r}"


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--threads", "-1"],
        ["serve", "m.onnx", "--threads", "0"],
        ["serve", "m.onnx", "--threads", "-1"],
        ["bench", "--seconds", "nan"],
        ["bench", "--seconds", "-1"],
        ["bench", "--max-seconds", "-1"],
        ["serve", "m.onnx", "--max-queue-delay-ms", "1e300"],
    ],
)
def test_the_reported_numbers_are_one_line_at_parse_time(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and f"argument {argv[-2]}: expected" in line and "Traceback" not in line, line


def _tiny_graph(path, nodes, inputs, outputs, initializers=()):
    import onnx
    from onnx import helper

    onnx.save(
        helper.make_model(
            helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
            opset_imports=[helper.make_opsetid("", 18)],
        ),
        path,
    )
    return path


def test_a_backend_failure_while_running_is_one_line_naming_the_model(tmp_path, capsys):
    """ConstantOfShape asked for 2^46 floats: ONNX Runtime's allocation fails inside session.run."""
    from onnx import TensorProto, helper

    path = _tiny_graph(
        tmp_path / "cos.onnx",
        [helper.make_node("ConstantOfShape", ["s"], ["y"])],
        [helper.make_tensor_value_info("s", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    np.save(tmp_path / "s.npy", np.array([2**46]))
    assert main(["run", str(path), "--input", str(tmp_path / "s.npy")]) == 2
    line = _error_line(capsys)
    assert (
        line.startswith(f"effattn run: error: running {path} on onnxruntime-cpu failed: ") and "ConstantOfShape" in line
    )


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_same_http_and_grpc_port_is_refused_before_any_model_loads(monkeypatch, tmp_path, capsys):
    import effattn.cli.commands as commands

    monkeypatch.setattr(
        commands, "served_models", lambda *a: pytest.fail("models loaded before the ports were checked")
    )
    port = _free_port()
    assert main(["serve", str(tmp_path / "m.onnx"), "--port", port, "--grpc-port", port]) == 2
    assert f"--port and --grpc-port are both {port}" in _error_line(capsys)


@pytest.mark.parametrize(
    "argv,says",
    [
        (["serve", "/dev/zero"], "/dev/zero is a character device, not a regular file; expected an .onnx or .plan"),
        (["serve", "{tmp}"], "{tmp} is a folder, not a regular file; expected an .onnx or .plan"),
        (["run", "{fifo}"], "{fifo} is a FIFO, not a regular file; expected an .onnx file"),  # it hung
        (["compare", "{fifo}"], "{fifo} is a FIFO, not a regular file"),
        (["run", "{seg}", "--input", "/dev/zero"], "/dev/zero is a character device, not a regular file"),
        (
            ["run", "{seg}", "--output", "{tmp}", "--force"],
            "{tmp} exists and is a folder; effattn replaces only regular",
        ),
    ],
)
def test_what_a_path_is_is_said_as_it_is(seg_onnx, tmp_path, capsys, argv, says):
    """Not 'does not exist' for a device or a folder, and the user's path, never a hidden temporary name."""
    import os

    os.mkfifo(tmp_path / "pipe.onnx")
    fill = {"tmp": str(tmp_path), "seg": str(seg_onnx), "fifo": str(tmp_path / "pipe.onnx")}
    assert main([a.format(**fill) for a in argv]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"effattn {argv[0]}: error: {says.format(**fill)}"), line
    assert [p.name for p in tmp_path.iterdir()] == ["pipe.onnx"]


def test_the_auto_backend_is_said_only_once_the_file_loaded(seg_onnx, tmp_path, capsys, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="effattn")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert main(["run", str(tmp_path / "empty.onnx")]) == 2
    assert "is empty (0 bytes)" in _error_line(capsys) and "backend auto" not in caplog.text
    assert main(["run", str(seg_onnx)]) == 0 and "backend auto: " in caplog.text


def test_an_unforeseen_fault_is_still_one_line(monkeypatch, capsys):
    import effattn.cli.commands as commands

    def out_of_memory(args):
        raise MemoryError()

    monkeypatch.setattr(commands, "cmd_models", out_of_memory)
    assert main(["models"]) == 1
    assert _error_line(capsys) == "effattn models: error: MemoryError: MemoryError (unexpected; --debug shows where)"
    with pytest.raises(MemoryError):
        main(["models", "--debug"])


def test_serve_checks_every_file_before_the_first_model_loads(seg_onnx, tmp_path, monkeypatch, capsys):
    import effattn.cli.commands as commands

    monkeypatch.setattr(commands, "load", lambda *a, **k: pytest.fail("a model loaded before every file was checked"))
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert main(["serve", str(seg_onnx), str(tmp_path / "empty.onnx"), "--port", _free_port()]) == 2
    assert f"{tmp_path / 'empty.onnx'} is empty (0 bytes)" in _error_line(capsys)


def test_run_takes_named_shapes_for_a_two_input_graph(tmp_path, capsys):
    path = two_input_onnx(tmp_path / "two.onnx")
    assert main(["run", str(path), "--shape", "mask:2x4,image:2x3x8x6", "--json", "-q"]) == 0
    outputs = json.loads(capsys.readouterr().out)["outputs"]
    assert outputs["image_out"]["shape"] == [2, 3, 8, 6] and outputs["mask_out"]["shape"] == [2, 4]
    for shape, message in [
        ("2x3x8x8", "--shape '2x3x8x8': the model has 2 inputs (image, mask); name each"),
        ("image:2x3x8x8", "--shape 'image:2x3x8x8': the model's inputs are image, mask; missing 'mask'"),
        ("image:2x3x8x8,mask:2x4,depth:2x1", "unknown 'depth'"),
        ("image:2x3x8x8,mask:2xx4", "cannot read shape '2xx4'"),
    ]:
        assert main(["run", str(path), "--shape", shape]) == 2
        line = _error_line(capsys)
        assert line.startswith("effattn run: error: --shape ") and message in line


def test_export_named_shape_names_the_models_input(tmp_path, capsys):
    out = tmp_path / "seg.onnx"
    assert main(["export", "ea_segnet_tiny", "-o", str(out), "--min", "image:1x3x32x32", "--random-weights"]) == 2
    assert _error_line(capsys) == (
        "effattn export: error: --min 'image:1x3x32x32': the model's inputs are input; unknown 'image'; missing 'input'"
    )
    assert not out.exists()


def _bench_json(capsys, *argv) -> dict:
    assert main(["bench", *argv, "--seconds", "0.02", "--iterations", "3", "--warmup", "0", "--no-memory", "-q"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_times_files_as_they_are(seg_onnx, tmp_path, capsys):
    data = _bench_json(capsys, str(seg_onnx), "--no-startup", "--json")
    by = {r["backend"]: r for r in data["rows"]}
    expected = ["torch", "onnxruntime", *(["openvino"] if importlib.util.find_spec("openvino") else [])]
    assert list(by) == expected and all(r["model"] == str(seg_onnx) for r in by.values())
    for row in by.values():  # at the file's profile's opt shape, eager rebuilt from the zoo name in its metadata
        assert row["status"] == "ok" and row["shape"] == [1, 3, 64, 64] and row["inputs"] == {"input": [1, 3, 64, 64]}
        assert row["runs"] >= 3 and row["p10_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["mean_ms"] > 0 and row["throughput_per_s"] == round(1e3 / row["median_ms"], 2)
    assert by["torch"]["speedup_vs_eager"] == 1.0 and by["onnxruntime"]["speedup_vs_eager"] > 0
    assert data["environment"]["warmup_ms"] == 0 and data["environment"]["min_iterations"] == 3

    two = two_input_onnx(tmp_path / "two.onnx")
    data = _bench_json(capsys, str(two), "--shapes", "mask:2x4,image:2x3x8x8", "--backends", "onnxruntime", "--json")
    eager, ort = data["rows"]
    assert eager["status"].startswith("skipped: eager PyTorch runs a zoo model the file's metadata names")
    assert ort["status"] == "ok" and ort["inputs"] == {"image": [2, 3, 8, 8], "mask": [2, 4]} and ort["runs"] >= 3
    assert ort["speedup_vs_eager"] is None and ort["throughput_per_s"] == round(2e3 / ort["median_ms"], 2)


def test_bench_file_shapes_errors_are_one_line(tmp_path, capsys):
    two = str(two_input_onnx(tmp_path / "two.onnx"))
    argv = ["bench", two, "--seconds", "0.01", "--no-memory", "--no-startup", "-q"]
    assert main([*argv, "--shapes", "image:2x3x8x8"]) == 2
    assert _error_line(capsys) == (
        "effattn bench: error: --shapes 'image:2x3x8x8': the model's inputs are image, mask; missing 'mask'"
    )
    assert main(argv) == 2
    assert "input image, mask has dynamic axes and the file records no shape profile: give --shapes" in (
        _error_line(capsys)
    )
    assert main(["bench", str(tmp_path / "none.onnx"), "-q"]) == 2
    assert "none.onnx" in _error_line(capsys)
