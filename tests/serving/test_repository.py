"""effattn triton: every generated config.pbtxt parses into Triton's own ModelConfig protobuf."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from effattn.cli import main
from effattn.errors import ConfigError, ExportError, FileExistsNoForceError, InputError
from effattn.serving.repository import TensorConfig, TritonOptions, model_config, write_repository
from effattn.shapes import ShapeProfile
from tests.fixtures import ONNX_MODELS

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="tests need tritonclient[grpc] (the test extra) for Triton's ModelConfig",
)
from google.protobuf import text_format  # noqa: E402

PROFILE = ONNX_MODELS["ea8"].profile


def parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def onnx_file(onnx_models, tmp_path_factory):
    """The table's ea8 file as block.onnx: a repository and its model are named after the file."""
    path = tmp_path_factory.mktemp("triton") / "block.onnx"
    shutil.copyfile(onnx_models["ea8"].path, path)
    return path


def test_the_validator_rejects_a_typo():
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        parse('name: "m"\nmax_batch_sise: 8\n')


def test_onnx_repository(onnx_file, tmp_path):
    folder = write_repository(onnx_file, tmp_path / "repo", options=TritonOptions(preferred_batch_sizes=[2, 4]))
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    config = parse((folder / "config.pbtxt").read_text())
    assert config.name == "block" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4  # capped by the profile's max batch
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("input", model_config_pb2.TYPE_FP32, [8, -1, -1])
    ]
    assert list(config.output[0].dims) == [8, -1, -1]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU  # auto: an ONNX file, CPU
    warm = config.model_warmup[0]
    assert warm.batch_size == 2 and list(warm.inputs["input"].dims) == [8, 16, 16] and warm.inputs["input"].random_data


def test_trt_accelerator_fp16_and_no_batching(onnx_file, tmp_path):
    """The accelerator caches engines (and timings) per model and builds for the profile's whole range, so a
    restart loads the engine and a new shape inside the range builds nothing; its instances are GPU ones."""
    options = TritonOptions(max_batch_size=0, trt_accelerator=True, fp16=True, instances=2, warmup=False)
    config = parse((write_repository(onnx_file, tmp_path, "seg", options) / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [-1, 8, -1, -1]
    assert not config.HasField("dynamic_batching") and not config.model_warmup
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and dict(accel.parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": "1073741824",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/trt_cache/seg",
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": "/trt_cache/seg",
        "trt_profile_min_shapes": "input:1x8x4x4",
        "trt_profile_opt_shapes": "input:2x8x16x16",
        "trt_profile_max_shapes": "input:4x8x32x32",
    }
    assert PROFILE["input"].min == (1, 8, 4, 4) and PROFILE["input"].max == (4, 8, 32, 32)
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]


def test_plan_config_from_a_sidecar_record():
    inputs = [TensorConfig("input", np.dtype(np.float32), ["batch", 8, -1, -1])]
    outputs = [TensorConfig("output", np.dtype(np.float16), ["batch", 8, -1, -1])]
    config = parse(model_config("block", "tensorrt", inputs, outputs, PROFILE, TritonOptions()))
    assert config.platform == "tensorrt_plan" and config.output[0].data_type == model_config_pb2.TYPE_FP16
    with pytest.raises(InputError, match="runs on the GPU only"):
        model_config("b", "tensorrt", inputs, outputs, PROFILE, TritonOptions(kind="KIND_CPU"))
    with pytest.raises(InputError, match=r"preferred batch size 16 is outside 1\.\.max_batch_size"):
        model_config("b", "onnxruntime", inputs, outputs, PROFILE, TritonOptions(preferred_batch_sizes=[16]))


def test_plan_io_types_from_the_sidecar_are_mapped_or_refused_by_name():
    """A sidecar's TensorRT types map as the TensorRT runner maps them; FP8 (or BF16) was taken as FP32."""
    from types import SimpleNamespace

    from effattn.errors import BackendError
    from effattn.serving.repository import _sidecar_io

    def sidecar(dtype):
        return SimpleNamespace(
            key={"profiles": [PROFILE.to_json()]},
            io=[
                {"name": "input", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, 8, -1, -1]},
                {"name": "output", "mode": "OUTPUT", "dtype": dtype, "shape": [-1, 8, -1, -1]},
            ],
        )

    inputs, outputs, profile = _sidecar_io(sidecar("HALF"))
    assert inputs[0].dtype == np.float32 and outputs[0].dtype == np.float16 and profile == PROFILE
    with pytest.raises(BackendError, match="'output' has TensorRT type FP8, which effattn cannot"):
        _sidecar_io(sidecar("FP8"))
    with pytest.raises(InputError, match="'output' is BF16"):
        _sidecar_io(sidecar("BF16"))


