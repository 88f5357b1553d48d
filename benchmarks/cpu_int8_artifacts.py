"""Accuracy of each CPU INT8 artifact on the trained segmenter: effattn's QDQ graph on OpenVINO, NNCF's default
IR (what an OpenVINO user makes) and effattn's NNCF IRs (attention products float; performance and mixed presets),
each on OpenVINO as its bench row runs it (float ops in BF16 where the CPU has it; NNCF's default and the
`-asis` row without the runner's output-resize rewrite), against eager FP32.

    python benchmarks/cpu_int8_artifacts.py -o benchmarks/results/cpu-int8-artifacts-<cpu>.json

Same calibration for all (the zoo's 32 task images, effattn.export.quantize.calibration); held-out task images:
64 at 64 x 64 and 8 at 256 x 256. Speed comes from `effattn bench` (rows openvino-int8, nncf-openvino,
openvino-nncf, openvino-nncf-mixed), interleaved in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from compare_quantizers import task_scores  # the same task scores (run from benchmarks/: the script's folder)

from effattn.bench.benchmark import cpu_flags, environment
from effattn.export import export_onnx, quantize
from effattn.models import load_model

AS_IS = {"resize_as_matmul": False}  # the file as OpenVINO compiles it, without the runner's rewrite
ARTIFACTS = {  # name -> (output file, quantize keywords, load options)
    "effattn QDQ (openvino-int8)": ("seg.int8.onnx", {}, {}),
    "effattn QDQ without the rewrite (openvino-int8-asis)": ("seg.int8.onnx", {}, AS_IS),
    "NNCF default (nncf-openvino)": ("seg.nncf-default.xml", {"preset": "default", "keep_float": "none"}, AS_IS),
    "effattn NNCF, performance (openvino-nncf)": ("seg.nncf.xml", {}, {}),
    "effattn NNCF, mixed (openvino-nncf-mixed)": ("seg.nncf-mixed.xml", {"preset": "mixed"}, {}),
}


def scores(path: Path, model: torch.nn.Module, options: dict) -> dict:
    """Argmax agreement and the worst per-class IoU drop (points) vs eager FP32 on held-out task images, the
    artifact on OpenVINO as the bench row runs it (float ops BF16 where the CPU has it)."""
    return task_scores(path, model, "openvino", options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    source = load_model("ea_segnet_tiny", pretrained=True)
    results = {"environment": {**environment(2, "cpu"), "cpu_flags": cpu_flags(), "load_average": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(source, None, Path(tmp) / "seg.onnx").path
        for name, (file, options, load_options) in ARTIFACTS.items():
            made = quantize(fp32, Path(tmp) / file, force=True, **options)
            results[name] = {
                "quantized": made.quantized,
                "calibration": made.calibration,
                "load_options": load_options,
                **scores(made.path, source.model, load_options),
            }
            print(name, results[name])
    results["environment"]["load_average_end"] = os.getloadavg()
    args.output.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
