"""The KServe v2 gRPC front end of ``effattn serve`` (``--grpc-port``): Triton's ``GRPCInferenceService``
(from ``tritonclient[grpc]``) over the same :class:`~.server.Server` as HTTP; only the wire format differs.
Status mapping: docs/serving.md#how-the-server-is-built."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from google.protobuf import json_format

from .. import __version__
from ..errors import BackendError
from .protocol import (
    EXTENSIONS,
    OFF_LOOP_BYTES,
    UNSUPPORTED,
    RequestError,
    check_output,
    datatype_of,
    raw_tensor,
    tensor_header,
    values_tensor,
)
from .server import ServedModel, Server, listen

log = logging.getLogger(__name__)

_TYPED_CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "INT16": "int_contents",
    "INT8": "int_contents",
    "UINT64": "uint64_contents",
    "UINT32": "uint_contents",
    "UINT16": "uint_contents",
    "UINT8": "uint_contents",
    "BOOL": "bool_contents",
}


def require_grpc():
    try:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError:
        raise BackendError(
            "--grpc-port needs grpcio and Triton's gRPC service definitions: pip install 'effattn[grpc]'"
        ) from None
    return grpc, service_pb2, service_pb2_grpc


def decode_grpc_inputs(request, model: ServedModel, max_bytes: int = 2**62, raw=None) -> dict[str, np.ndarray]:
    """Input tensors of a ModelInferRequest: ``raw_input_contents`` (what tritonclient sends; or ``raw``, those
    split off by :func:`parse_infer_request`) or typed contents."""
    feed = {}
    raw = request.raw_input_contents if raw is None else raw
    if raw and len(raw) != len(request.inputs):
        raise RequestError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    for i, tensor in enumerate(request.inputs):
        name, shape = tensor.name, list(tensor.shape)
        dtype, count = tensor_header(name, shape, tensor.datatype, model.runner, max_bytes)
        if name in feed:
            raise RequestError(400, f"input {name!r} is given twice")
        given = [f.name for f, _ in tensor.contents.ListFields()]  # typed contents fields that hold values
        if (raw and given) or len(given) > 1:
            raise RequestError(
                400,
                f"input {name!r} has {' and '.join(given + ['raw_input_contents'] * bool(raw))}; send its values once",
            )
        if raw:
            feed[name] = raw_tensor(name, shape, dtype, count, raw[i])
            continue
        if tensor.datatype not in _TYPED_CONTENTS:
            raise RequestError(
                400, f"input {name!r}: {tensor.datatype} has no typed contents field; send it as raw_input_contents"
            )
        values = getattr(tensor.contents, _TYPED_CONTENTS[tensor.datatype])
        if len(values) != count:
            raise RequestError(400, f"input {name!r}: {len(values)} values for shape {shape} ({count} needed)")
        feed[name] = values_tensor(name, shape, values, dtype, count)
    return feed


_RAW_FIELD = 7  # ModelInferRequest.raw_input_contents (Triton's grpc_service.proto)
_MAX_FIELDS = 65536  # top-level fields of one request (each input, output, parameter and raw content is one)


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value, pos, shift = value | (byte & 0x7F) << shift, pos + 1, shift + 7
        if byte < 0x80:
            return value, pos
    raise RequestError(400, "malformed ModelInferRequest (a truncated or overlong varint)")


def split_raw_contents(data: memoryview) -> tuple[bytes, list[memoryview]]:
    """The serialized request without its ``raw_input_contents``, and those as views of ``data``. Parsing them
    into the message would copy every tensor twice: upb parses bytes into its arena, and each read of a repeated
    bytes field copies again; here the tensors stay in the bytes grpc handed over, which the budget counts."""
    rest, raw, pos, fields = [], [], 0, 0
    while pos < len(data):
        fields += 1
        if fields > _MAX_FIELDS:
            raise RequestError(400, f"a ModelInferRequest may hold at most {_MAX_FIELDS} top-level fields")
        start = pos
        tag, pos = _varint(data, pos)
        kind = tag & 7
        if kind == 0:
            pos = _varint(data, pos)[1]
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
        elif kind == 2:
            length, pos = _varint(data, pos)
            if tag >> 3 == _RAW_FIELD and pos + length <= len(data):
                raw.append(data[pos : pos + length])
                pos += length
                continue
            pos += length
        else:
            raise RequestError(400, f"malformed ModelInferRequest (wire type {kind})")
        if pos > len(data):
            raise RequestError(400, "malformed ModelInferRequest (a field runs past its end)")
        rest.append(data[start:pos])
    return b"".join(rest), raw


def parse_infer_request(pb, data: bytes):
    """(ModelInferRequest without raw contents, the raw contents as views of ``data``), or 400."""
    from google.protobuf.message import DecodeError

    rest, raw = split_raw_contents(memoryview(data))
    try:
        return pb.ModelInferRequest.FromString(rest), raw
    except DecodeError as e:
        raise RequestError(400, f"malformed ModelInferRequest: {e}") from None


def _timeout(request) -> float | None:
    """Triton's per-request ``timeout`` parameter (microseconds) as seconds, if positive."""
    if "timeout" not in request.parameters:
        return None
    value = request.parameters["timeout"].int64_param
    return value / 1e6 if value > 0 else None


