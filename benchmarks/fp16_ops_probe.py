"""Which ops should an FP16 graph keep in FP32 on a given backend? Error and speed, measured side by side.

For the EfficientAttention block (the zoo's, 64 channels) at the FP16 test profile, each candidate list
of FP32 ops gets its own FP16 graph; every graph runs on ``--device`` (ONNX Runtime) against eager
PyTorch FP32 on fresh random inputs at min/opt/max, at input scale x1 and x100, and the attention
branch (output - input) error is reported next to the median latency at the max shape. Written for
the GPU check (ONNX Runtime CUDA's FP16 kernels differ from the CPU's); runs on the CPU too.

    python benchmarks/fp16_ops_probe.py --device cuda -o fp16-ops.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from effattn.bench.timing import clock_for, measure_interleaved, timed_call
from effattn.export import export_onnx, to_fp16
from effattn.models import load_model
from effattn.runtime import compare, random_inputs
from effattn.runtime.onnxruntime_runner import OnnxRuntimeRunner
from effattn.runtime.torch_runner import TorchRunner
from effattn.shapes import ShapeProfile

PROFILE = ShapeProfile.single("1x64x16x16", "2x64x64x64", "2x64x160x160")
CANDIDATES = {"none": (), "softmax": ("Softmax",), "softmax+matmul": ("Softmax", "MatMul")}


def probe(device: str, draws: int) -> dict:
    source = load_model("efficient_attention")
    out: dict = {"device": device, "profile": PROFILE.to_json(), "draws": draws, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(source, PROFILE, Path(tmp) / "block.onnx").path
        reference = TorchRunner(source.model, PROFILE, ["output"], device=device)
        runners = {
            name: OnnxRuntimeRunner(to_fp16(fp32, Path(tmp) / f"{name}.onnx", fp32_ops=ops), device=device)
            for name, ops in CANDIDATES.items()
        }
        for name, runner in runners.items():
            for scale in (1.0, 100.0):
                feeds = [
                    {k: v * np.float32(scale) for k, v in random_inputs(PROFILE, w).items()}
                    for _ in range(draws)
                    for w in ("min", "opt", "max")
                ]
                report = compare(reference, runner, feeds, precision="fp16", residuals={"output": "input"})
                rows = {r.metric: r.value for r in report.rows}
                out["rows"].append(
                    {
                        "fp32_ops": name,
                        "scale": scale,
                        "branch_rel_l2": rows["branch"],
                        "output_rel_l2": rows["output"],
                        "passed": report.passed,
                    }
                )
        feed = random_inputs(PROFILE, "max", seed=0)
        calls = {name: timed_call(r, feed, device) for name, r in runners.items()}
        stats = measure_interleaved(calls, min_seconds=1.0, max_seconds=3.0, clock=clock_for(device))
        out["median_ms_at_max"] = {name: s.median_ms for name, s in stats.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--draws", type=int, default=3, help="fresh random feeds per shape and scale")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    result = probe(args.device, args.draws)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