def test_a_plan_is_batched_by_the_axis_names_its_sidecar_recorded(onnx_file):
    """The engine reports -1 for dynamic axes; the builder records the ONNX graph's names beside them
    (graph_axes), and only a plan whose inputs and outputs share the named first axis is batched."""
    from types import SimpleNamespace

    import onnx

    from effattn.engines.tensorrt_build import graph_axes
    from effattn.serving.repository import _max_batch, _sidecar_io

    axes = graph_axes(onnx.load(str(onnx_file)))
    assert axes["input"][0] == axes["output"][0] and isinstance(axes["input"][0], str)

    def max_batch(input_axes, output_axes):
        io = [
            {"name": "input", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, 8, -1, -1], "axes": input_axes},
            {"name": "output", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, 8, -1, -1], "axes": output_axes},
        ]
        inputs, outputs, profile = _sidecar_io(SimpleNamespace(key={"profiles": [PROFILE.to_json()]}, io=io))
        return _max_batch(inputs, outputs, profile, TritonOptions())

    assert max_batch(axes["input"], axes["output"]) == min(8, PROFILE.batch_range[1]) > 0
    assert max_batch(None, None) == 0  # a sidecar from before names were kept: never batched
    assert max_batch(["n", None, "h", "w"], ["w", None, "h", "n"]) == 0  # an output whose first axis is another

    from effattn.runtime.tensorrt_runner import _named  # the TensorRT runner's specs, named the same way

    assert _named(("batch", 8, None, None), ["n", None, "h", None]) == ["n", 8, "h", None]
    assert _named((None, 8), None) == [None, 8] and _named((None, 8), ["n"]) == [
        None,
        8,
    ]  # no names, or a rank mismatch


