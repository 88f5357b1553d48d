"""effattn serve against ONNX Runtime: every 200 is ONNX Runtime's answer bit for bit, everything else a 4xx.

Small generated graphs, each a way an output can relate to the batch: elementwise and row-wise (batched),
a Transpose, reductions over each axis, a scalar, broadcasting against a fixed-size input, two inputs
with one dimension name or with two, integer and FP16 I/O. Hypothesis draws the requests (seeded and
derandomized, so CI sees the same examples; a failure prints its example and seed): one request, or
several sent at once over HTTP or gRPC so the batcher stacks them for the models the graph lets it.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from effattn.metadata import PROFILE
from effattn.shapes import InputProfile, ShapeProfile
from tests.harness import free_port, http, running_server

hypothesis = pytest.importorskip("hypothesis", reason="the differential test needs hypothesis (the test extra)")
http_client = pytest.importorskip("tritonclient.http", reason="tests need tritonclient[http] (the test extra)")
grpc_client = pytest.importorskip("tritonclient.grpc", reason="tests need tritonclient[grpc] (the test extra)")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

F32, F16, I32, I8 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT32, TensorProto.INT8
#: name -> (inputs [(name, elem type, shape)], outputs [(name, elem type, shape)], nodes, batched?)
GRAPHS = {
    "rows": (
        [("x", F32, ["n", 4])],
        [("y", F32, ["n", 4]), ("s", F32, ["n"])],
        [helper.make_node("Add", ["x", "x"], ["y"]), helper.make_node("ReduceSum", ["x", "axis1"], ["s"], keepdims=0)],
        True,
    ),
    "transpose": ([("x", F32, ["n", 4])], [("y", F32, [4, "n"])], [helper.make_node("Transpose", ["x"], ["y"])], False),
    "reduce0": (
        [("x", F32, ["n", 4])],
        [("y", F32, [4])],
        [helper.make_node("ReduceSum", ["x", "axis0"], ["y"], keepdims=0)],
        False,
    ),
    "scalar": (
        [("x", F32, ["n", 4])],
        [("y", F32, [])],
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
        False,
    ),
    "broadcast": (
        [("a", F32, ["n", 4]), ("b", F32, [1, 4])],
        [("y", F32, ["n", 4])],
        [helper.make_node("Mul", ["a", "b"], ["y"])],
        False,
    ),
    "shared": (
        [("a", F32, ["n", 4]), ("b", F32, ["n", 4])],
        [("y", F32, ["n", 4]), ("z", F32, ["n", 4])],
        [helper.make_node("Add", ["a", "b"], ["y"]), helper.make_node("Sub", ["a", "b"], ["z"])],
        True,
    ),
    "two_dims": (
        [("a", F32, ["n", 4]), ("b", F32, ["m", 4])],
        [("y", F32, ["n", 4]), ("z", F32, ["m", 4])],
        [helper.make_node("Neg", ["a"], ["y"]), helper.make_node("Abs", ["b"], ["z"])],
        False,
    ),
    "gram": (
        [("x", F32, ["n", "n"])],
        [("y", F32, ["n", "n"])],  # x x^T: a request's rows, every request's columns
        [helper.make_node("Transpose", ["x"], ["t"]), helper.make_node("MatMul", ["x", "t"], ["y"])],
        False,
    ),
    "int32": ([("x", I32, ["n", 4])], [("y", I32, ["n", 4])], [helper.make_node("Add", ["x", "x"], ["y"])], True),
    "int8": (
        [("x", I8, ["n", 4])],
        [("y", I32, ["n", 4]), ("t", I8, [4, "n"])],
        [helper.make_node("Cast", ["x"], ["y"], to=I32), helper.make_node("Transpose", ["x"], ["t"])],
        False,
    ),
    "fp16": (
        [("x", F16, ["n", 4])],
        [("y", F16, ["n", 4])],
        [helper.make_node("Cast", ["x"], ["w"], to=F32), helper.make_node("Cast", ["w"], ["y"], to=F16)],
        True,
    ),
}
_NUMPY = {F32: np.float32, F16: np.float16, I32: np.int32, I8: np.int8}
_KSERVE = {F32: "FP32", F16: "FP16", I32: "INT32", I8: "INT8"}


def _write(folder, name: str) -> str:
    inputs, outputs, nodes, _ = GRAPHS[name]
    axes = [helper.make_tensor(f"axis{i}", TensorProto.INT64, [1], [i]) for i in (0, 1)]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        initializer=axes,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    profile = ShapeProfile(
        tuple(
            InputProfile(
                n,
                *(tuple(d if isinstance(d, int) else size for d in shape) for size in (1, 2, 8)),
                dtype=np.dtype(_NUMPY[kind]).name,
            )
            for n, kind, shape in inputs
        )
    )
    helper.set_model_props(model, {PROFILE: profile.to_json()})
    onnx.checker.check_model(model, full_check=True)
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("differential")
    files = {name: _write(folder, name) for name in GRAPHS}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the server runs (--threads 1): a reduction split over threads adds up
    sessions = {
        name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])  # in another order
        for name, path in files.items()
    }
    grpc_port, log = free_port(), folder / "server.log"
    # a long queue delay: requests sent together meet in one batch even on a loaded machine (a full one goes at once)
    with running_server(
        files, "--max-queue-delay-ms", "100", "--max-batch-size", "8", "--grpc-port", str(grpc_port), log=log
    ) as (_, base):
        yield base, grpc_port, sessions
    assert "Traceback" not in log.read_text()


def _values(kind: int, shape) -> st.SearchStrategy:
    count = int(np.prod(shape))
    dtype = np.dtype(_NUMPY[kind])
    if dtype.kind == "i":
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    else:
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False)
    return st.lists(elements, min_size=count, max_size=count).map(lambda v: np.array(v, dtype).reshape(shape))


@st.composite
def requests(draw, model: str) -> dict[str, np.ndarray]:
    """One request's feed: each dimension name gets one size, except that a drawn few give the inputs that
    share one different sizes (a request the server must refuse)."""
    inputs = GRAPHS[model][0]
    sizes = {}
    feed = {}
    for name, kind, shape in inputs:
        concrete = []
        for d in shape:
            if isinstance(d, str):
                size = sizes.setdefault(d, draw(st.integers(1, 3)))
                if model == "shared" and name == "b" and draw(st.integers(0, 4)) == 0:
                    size = size % 3 + 1  # disagrees with a's n
                concrete.append(size)
            else:
                concrete.append(d)
        feed[name] = draw(_values(kind, concrete))
    return feed


def _http(base: str, model: str, feed: dict[str, np.ndarray], binary: bool):
    client = http_client.InferenceServerClient(base.removeprefix("http://"), network_timeout=120)
    tensors = []
    for name, value in feed.items():
        tensors.append(http_client.InferInput(name, list(value.shape), _kserve(value)))
        tensors[-1].set_data_from_numpy(value, binary_data=binary)
    outputs = [http_client.InferRequestedOutput(o[0], binary_data=binary) for o in GRAPHS[model][1]]
    try:
        result = client.infer(model, tensors, outputs=outputs)
    except InferenceServerException as e:
        return int(e.status() or 0), e.message()
    return 200, {o[0]: result.as_numpy(o[0]) for o in GRAPHS[model][1]}


def _grpc(port: int, model: str, feed: dict[str, np.ndarray], binary: bool):
    client = grpc_client.InferenceServerClient(f"127.0.0.1:{port}")
    tensors = []
    for name, value in feed.items():
        tensors.append(grpc_client.InferInput(name, list(value.shape), _kserve(value)))
        tensors[-1].set_data_from_numpy(value)
    try:
        result = client.infer(model, tensors, client_timeout=120)
    except InferenceServerException as e:
        return {"StatusCode.INVALID_ARGUMENT": 400}.get(e.status(), 500), e.message()
    finally:
        client.close()
    return 200, {o[0]: result.as_numpy(o[0]) for o in GRAPHS[model][1]}


def _kserve(value: np.ndarray) -> str:
    return {np.dtype(v): _KSERVE[k] for k, v in _NUMPY.items()}[value.dtype]


def _disagree(feed: dict[str, np.ndarray]) -> bool:
    return "b" in feed and "a" in feed and feed["a"].shape[0] != feed["b"].shape[0]


@pytest.mark.parametrize("model", sorted(GRAPHS))  # every graph, whatever hypothesis draws
# no shrinking: each example is a round of requests (a batched one waits out the queue delay), so shrinking a
# failure took minutes; the first failing example is printed as drawn
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    data=st.data(),
    transport=st.sampled_from(["http", "grpc"]),
    binary=st.booleans(),
    count=st.sampled_from([1, 1, 3, 6]),
)
def test_every_answer_is_onnx_runtimes_or_a_4xx(served, model, data, transport, binary, count):
    base, grpc_port, sessions = served
    feeds = [data.draw(requests(model), label=f"request {i}") for i in range(count)]

    def send(feed):
        return _http(base, model, feed, binary) if transport == "http" else _grpc(grpc_port, model, feed, binary)

    with ThreadPoolExecutor(count) as pool:  # sent at once: the batcher may stack them
        answers = list(pool.map(send, feeds))
    for feed, (status, got) in zip(feeds, answers):
        if model == "shared" and _disagree(feed):
            assert status == 400 and re.search(r"inputs 'a' and 'b' disagree on dimension 'n'", got), (status, got)
            continue
        assert status == 200, (status, got)
        expected = dict(zip([o.name for o in sessions[model].get_outputs()], sessions[model].run(None, feed)))
        for name, want in expected.items():
            assert got[name].dtype == want.dtype and got[name].shape == want.shape, (name, got[name], want)
            assert got[name].tobytes() == want.tobytes(), (name, got[name], want)


@pytest.mark.parametrize(
    "model,datatype,values,match",
    [
        (
            "int32",
            "INT32",
            [2**40, 2**32 + 1, -1, 3000000000],
            "1099511627776 is out of the range of INT32",
        ),  # was wrapped
        ("int32", "INT32", [1, 2, 3, 2.5], "not a list of INT32 numbers"),
        ("int8", "INT8", [1, 2, 3, 128], "128 is out of the range of INT8"),
        (
            "fp16",
            "FP16",
            [1.0, 2.0, 3.0, 65520.0],
            "65520.0 is out of the range of FP16",
        ),  # rounds to inf; 65504 is max
    ],
)
def test_json_values_outside_the_type_are_refused_never_wrapped(served, model, datatype, values, match):
    base, _, _ = served
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": datatype, "data": values}]}).encode()
    code, _, answer = http("POST", f"{base}/v2/models/{model}/infer", body)
    assert code == 400 and match in json.loads(answer)["error"], answer


def test_grpc_typed_contents_outside_the_type_are_refused_never_wrapped(served):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    _, grpc_port, _ = served
    request = service_pb2.ModelInferRequest(model_name="int8")
    request.inputs.add(name="x", datatype="INT8", shape=[1, 4]).contents.int_contents.extend([1, 2, 3, -129])
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, pytest.raises(grpc.RpcError) as e:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "-129 is out of the range of INT8" in e.value.details()


def _metric(base: str, name: str, labels: str) -> float:
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", http("GET", base + "/metrics")[2].decode(), re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("model", sorted(GRAPHS))
def test_batching_follows_the_graph(served, model):
    """The Triton config says whether a model is batched, from its graph alone; eight one-row requests sent
    together share engine calls only then (a full batch of 8 goes at once), else each runs alone."""
    base, _, _ = served
    batched = GRAPHS[model][3]
    config = http_client.InferenceServerClient(base.removeprefix("http://")).get_model_config(model)
    assert config.get("max_batch_size", 0) == (8 if batched else 0), config
    labels, answered = f'{{model="{model}"}}', f'{{code="200",model="{model}"}}'
    calls, done = _metric(base, "effattn_batch_size_count", labels), _metric(base, "effattn_requests_total", answered)
    feed = {
        name: np.ones([1 if isinstance(d, str) else d for d in shape], _NUMPY[kind])
        for name, kind, shape in GRAPHS[model][0]
    }
    with ThreadPoolExecutor(8) as pool:
        assert [a[0] for a in pool.map(lambda _: _http(base, model, feed, True), range(8))] == [200] * 8
    calls = _metric(base, "effattn_batch_size_count", labels) - calls
    assert _metric(base, "effattn_requests_total", answered) - done == 8
    assert calls < 8 if batched else calls == 8, calls
