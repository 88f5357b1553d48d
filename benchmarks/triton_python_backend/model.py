"""Triton Python-backend model: runs ``model.onnx`` (next to this file) on ONNX Runtime, CPU.

The stub's Python must see numpy < 2 (with numpy 2 the 2.51 stub answers empty outputs): start
``tritonserver`` with ``PYTHONPATH`` naming a folder that holds numpy < 2 and onnxruntime (the stub
imports numpy before this file runs). Config parameter ``threads``: ONNX Runtime intra-op threads.
The session is the one ``effattn serve`` opens: full graph optimisation (ONNX Runtime's default) and
idle threads that sleep instead of spinning.
"""

import json
import os


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        import numpy as np
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils

        self.np, self.pb = np, pb_utils
        options = ort.SessionOptions()
        threads = int(config.get("parameters", {}).get("threads", {}).get("string_value", "0"))
        options.intra_op_num_threads = threads
        # as `effattn serve` runs it: idle threads sleep, not spin (the server's own threads need the cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        np, pb = self.np, self.pb
        feeds = [{n: pb.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        sizes = [len(f[self.inputs[0]]) for f in feeds]
        batch = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
        results = self.session.run(self.outputs, batch)
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb.Tensor(n, np.ascontiguousarray(v[start : start + size])) for n, v in zip(self.outputs, results)
            ]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