def wanted_outputs(request, model: ServedModel) -> list[str]:
    """The outputs the request names (all by default), each known and asked once."""
    seen: set[str] = set()
    for output in request.outputs:
        check_output(output.name, model.runner.outputs, seen, output.parameters)
    return [o.name for o in request.outputs] or list(model.runner.outputs)


def infer_response(pb, request, model: ServedModel, outputs: dict[str, np.ndarray], wanted: list[str]):
    """The ModelInferResponse with the ``wanted`` outputs, as raw contents."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
    for name in wanted:
        value = np.asarray(outputs[name], order="C")  # ascontiguousarray makes a scalar 1-d
        response.outputs.add(name=name, datatype=datatype_of(value.dtype), shape=list(value.shape))
        response.raw_output_contents.append(value.tobytes())
    return response


class OverBudget(RequestError):
    """The byte budget refused a call (503 in the metrics, as over HTTP; RESOURCE_EXHAUSTED over gRPC)."""


class GrpcApi:
    """The GRPCInferenceService methods over ``server``'s models (mixed into the generated servicer class
    by :func:`make_servicer`, so this module imports without grpc)."""

    def __init__(self, server: Server) -> None:
        grpc, self.pb, _ = require_grpc()
        from tritonclient.grpc import model_config_pb2

        self.server, self.json_format, self.model_config_pb2 = server, json_format, model_config_pb2
        self.codes = {
            400: grpc.StatusCode.INVALID_ARGUMENT,
            404: grpc.StatusCode.NOT_FOUND,
            413: grpc.StatusCode.RESOURCE_EXHAUSTED,
            503: grpc.StatusCode.UNAVAILABLE,
            504: grpc.StatusCode.DEADLINE_EXCEEDED,
        }
        self.internal = grpc.StatusCode.INTERNAL

    async def refuse(self, context, status: int, message: str):
        await context.abort(self.codes.get(status, self.internal), message)

    async def answer(self, context, make):
        """``make()``, or its RequestError as the gRPC status Triton gives."""
        try:
            return make()
        except RequestError as e:
            await self.refuse(context, e.status, str(e))

    async def unsupported(self, context, extension: str):
        await self.refuse(context, *UNSUPPORTED[extension])

    async def ServerLive(self, request, context):
        return self.pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return self.pb.ServerReadyResponse(ready=self.server.ready())

    async def ModelReady(self, request, context):
        model = self.server.models.get(request.name)
        return self.pb.ModelReadyResponse(ready=model is not None and self.server.model_ready(model))

    async def ServerMetadata(self, request, context):
        return self.pb.ServerMetadataResponse(name="effattn", version=__version__, extensions=EXTENSIONS)

    async def ModelConfig(self, request, context):
        return await self.answer(
            context,
            lambda: self.pb.ModelConfigResponse(
                config=self.json_format.ParseDict(
                    self.server.model(request.name, request.version).config, self.model_config_pb2.ModelConfig()
                )
            ),
        )

    async def ModelStatistics(self, request, context):
        return await self.answer(
            context,
            lambda: self.json_format.ParseDict(
                self.server.statistics(request.name, request.version), self.pb.ModelStatisticsResponse()
            ),
        )

    async def RepositoryIndex(self, request, context):
        return self.json_format.ParseDict(
            {"models": self.server.index(request.ready)}, self.pb.RepositoryIndexResponse()
        )

    async def RepositoryModelLoad(self, request, context):
        await self.unsupported(context, "model_control")

    RepositoryModelUnload = RepositoryModelLoad

    async def SystemSharedMemoryStatus(self, request, context):
        return self.pb.SystemSharedMemoryStatusResponse()  # no region is ever registered

    async def CudaSharedMemoryStatus(self, request, context):
        return self.pb.CudaSharedMemoryStatusResponse()

    async def SystemSharedMemoryRegister(self, request, context):
        await self.unsupported(context, "shared_memory")

    CudaSharedMemoryRegister = SystemSharedMemoryRegister

    async def SystemSharedMemoryUnregister(self, request, context):
        return self.pb.SystemSharedMemoryUnregisterResponse()  # nothing to unregister

    async def CudaSharedMemoryUnregister(self, request, context):
        return self.pb.CudaSharedMemoryUnregisterResponse()

    async def TraceSetting(self, request, context):
        await self.unsupported(context, "trace")

    async def LogSettings(self, request, context):
        await self.unsupported(context, "logging")

    async def ModelMetadata(self, request, context):
        return await self.answer(
            context, lambda: model_metadata(self.pb, self.server.model(request.name, request.version))
        )

    async def ModelInfer(self, data: bytes, context):
        """One call, as the serialized request (see :func:`start_grpc`). grpc keeps an abort's exception, whose
        traceback holds this frame, in a cycle with the call: ``data`` is dropped first, or each refused request
        stays in memory until the garbage collector runs (docs/decisions.md#serving)."""
        start, call, code = time.perf_counter(), {"model": ""}, None
        try:
            response, status, message = await model_infer(self.pb, self.server, data, call), 200, ""
        except RequestError as e:
            status, message = e.status, str(e)
            code = self.codes[413] if isinstance(e, OverBudget) else None
        except Exception as e:  # an engine failure must not take the server down
            log.exception("inference on %s failed", call["model"])
            status, message = 500, f"inference failed: {type(e).__name__}: {e}"
        del data  # the request's bytes go before the answer is sent (see above)
        self.server.answered(call["model"], status, time.perf_counter() - start)
        if status != 200:
            await context.abort(code or self.codes.get(status, self.internal), message)
        return response


def make_servicer(server: Server):
    """A GRPCInferenceService servicer (Triton's generated base class, :class:`GrpcApi`'s methods)."""
    _, _, pb_grpc = require_grpc()
    servicer = type("Servicer", (GrpcApi, pb_grpc.GRPCInferenceServiceServicer), {})
    return servicer(server)


def model_metadata(pb, model: ServedModel):
    meta = model.metadata()
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
        outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]],
    )