def test_cli_refuses_to_overwrite_and_names_bad_files(onnx_file, tmp_path, capsys):
    assert main(["triton", str(onnx_file), "--repository", str(tmp_path)]) == 0
    assert "tritonserver --model-repository" in capsys.readouterr().out
    assert main(["triton", str(onnx_file), "--repository", str(tmp_path)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["triton", str(onnx_file), "--repository", str(tmp_path), "--force"]) == 0
    with pytest.raises(InputError, match="no sidecar"):
        (tmp_path / "m.plan").write_bytes(b"plan")
        write_repository(tmp_path / "m.plan", tmp_path / "r")
    with pytest.raises(ExportError, match="is not an ONNX model"):
        (tmp_path / "bad.onnx").write_bytes(b"not onnx")
        write_repository(tmp_path / "bad.onnx", tmp_path / "r")
    with pytest.raises(FileExistsNoForceError):
        write_repository(onnx_file, tmp_path)


def _tree(root):
    """Every path under ``root`` with its bytes (None for folders, the target for links)."""
    import os

    return {
        str(p.relative_to(root)): os.readlink(p) if p.is_symlink() else None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def sandbox(onnx_file, tmp_path):
    """tmp/outside.txt, tmp/elsewhere/, tmp/repo/{block (a model), stray/ (not a model), link -> ../elsewhere}."""
    (tmp_path / "outside.txt").write_text("keep me")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.pbtxt").write_text("someone else's")
    repo = tmp_path / "repo"
    write_repository(onnx_file, repo)
    (repo / "stray").mkdir()
    (repo / "stray" / "notes.txt").write_text("mine")
    (repo / "link").symlink_to(tmp_path / "elsewhere")
    return tmp_path


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "../x",
        "../../x",
        "/tmp/abs",
        "a/b",
        'a"b',
        "a\nb",
        "",
        "-rf",
        ".hidden",
        "a b",
        "x" * 129,
        "stray",
        "link",
    ],
)
def test_triton_names_never_escape_the_model_folder(onnx_file, sandbox, capsys, name):
    before = _tree(sandbox)
    assert main(["triton", str(onnx_file), "--repository", str(sandbox / "repo"), f"--name={name}", "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ("is not allowed" in err or "is not a folder effattn wrote" in err), err
    assert _tree(sandbox) == before


def test_force_replaces_only_the_files_effattn_wrote(onnx_file, sandbox, capsys):
    """A version folder holding a file effattn did not write is refused whole (nothing changes); without it,
    --force replaces that version, and the model folder's other versions and foreign files stay."""
    repo = sandbox / "repo"
    (repo / "block" / "1" / "notes.txt").write_bytes(b"someone's")
    (repo / "block" / "README").write_bytes(b"kept")
    shutil.copytree(repo / "block" / "1", repo / "block" / "7")
    before = _tree(sandbox)
    assert main(["triton", str(onnx_file), "--repository", str(repo), "--force"]) == 2
    assert "holds what effattn did not write there (notes.txt)" in capsys.readouterr().err
    assert _tree(sandbox) == before
    (repo / "block" / "1" / "notes.txt").unlink()
    (repo / "block" / "1" / "model.onnx").write_bytes(b"an older model")
    before = _tree(sandbox)
    assert main(["triton", str(onnx_file), "--repository", str(repo), "--force"]) == 0
    after = _tree(sandbox)
    assert after.pop("repo/block/1/model.onnx") == onnx_file.read_bytes() != before.pop("repo/block/1/model.onnx")
    config = parse(after.pop("repo/block/config.pbtxt").decode())  # the CLI's options (threads, policy) differ
    assert config.name == "block" and config.version_policy.latest.num_versions == 1
    before.pop("repo/block/config.pbtxt")
    assert after == before  # version 7, README, stray/, link, outside.txt: as they were


def test_a_file_named_without_a_usable_name_needs_one(onnx_file, sandbox, capsys):
    hidden = sandbox / "..onnx"  # the name before the first dot is empty: the repository itself, before
    hidden.write_bytes(onnx_file.read_bytes())
    before = _tree(sandbox)
    assert main(["triton", str(hidden), "--repository", str(sandbox / "repo"), "--force"]) == 2
    assert "give a name (--name" in capsys.readouterr().err
    assert _tree(sandbox) == before


def test_tensor_names_from_the_file_are_escaped_in_the_config():
    odd = 'in"put\n} max_batch_size: 99 {\\'
    inputs = [TensorConfig(odd, np.dtype(np.float32), ["batch", 8, -1, -1])]
    outputs = [TensorConfig("out", np.dtype(np.float32), ["batch", 8, -1, -1])]
    profile = ShapeProfile.single("1x8x4x4", "2x8x16x16", "4x8x32x32", name=odd)
    config = parse(model_config("m", "onnxruntime", inputs, outputs, profile, TritonOptions()))
    assert config.input[0].name == odd and config.max_batch_size == 4 and odd in config.model_warmup[0].inputs


@pytest.mark.parametrize("option", [{"max_batch_size": -1}, {"instances": 0}, {"max_queue_delay_us": -5}])
def test_bad_triton_options_are_one_line(option):
    inputs = [TensorConfig("input", np.dtype(np.float32), ["batch", 8, -1, -1])]
    with pytest.raises(ConfigError, match="need max_batch_size >= 0"):
        model_config("m", "onnxruntime", inputs, inputs, PROFILE, TritonOptions(**option))


@pytest.mark.parametrize(
    "options",
    [
        TritonOptions(preferred_batch_sizes=[2, 4]),
        TritonOptions(max_batch_size=0, trt_accelerator=True, fp16=True, kind="KIND_GPU", threads=2),
        TritonOptions(threads=3, streams=2, version_policy="all"),
    ],
)
def test_config_pbtxt_and_config_json_come_from_one_dict(options):
    from google.protobuf import json_format

    from effattn.serving.repository import config_dict, to_pbtxt

    inputs = [TensorConfig("input", np.dtype(np.float32), ["batch", 8, -1, -1])]
    config = config_dict("m", "onnxruntime", inputs, inputs, PROFILE, options)
    assert parse(to_pbtxt(config)) == json_format.ParseDict(config, model_config_pb2.ModelConfig())
    assert to_pbtxt(config) == model_config("m", "onnxruntime", inputs, inputs, PROFILE, options)


def test_every_integer_width_effattn_serve_accepts_has_a_triton_type():
    from effattn.serving.protocol import DATATYPES

    tensors = [TensorConfig(name, np.dtype(dtype), ["batch", 4]) for name, dtype in DATATYPES.items()]
    config = parse(model_config("m", "onnxruntime", tensors, tensors, None, TritonOptions()))
    assert [model_config_pb2.DataType.Name(t.data_type) for t in config.input] == [f"TYPE_{n}" for n in DATATYPES]


def test_an_fp8_file_gets_basic_graph_optimization_only(onnx_models, tmp_path):
    """Triton's ONNX Runtime backend cannot turn off the one rewrite that answers wrongly on FP8 QDQ graphs, so
    their config asks for basic optimizations (level -1), where ONNX Runtime computes them right."""
    from effattn.export import quantize

    fp32 = onnx_models["ea32"].path
    fp8 = quantize(fp32, tmp_path / "wide.fp8.onnx", samples=2, precision="fp8").path
    config = parse((write_repository(fp8, tmp_path / "repo") / "config.pbtxt").read_text())
    assert config.optimization.graph.level == -1
    plain = parse((write_repository(fp32, tmp_path / "repo32") / "config.pbtxt").read_text())
    assert not plain.HasField("optimization")
    both = parse(
        model_config(
            "m",
            "onnxruntime",
            [TensorConfig("x", np.dtype("float32"), ("batch", 4))],
            [TensorConfig("y", np.dtype("float32"), ("batch", 4))],
            None,
            TritonOptions(basic_graph_optimization=True, trt_accelerator=True),
        )
    )
    assert both.optimization.graph.level == -1
    assert both.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"


def _graph_file(path, dims=("n", 4), domain="", opset=18, ir=None, external=None, profile=None):
    """A one-node ONNX file x[dims] -> y written for the hostile cases: a MatMul by weights ``w`` kept in the file
    or in ``external`` (a location relative to it), a custom-domain node, a chosen opset/IR or effattn profile."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    node = (
        helper.make_node("Foo", ["x", "w"], ["y"], domain=domain)
        if domain
        else helper.make_node("MatMul", ["x", "w"], ["y"])
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims))],
        initializer=[w],
    )
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    if ir is not None:
        model.ir_version = ir
    if profile is not None:
        model.metadata_props.add(key="effattn.profile", value=profile)
    if external is not None:
        onnx.external_data_helper.set_external_data(model.graph.initializer[0], external)
        model.graph.initializer[0].data_location = TensorProto.EXTERNAL
        model.graph.initializer[0].ClearField("raw_data")
    onnx.save(model, path)
    return path


def _hostile(tmp_path, case):
    """``case`` -> (an ONNX file under tmp/models, what the refusal must say); tmp/outside.bin is someone's data."""
    models = tmp_path / "models"
    models.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.arange(16, dtype=np.float32).tobytes())
    f = models / "m.onnx"
    ghost = '{"x": {"min": [1, 4], "opt": [1, 4], "max": [2, 4]}, "ghost": {"min": [1], "opt": [1], "max": [1]}}'
    if case == "symlink-out":
        (models / "w.bin").symlink_to(outside)
    cases = {
        "empty": (lambda: f.write_bytes(b""), "is empty (0 bytes)"),
        "custom-op": (lambda: _graph_file(f, domain="my.ops"), "custom domain 'my.ops'"),
        "opset-99": (lambda: _graph_file(f, opset=99), "opset 99 of ai.onnx"),
        "ir-99": (lambda: _graph_file(f, ir=99), "IR version 99"),
        "2^40-dims": (lambda: _graph_file(f, dims=(2**40, 4)), "declared 1099511627776x4"),
        "absolute": (lambda: _graph_file(f, external=str(outside)), "relative to the model's folder"),
        "dotdot": (lambda: _graph_file(f, external="../outside.bin"), "relative to the model's folder"),
        "symlink-out": (lambda: _graph_file(f, external="w.bin"), "leads out of the model's folder"),
        "missing-data": (lambda: _graph_file(f, external="gone.bin"), "gone.bin does not exist"),
        "nul-byte": (lambda: _graph_file(f, external="w\0.bin"), "relative to the model's folder"),
        "short-data": (
            lambda: (models / "w.bin").write_bytes(bytes(8)) and _graph_file(f, external="w.bin"),
            "holds 8 bytes; the tensor needs 64",
        ),
        "ghost-input": (lambda: _graph_file(f, profile=ghost), "names input 'ghost', which the model does not have"),
    }
    make, says = cases[case]
    make()
    return f, says


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "custom-op",
        "opset-99",
        "ir-99",
        "2^40-dims",
        "absolute",
        "dotdot",
        "symlink-out",
        "missing-data",
        "nul-byte",
        "short-data",
        "ghost-input",
    ],
)
def test_triton_refuses_what_run_refuses_and_writes_nothing(tmp_path, capsys, case):
    path, says = _hostile(tmp_path, case)
    for command in (["triton", str(path), "--repository", str(tmp_path / "repo")], ["run", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "repo").exists()


def test_triton_copies_the_external_data_the_model_reads(tmp_path):
    """Only the files the model references, where ONNX Runtime looks for them; the repository's model answers as
    the original does."""
    import onnxruntime as ort

    models = tmp_path / "models"
    (models / "weights").mkdir(parents=True)
    (models / "weights" / "w.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes()[::-1])
    (models / "unrelated.bin").write_bytes(b"not the model's")
    path = _graph_file(models / "m.onnx", external="weights/w.bin")
    folder = write_repository(path, tmp_path / "repo")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "1/.effattn-files.json",
        "1/model.onnx",
        "1/weights/w.bin",
        "config.pbtxt",
    ]
    x = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    got = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert (
        np.array_equal(got, want)
        and (folder / "1" / "weights" / "w.bin").read_bytes() == (models / "weights" / "w.bin").read_bytes()
    )


@pytest.mark.parametrize(
    "args, kind, gpus",
    [
        ([], "KIND_CPU", False),  # an ONNX file runs on the CPU unless asked otherwise
        (["--kind", "gpu"], "KIND_GPU", True),
        (["--trt-accelerator"], "KIND_GPU", True),
        (["--backend", "openvino"], "KIND_CPU", False),
    ],
)
def test_the_instance_kind_is_what_the_model_runs_on_and_the_run_line_matches(
    onnx_file, tmp_path, capsys, args, kind, gpus
):
    assert main(["triton", str(onnx_file), "--repository", str(tmp_path), *args]) == 0
    out = capsys.readouterr().out
    config = parse((tmp_path / "block" / "config.pbtxt").read_text())
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == [kind]
    assert ("--gpus all" in out) == gpus and "tritonserver:26.08-py3 tritonserver --model-repository=/models" in out


@pytest.mark.parametrize(
    "args, says",
    [
        (["--kind", "cpu", "--trt-accelerator"], "the TensorRT accelerator is ONNX Runtime's, on GPU instances"),
        (["--backend", "openvino", "--kind", "gpu"], "OpenVINO backend runs on the CPU only"),
        (["--backend", "openvino", "--trt-accelerator"], "OpenVINO backend runs on the CPU only"),
        (["--fp16"], "--fp16 goes with --trt-accelerator"),
        (["--streams", "2"], "--streams goes with --backend openvino"),
        (["--storage-uri", "s3://b/r"], "--storage-uri goes with --kserve"),
        (["--trt-accelerator", "--trt-cache", "/x; rm -rf /"], "is not an absolute container path"),
    ],
)
def test_a_kind_or_option_the_backend_would_ignore_or_refuse_is_one_line(onnx_file, tmp_path, capsys, args, says):
    assert main(["triton", str(onnx_file), "--repository", str(tmp_path / "repo"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and err.count("\n") == 0
    assert not (tmp_path / "repo").exists()


def test_thread_counts_for_onnxruntime_and_openvino(onnx_file, tmp_path):
    """Thread counts are model-level string parameters: ONNX Runtime's intra/inter_op_thread_count (onnxruntime_backend
    README), OpenVINO's NUM_STREAMS (one per instance by default) and INFERENCE_NUM_THREADS; Triton's OpenVINO backend
    fixes the batch at max_batch_size, so a batched config pads (ENABLE_BATCH_PADDING) or requests under it fail."""
    assert main(["triton", str(onnx_file), "--repository", str(tmp_path), "--threads", "4", "--instances", "2"]) == 0
    ort = parse((tmp_path / "block" / "config.pbtxt").read_text())
    assert {k: v.string_value for k, v in ort.parameters.items()} == {
        "intra_op_thread_count": "4",
        "inter_op_thread_count": "1",
    }
    args = ["triton", str(onnx_file), "--repository", str(tmp_path), "--name", "ov", "--backend", "openvino"]
    assert main([*args, "--instances", "3"]) == 0
    ov = parse((tmp_path / "ov" / "config.pbtxt").read_text())
    assert ov.backend == "openvino" and not ov.platform and ov.default_model_filename == "model.onnx"
    assert (tmp_path / "ov" / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert ov.max_batch_size == 0 and list(ov.input[0].dims) == [-1, 8, -1, -1]  # no padding by default
    assert {k: v.string_value for k, v in ov.parameters.items()} == {"NUM_STREAMS": "3", "INFERENCE_NUM_THREADS": "0"}
    assert main([*args, "--name", "ov4", "--max-batch-size", "4", "--streams", "1", "--threads", "2"]) == 0
    ov4 = parse((tmp_path / "ov4" / "config.pbtxt").read_text())
    assert ov4.max_batch_size == 4 and {k: v.string_value for k, v in ov4.parameters.items()} == {
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": "2",
        "ENABLE_BATCH_PADDING": "YES",
    }


def test_the_profile_heads_the_config_and_is_printed(onnx_file, tmp_path, capsys):
    """Triton checks ranks, fixed sizes and max_batch_size only: the profile's ranges are stated, not enforced."""
    assert main(["triton", str(onnx_file), "--repository", str(tmp_path)]) == 0
    text = (tmp_path / "block" / "config.pbtxt").read_text()
    assert text.startswith("# effattn shape profile (Triton does not check these ranges")
    assert '#   "input": min 1x8x4x4, opt 2x8x16x16, max 4x8x32x32\n' in text and parse(text).max_batch_size == 4
    assert (
        'profile (not checked by Triton): "input": min 1x8x4x4, opt 2x8x16x16, max 4x8x32x32' in capsys.readouterr().out
    )


def test_versions_sit_beside_each_other_under_one_config(onnx_file, onnx_models, tmp_path, capsys):
    repo = tmp_path / "repo"
    triton = ["triton", str(onnx_file), "--repository", str(repo)]
    assert main(triton) == 0
    assert main([*triton, "--version", "3", "--version-policy", "all"]) == 2  # the config would change
    assert "differs from the config for block.onnx" in capsys.readouterr().err
    assert main([*triton, "--version", "3"]) == 0  # same config: no --force needed, version 1 untouched
    assert sorted(p.name for p in (repo / "block").iterdir()) == ["1", "3", "config.pbtxt"]
    assert main([*triton, "--version", "3", "--version-policy", "all", "--force"]) == 0
    config = parse((repo / "block" / "config.pbtxt").read_text())
    assert config.version_policy.HasField("all") and (repo / "block" / "1" / "model.onnx").exists()
    other = tmp_path / "block.onnx"  # another network (32 channels) under the same name
    shutil.copyfile(onnx_models["ea32"].path, other)
    before = _tree(repo)
    assert main(["triton", str(other), "--repository", str(repo), "--version", "4", "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "give it another --name" in err
    assert "serves versions [1, 3] with max_batch_size 4, input 'input' TYPE_FP32 dims [8, -1, -1], output" in err
    assert "block.onnx needs max_batch_size 2, input 'input' TYPE_FP32 dims [32, -1, -1], output" in err
    assert _tree(repo) == before


def test_parse_pbtxt_reads_configs_as_triton_documents_them():
    """The reader the version check uses: list syntax, optional colons, comments, escapes - compared with
    protobuf's own parser on the same text."""
    text = (
        '# a comment\nname: "m" platform:"onnxruntime_onnx"\nmax_batch_size: 8\ninput [\n  { name: "in\\"put"\n'
        "    data_type: TYPE_FP32, dims: [ 3, -1 ] },\n  { name: 'b' data_type: TYPE_INT64 dims: 1 dims: 2 }\n]\n"
        'output { name: "y" data_type: TYPE_FP32 dims: [ -1 ] }\ninstance_group [ { kind: KIND_CPU } ]\n'
    )
    from effattn.serving.repository import _io_signature, parse_pbtxt

    config = parse(text)
    fields = parse_pbtxt(text)
    assert [t["name"] for t in fields["input"]] == [[t.name] for t in config.input] == [['in"put'], ["b"]]
    assert fields["input"][1]["dims"] == ["1", "2"] and fields["instance_group"] == [{"kind": ["KIND_CPU"]}]
    assert _io_signature(text)["input"] == "'in\"put' TYPE_FP32 dims [3, -1]; 'b' TYPE_INT64 dims [1, 2]"
    for bad in ("input {", "name: }", "{ x: 1 }", 'name: "unterminated'):
        with pytest.raises(InputError, match="cannot read protobuf text"):
            parse_pbtxt(bad)
