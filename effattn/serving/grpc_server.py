"""The KServe v2 gRPC front end of ``effattn serve`` (``--grpc-port``), beside the HTTP one.

Same models, same batchers, same checks and metrics as HTTP (:func:`.serve.run_inference`); only
the wire format differs. The service definition is Triton's ``inference.GRPCInferenceService``,
generated code that ships in ``tritonclient[grpc]``, so ``tritonclient.grpc`` clients work unchanged.
Statuses map as Triton's do: 400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 503 -> UNAVAILABLE,
504 -> DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import numpy as np

from .. import __version__
from ..errors import BackendError
from .http_server import (EXTENSIONS, OFF_LOOP_BYTES, UNSUPPORTED, ByteBudget, Metrics, RequestError, ServedModel,
                    ServeOptions, datatype_of, find_model, listen, model_statistics, repository_index, run_inference,
                    tensor_header)

_TYPED_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
                   "INT32": "int_contents", "INT16": "int_contents", "INT8": "int_contents",
                   "UINT8": "uint_contents", "BOOL": "bool_contents"}


def require_grpc():
    try:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError:
        raise BackendError("--grpc-port needs grpcio and Triton's gRPC service definitions: "
                           "pip install 'tritonclient[grpc]'") from None
    return grpc, service_pb2, service_pb2_grpc


def decode_grpc_inputs(request, model: ServedModel, max_bytes: int = 2**62) -> dict[str, np.ndarray]:
    """Input tensors of a ModelInferRequest: ``raw_input_contents`` (what tritonclient sends) or typed contents."""
    feed = {}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    for i, tensor in enumerate(request.inputs):
        name, shape = tensor.name, list(tensor.shape)
        dtype, count = tensor_header(name, shape, tensor.datatype, model.runner, max_bytes)
        if name in feed:
            raise RequestError(400, f"input {name!r} is given twice")
        if raw:
            if len(raw[i]) != count * dtype.itemsize:
                raise RequestError(400, f"input {name!r}: {len(raw[i])} bytes of data for shape {shape} of "
                                        f"{tensor.datatype} ({count * dtype.itemsize} bytes)")
            array = np.frombuffer(raw[i], dtype)
        else:
            if tensor.datatype not in _TYPED_CONTENTS:
                raise RequestError(400, f"input {name!r}: {tensor.datatype} has no typed contents field; send it "
                                        "as raw_input_contents")
            values = getattr(tensor.contents, _TYPED_CONTENTS[tensor.datatype])
            if len(values) != count:
                raise RequestError(400, f"input {name!r}: {len(values)} values for shape {shape} ({count} needed)")
            array = np.asarray(values, dtype)
        feed[name] = array.reshape(shape)
    return feed


def make_servicer(served: Mapping[str, ServedModel], options: ServeOptions, metrics: Metrics, ready,
                  budget: ByteBudget):
    """A GRPCInferenceService servicer over the served models; ``ready()`` says whether the server is."""
    grpc, pb, pb_grpc = require_grpc()
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    codes = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
             503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}

    def model_of(name: str, version: str = "") -> ServedModel:
        return find_model(served, name, version)

    async def answer(context, make):
        """``make()``, or its RequestError as the gRPC status Triton gives."""
        try:
            return make()
        except RequestError as e:
            await context.abort(codes.get(e.status, grpc.StatusCode.INTERNAL), str(e))

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request, context):
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request, context):
            return pb.ServerReadyResponse(ready=ready())

        async def ModelReady(self, request, context):
            model = served.get(request.name)
            return pb.ModelReadyResponse(ready=model is not None and model.ready and ready())

        async def ServerMetadata(self, request, context):
            return pb.ServerMetadataResponse(name="effattn", version=__version__, extensions=EXTENSIONS)

        async def ModelConfig(self, request, context):
            return await answer(context, lambda: pb.ModelConfigResponse(config=json_format.ParseDict(
                model_of(request.name, request.version).config, model_config_pb2.ModelConfig())))

        async def ModelStatistics(self, request, context):
            return await answer(context, lambda: json_format.ParseDict(
                model_statistics(served, request.name, request.version), pb.ModelStatisticsResponse()))

        async def RepositoryIndex(self, request, context):
            return json_format.ParseDict({"models": repository_index(served, request.ready)},
                                         pb.RepositoryIndexResponse())

        async def RepositoryModelLoad(self, request, context):
            await context.abort(grpc.StatusCode.UNAVAILABLE, UNSUPPORTED["model_control"][1])

        RepositoryModelUnload = RepositoryModelLoad

        async def SystemSharedMemoryStatus(self, request, context):
            return pb.SystemSharedMemoryStatusResponse()  # no region is ever registered

        async def CudaSharedMemoryStatus(self, request, context):
            return pb.CudaSharedMemoryStatusResponse()

        async def SystemSharedMemoryRegister(self, request, context):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNSUPPORTED["shared_memory"][1])

        CudaSharedMemoryRegister = SystemSharedMemoryRegister

        async def SystemSharedMemoryUnregister(self, request, context):
            return pb.SystemSharedMemoryUnregisterResponse()  # nothing to unregister

        async def CudaSharedMemoryUnregister(self, request, context):
            return pb.CudaSharedMemoryUnregisterResponse()

        async def TraceSetting(self, request, context):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNSUPPORTED["trace"][1])

        async def LogSettings(self, request, context):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNSUPPORTED["logging"][1])

        async def ModelMetadata(self, request, context):
            try:
                meta = model_of(request.name, request.version).metadata()
            except RequestError as e:
                await context.abort(codes[e.status], str(e))
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
                outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]])

        async def ModelInfer(self, request, context):
            start, status, held = time.perf_counter(), 200, 0
            try:
                model = model_of(request.model_name, request.model_version)
                size = request.ByteSize()
                budget.take(size)
                held = size
                args = (request, model, options.max_request_bytes)
                feed = await asyncio.to_thread(decode_grpc_inputs, *args) if size > OFF_LOOP_BYTES \
                    else decode_grpc_inputs(*args)  # typed contents of a big request take a while to convert
                timeout = request.parameters["timeout"].int64_param if "timeout" in request.parameters else None
                outputs = await run_inference(model, feed, timeout, options.timeout_s, metrics)
                wanted = [o.name for o in request.outputs] or list(outputs)
                unknown = [n for n in wanted if n not in outputs]
                if unknown:
                    raise RequestError(400, f"unknown outputs {unknown}; the model's outputs are {list(outputs)}")
                response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
                for name in wanted:
                    value = np.ascontiguousarray(outputs[name])
                    response.outputs.add(name=name, datatype=datatype_of(value.dtype), shape=list(value.shape))
                    response.raw_output_contents.append(value.tobytes())
            except RequestError as e:
                status, message = e.status, str(e)
            except Exception as e:  # an engine failure must not take the server down
                status, message = 500, f"inference failed: {type(e).__name__}: {e}"
            finally:
                budget.give(held)
            metrics.answered(served, request.model_name, status, time.perf_counter() - start)
            if status != 200:
                await context.abort(codes.get(status, grpc.StatusCode.INTERNAL), message)
            return response

    return Servicer()


async def start_grpc(served: Mapping[str, ServedModel], options: ServeOptions, metrics: Metrics, ready,
                     budget: ByteBudget):
    """Start the gRPC server on ``options.host:options.grpc_port``; returns it (``await server.stop(grace)``).

    Port reuse is off (gRPC turns SO_REUSEPORT on by default, which lets a second server share the port)."""
    grpc, _, pb_grpc = require_grpc()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", options.max_request_bytes),
                                      ("grpc.max_send_message_length", options.max_request_bytes),
                                      ("grpc.so_reuseport", 0)],
                             maximum_concurrent_rpcs=options.max_connections)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(make_servicer(served, options, metrics, ready, budget), server)
    try:
        bound = server.add_insecure_port(f"{options.host}:{options.grpc_port}")
    except RuntimeError:  # newer grpcio raises where older ones returned 0
        bound = 0
    if bound == 0:
        raise BackendError(f"cannot listen on gRPC port {options.host}:{options.grpc_port} (is another server "
                           "running there?)")
    await server.start()
    return server


def check_grpc_port(host: str, port: int) -> None:
    """Refuse a gRPC port in use now, before models load (the server binds it later, without port reuse)."""
    listen(host, port, "gRPC port").close()