async def model_infer(pb, server: Server, data: bytes, call: dict):
    """One ModelInfer call from its serialized request, counted in the byte budget before it is parsed and until
    it is answered; failures as RequestError. ``call["model"]``: the model it names, once parsed (for metrics)."""
    size = len(data)
    try:
        server.budget.take(size)
    except RequestError as e:  # gRPC's code for a quota: RESOURCE_EXHAUSTED (UNAVAILABLE is a full queue, as Triton)
        raise OverBudget(e.status, str(e)) from None
    try:
        big = size > OFF_LOOP_BYTES  # a big request takes a while to split, parse and convert: off the loop
        request, raw = await asyncio.to_thread(parse_infer_request, pb, data) if big else parse_infer_request(pb, data)
        call["model"] = request.model_name
        model = server.model(request.model_name, request.model_version)
        args = (request, model, server.options.max_request_bytes, raw)
        feed = await asyncio.to_thread(decode_grpc_inputs, *args) if big else decode_grpc_inputs(*args)
        wanted = wanted_outputs(request, model)  # before the model runs: a bad list costs no run
        outputs = await server.infer(model, feed, _timeout(request))
        return infer_response(pb, request, model, outputs, wanted)
    finally:
        server.budget.give(size)


async def start_grpc(server: Server):
    """Start the gRPC server on ``options.host:options.grpc_port``; returns it (``await grpc_server.stop(grace)``).

    Port reuse is off (gRPC turns SO_REUSEPORT on by default, which lets a second server share the port)."""
    grpc, _, pb_grpc = require_grpc()
    options = server.options
    grpc_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", options.max_request_bytes),
            ("grpc.max_send_message_length", options.max_request_bytes),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=options.max_connections,
    )
    add_servicer(grpc, pb_grpc, make_servicer(server), grpc_server)
    try:
        bound = grpc_server.add_insecure_port(f"{options.host}:{options.grpc_port}")
    except RuntimeError:  # newer grpcio raises where older ones returned 0
        bound = 0
    if bound == 0:
        raise BackendError(
            f"cannot listen on gRPC port {options.host}:{options.grpc_port} (is another server running there?)"
        )
    await grpc_server.start()
    return grpc_server


class _Handlers:
    """Stands in for the server while Triton's generated code registers the service's method handlers."""

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, handlers


def add_servicer(grpc, pb_grpc, servicer, grpc_server) -> None:
    """Triton's generated handlers, but ModelInfer's request arrives serialized (no deserializer), so its size is
    counted in the byte budget before it is parsed (:func:`model_infer`), and a refused one is never parsed."""
    table = _Handlers()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, table)
    handlers = dict(table.handlers)
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer, response_serializer=handlers["ModelInfer"].response_serializer
    )
    grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(table.service, handlers),))
    grpc_server.add_registered_method_handlers(table.service, handlers)


def check_grpc_port(host: str, port: int) -> None:
    """Refuse a gRPC port in use now, before models load (the server binds it later, without port reuse)."""
    listen(host, port, "gRPC port").close()
