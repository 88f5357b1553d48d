"""FP16/BF16 error of each precision policy, in FP16 arithmetic (tests/fp16_oracle.py) and on ONNX Runtime's CPU.

For an EA block of 32 channels, the zoo block (64) and the trained ea_segnet_tiny: each policy gets its own graph
(``to_fp16``/``to_bf16``), run on fresh random inputs at min/opt/max scaled x1 / x100 / x1000 (and on task images
for the segmenter) against eager FP32; rows give the attention branch's and the output's worst rel-L2 and argmax.

    python benchmarks/fp16_policy_probe.py --draws 2 -o benchmarks/results/cpu-fp16-policy.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from effattn import metadata
from effattn.export import export_onnx, to_bf16, to_fp16
from effattn.models import EfficientAttention, get_entry, load_model
from effattn.runtime import compare, load, random_inputs
from effattn.runtime.torch_runner import TorchRunner
from effattn.shapes import ShapeProfile
from tests.fp16_oracle import Fp16Oracle

POLICIES = {  # name -> (fp32_ops, attention_fp32)
    "all-fp16 (old default)": ((), False),
    "softmax-only": (("Softmax",), False),
    "key/query convs+softmax (new default)": ((), True),
}


def _models() -> dict:
    torch.manual_seed(0)
    return {
        "ea32": (EfficientAttention(32, 32, 2, 32).eval(), ShapeProfile.single("1x32x8x8", "2x32x16x16", "2x32x32x32")),
        "ea64 (zoo)": (
            load_model("efficient_attention"),
            ShapeProfile.single("1x64x16x16", "2x64x64x64", "2x64x160x160"),
        ),
        "ea_segnet_tiny": (load_model("ea_segnet_tiny", pretrained=True), get_entry("ea_segnet_tiny").profile),
    }


def probe(draws: int, precisions: list[str], scales: list[float], ort: bool, models: list[str]) -> dict:
    out: dict = {"cpu": platform.processor() or platform.machine(), "draws": draws, "rows": []}  # lscpu names it
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, (source, profile) in _models().items():
            module = getattr(source, "model", source)
            fp32 = export_onnx(source, profile, Path(tmp) / "m.onnx", force=True).path
            if models and model_name not in models:
                continue
            task = source.task_inputs(profile, seed=1) if hasattr(source, "task_inputs") else []
            for precision in precisions:
                for policy, (ops, attention) in POLICIES.items():
                    if precision == "bf16" and policy == "softmax-only":
                        continue
                    convert = to_fp16 if precision == "fp16" else to_bf16
                    path = convert(
                        fp32, Path(tmp) / f"{precision}.onnx", fp32_ops=ops, attention_fp32=attention, force=True
                    )
                    runners = {"oracle": Fp16Oracle(path)}
                    if precision == "fp16" and model_name != "ea_segnet_tiny":  # onnx's own ops (slow Conv)
                        runners["oracle-onnx-ops"] = Fp16Oracle(path, fp32_accumulation=False)
                    if ort and precision == "fp16":
                        runners["onnxruntime-cpu"] = load(path, device="cpu")
                    residuals = metadata.residuals_of(runners["oracle"].metadata)
                    reference = TorchRunner(module, profile, list(runners["oracle"].outputs))
                    for scale in scales:
                        feeds = [random_inputs(profile, w) for _ in range(draws) for w in ("min", "opt", "max")]
                        feeds = [{k: v * np.float32(scale) for k, v in f.items()} for f in feeds]
                        sets = {"noise": feeds}
                        if task and scale == 1.0:
                            sets["task images"] = task
                        for inputs, fs in sets.items():
                            report = compare(reference, runners, fs, precision=precision, residuals=residuals)
                            for r in report.rows:
                                out["rows"].append(
                                    {
                                        "model": model_name,
                                        "precision": precision,
                                        "policy": policy,
                                        "scale": scale,
                                        "inputs": inputs,
                                        "runner": r.candidate,
                                        "metric": r.metric,
                                        "value": r.value,
                                    }
                                )
                                print(out["rows"][-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=2, help="fresh random feeds per shape and scale")
    parser.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0, 100.0, 1000.0])
    parser.add_argument("--models", nargs="*", default=[], help="a subset of: ea32, 'ea64 (zoo)', ea_segnet_tiny")
    parser.add_argument("--no-ort", action="store_true", help="the oracle only")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    result = probe(args.draws, args.precisions, args.scales, not args.no_ort, args.models)
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
