"""ONNX Runtime's quantize_static (what `effattn quantize` uses) against OpenVINO's NNCF on our FP32 exports,
and `effattn quantize --precision fp8` against NVIDIA ModelOpt's ONNX PTQ in FP8 mode.

    python benchmarks/compare_quantizers.py -o benchmarks/results/cpu-quantizers.json

For each quantizer: the trained ea_segnet_tiny's held-out argmax agreement and IoU drop against eager FP32
(64 task images at 64 x 64 and 8 at 256 x 256, calibrated on 32 task images), whether the graph fits
TensorRT's explicit quantization (signed INT8, zero points 0), quantization time, ea_resnet @ 224 latency
of its graph on ONNX Runtime and OpenVINO (interleaved, same run), and the installed size of what each
quantizer pulls in beyond effattn's own dependencies, and the ea_resnet graph's output error against eager
FP32 on fresh noise. NNCF and ModelOpt are not effattn dependencies: pip install nncf / nvidia-modelopt
(ModelOpt's ONNX extra pins an older onnxruntime-gpu; for this script its wheel, onnx-graphsurgeon,
nvidia-ml-py and lief suffice, e.g. pip install --no-deps --target DIR and PYTHONPATH=DIR).
The FP8 graph is for TensorRT on GPUs with FP8 tensor cores; on the CPU both runtimes emulate its
quantizers, so its task scores are what a GPU engine should reproduce and its CPU times are no speed path.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from effattn.bench.benchmark import cpu_flags, environment
from effattn.bench.timing import measure_interleaved
from effattn.export import export_onnx, qdq_summary, quantize
from effattn.models import load_model
from effattn.models.synthetic import CLASSES, shapes_batch
from effattn.shapes import ShapeProfile


def installed_mib(*dists: str) -> float:
    """Installed size of distributions (their RECORD files), MiB."""
    total = 0
    for name in dists:
        try:
            files = md.distribution(name).files or []
        except md.PackageNotFoundError:  # an optional dependency this install went without
            continue
        for f in files:
            path = f.locate()
            total += path.stat().st_size if path.is_file() else 0
    return round(total / 2**20, 1)


def nncf_quantize(src: Path, out: Path, feeds: list[dict]) -> Path:
    """NNCF's ONNX PTQ with the same choices as effattn's: performance (symmetric) preset, attention in float."""
    import nncf

    model = nncf.quantize(
        onnx.load(src),
        nncf.Dataset(feeds),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(feeds),
        ignored_scope=nncf.IgnoredScope(types=["MatMul", "Softmax"]),
    )
    onnx.save(model, out)
    return out


def task_scores(path: Path, model: torch.nn.Module, runtime: str, options: dict | None = None) -> dict:
    """Argmax agreement and per-class IoU drop (points) vs eager FP32 on held-out task images; ``options`` go to
    ``load`` (default: OpenVINO's float ops in FP32, so the quantizers are what is compared)."""
    from effattn.runtime import load

    g = torch.Generator().manual_seed(1234)
    sets = [shapes_batch(64, 64, 64, g), shapes_batch(8, 256, 256, g)]
    out = {}
    if options is None:
        options = {"precision": "fp32"} if runtime == "openvino" else {}
    with load(path, backend=runtime, **options) as runner:
        for x, y in sets:
            with torch.inference_mode():
                ref = model(x).argmax(1).numpy()
            got = np.concatenate([runner.infer(x[i : i + 8].numpy())["logits"] for i in range(0, len(x), 8)]).argmax(1)
            iou = [
                [
                    ((p == c) & (y.numpy() == c)).sum() / max(((p == c) | (y.numpy() == c)).sum(), 1)
                    for c in range(len(CLASSES))
                ]
                for p in (ref, got)
            ]
            out[f"{x.shape[2]}px"] = {
                "argmax_agreement": round(float((got == ref).mean()), 5),
                "max_iou_drop_points": round(100 * float(max(np.subtract(*iou))), 3),
            }
        out["runner"] = runner.backend
    return out


def properties(path: Path) -> dict:
    s = qdq_summary(onnx.load(path))
    return {
        "precision": s.precision,
        "zero_point_types": sorted(s.zero_point_types),
        "nonzero_zero_points": s.nonzero_zero_points,
        "tensorrt_compatible": s.tensorrt_compatible,
        "quantized_ops": dict(s.quantized),
    }


def modelopt_fp8(src: Path, out: Path, feeds: list[dict]) -> Path:
    """NVIDIA ModelOpt's ONNX PTQ in FP8 mode, max calibration on the CPU, the rest of the graph left FP32 (as
    effattn's FP8 file leaves it; ModelOpt's default would make it FP16)."""
    from modelopt.onnx.quantization import quantize as mo_quantize

    data = np.concatenate([f["input"] for f in feeds])
    shape = "x".join(map(str, feeds[0]["input"].shape))
    mo_quantize(
        str(src),
        quantize_mode="fp8",
        calibration_data={"input": data},
        calibration_method="max",
        calibration_eps=["cpu"],
        output_path=str(out),
        high_precision_dtype="fp32",
        calibration_shapes=f"input:{shape}",
    )
    return out


#: name -> (quantize(src, out, feeds) -> path, what it installs beyond effattn's own dependencies)
QUANTIZERS = {
    "onnxruntime": (lambda src, out, feeds: quantize(src, out, calibration=feeds, force=True).path, ()),
    "onnxruntime fp8": (
        lambda src, out, feeds: quantize(src, out, calibration=feeds, precision="fp8", force=True).path,
        (),
    ),
    "nncf": (
        nncf_quantize,
        (
            "nncf",
            "scipy",
            "scikit-learn",
            "rich",
            "pydot",
            "networkx",
            "joblib",
            "ninja",
            "psutil",
            "tabulate",
            "narwhals",
        ),
    ),
    "modelopt fp8": (modelopt_fp8, ("nvidia-modelopt", "onnx-graphsurgeon", "nvidia-ml-py", "pynvml", "lief")),
}


def output_error(path: Path, model: torch.nn.Module, inputs: list[np.ndarray]) -> float:
    """Largest rel-L2 of the graph's output against eager FP32 over ``inputs`` (ONNX Runtime)."""
    from effattn.runtime import load

    with load(path, backend="onnxruntime") as runner, torch.inference_mode():
        errors = [
            float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
            for x in inputs
            for got, ref in [(next(iter(runner.infer(x).values())), model(torch.from_numpy(x)).numpy())]
        ]
    return round(max(errors), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/effattn-quantizers"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    seg = load_model("ea_segnet_tiny", pretrained=True)
    torch.manual_seed(0)  # ea_resnet has random weights: the same ones every run
    resnet = load_model("ea_resnet")
    seg_onnx = export_onnx(seg, seg.profile, args.work / "seg.onnx", force=True).path
    res_onnx = export_onnx(resnet, ShapeProfile.single("1x3x224x224"), args.work / "resnet.onnx", force=True).path
    g = torch.Generator().manual_seed(0)
    seg_feeds = [{"input": shapes_batch(1, 64, 64, g)[0].numpy()} for _ in range(32)]
    rng = np.random.default_rng(0)
    res_feeds = [{"input": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(8)]
    res_fresh = [rng.standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(4)]
    results: dict = {
        "environment": environment(len(os.sched_getaffinity(0))) | {"cpu_flags": cpu_flags()},
        "quantizers": {},
    }
    timed = {}
    for name, (run, installs) in QUANTIZERS.items():
        slug = name.replace(" ", ".")
        t0 = time.perf_counter()
        try:
            seg_q = run(seg_onnx, args.work / f"seg.{slug}.onnx", seg_feeds)
        except ImportError as e:
            results["quantizers"][name] = {"status": f"not installed ({e.name or e})"}
            continue
        entry: dict = {
            "extra_install_mib": installed_mib(*installs),
            "quantize_seconds_seg_tiny": round(time.perf_counter() - t0, 2),
            "graph": properties(seg_q),
            "task_onnxruntime": task_scores(seg_q, seg.model, "onnxruntime"),
            "task_openvino": task_scores(seg_q, seg.model, "openvino"),
        }
        timed[name] = run(res_onnx, args.work / f"resnet.{slug}.onnx", res_feeds)
        entry["ea_resnet_graph"] = properties(timed[name])
        entry["ea_resnet_output_rel_l2"] = output_error(timed[name], resnet.model, res_fresh)
        results["quantizers"][name] = entry
    results["ea_resnet_224_ms"] = time_graphs(timed, res_feeds[0])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def time_graphs(graphs: dict[str, Path], feed: dict) -> dict:
    """Median ms of each quantizer's ea_resnet graph on ONNX Runtime and OpenVINO, interleaved."""
    from effattn.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from effattn.runtime.openvino_runner import OpenVINORunner

    runners = {}
    for name, path in graphs.items():
        runners[f"{name} graph on onnxruntime"] = OnnxRuntimeRunner(path)
        runners[f"{name} graph on openvino"] = OpenVINORunner(path, precision="fp32")
    stats = measure_interleaved(
        {k: (lambda r=r: r._infer(feed)) for k, r in runners.items()}, min_seconds=3.0, max_seconds=10.0
    )
    return {k: round(v.median_ms, 2) if not isinstance(v, BaseException) else f"error: {v}" for k, v in stats.items()}


if __name__ == "__main__":
    main()
