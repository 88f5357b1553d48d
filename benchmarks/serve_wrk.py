"""``effattn serve`` against its own engine: server requests/s as a fraction of the engine's batched images/s.

The load comes from ``wrk`` (a compiled HTTP load generator, ``apt-get install wrk``) on one thread,
so the client takes little of the CPU the server needs; each request is one 1x3x64x64 image of the
trained ``ea_segnet_tiny`` as binary tensor data (what tritonclient sends), answered as binary. The
engine alone (the same ONNX Runtime runner, same threads, batch ``--batch``) is measured in the same
run, before and after the server runs, and the mean of the two is the reference. Run from the
repository root:

    python benchmarks/serve_wrk.py -o benchmarks/results/cpu-serve-wrk.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import running_server

LUA = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "{header_length}"
"""


def request_files(folder: Path, image: np.ndarray) -> Path:
    """A wrk script posting ``image`` as binary tensor data, asking for binary outputs."""
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(image.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": image.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    (folder / "body.bin").write_bytes(head + image.tobytes())
    script = folder / "post.lua"
    script.write_text(LUA.format(body=folder / "body.bin", header_length=len(head)))
    return script


def engine(path: Path, image: np.ndarray, batch: int, threads: int, seconds: float) -> dict:
    """Images/s and batch latency of the runner alone at ``batch`` images per call."""
    from effattn.runtime import load

    feed = np.repeat(image, batch, axis=0)
    with load(path, device="cpu", threads=threads) as runner:
        for _ in range(5):
            runner.infer(feed)
        times, stop = [], time.monotonic() + seconds
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            runner.infer(feed)
            times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return {
        "images_per_s": round(batch * len(times) / (ms.sum() / 1e3), 1),
        "batch": batch,
        "batch_p50_ms": round(float(np.median(ms)), 2),
        "batch_p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(base: str, script: Path, connections: int, seconds: float) -> dict:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(script),
            base + "/v2/models/seg/infer",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(pct["50"]),
        "p99_ms": _ms(pct["99"]),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else None,
    }


def mean_batch(base: str) -> float | None:
    import urllib.request

    text = urllib.request.urlopen(base + "/metrics").read().decode()
    count = float(re.search(r'effattn_batch_size_count\{model="seg"\} (\S+)', text).group(1))
    total = float(re.search(r'effattn_batch_size_sum\{model="seg"\} (\S+)', text).group(1))
    return round(total / count, 2) if count else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per configuration (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads, server and engine (2)")
    parser.add_argument("--batch", type=int, default=16, help="engine batch and server --max-batch-size (16)")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("needs wrk, a compiled HTTP load generator: apt-get install wrk")

    from effattn.bench.benchmark import environment
    from effattn.export import export_onnx
    from effattn.models import load_model
    from effattn.shapes import ShapeProfile

    source = load_model("ea_segnet_tiny", pretrained=True)
    image = source.samples(1, 64, 64, __import__("torch").Generator().manual_seed(0)).numpy()
    results = {
        "schema": "effattn.serve-wrk/1",
        "environment": environment(args.threads),
        "command": "python " + " ".join(sys.argv),
        "model": "ea_segnet_tiny 1x3x64x64, onnxruntime cpu",
        "load": f"wrk -t1 -c{args.connections} -d{args.seconds:g}s, binary tensor data in and out",
        "load_average_before": os.getloadavg(),
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(
            source,
            ShapeProfile.single("1x3x64x64", f"{args.batch}x3x64x64", f"{args.batch}x3x64x64"),
            Path(tmp) / "seg.onnx",
        ).path
        script = request_files(Path(tmp), image)
        before = engine(path, image, args.batch, args.threads, args.seconds / 2)
        configs = {
            "no batching": ["--max-batch-size", "1", "--max-queue-delay-ms", "0"],
            f"dynamic batching (max {args.batch}, 2 ms)": [
                "--max-batch-size",
                str(args.batch),
                "--max-queue-delay-ms",
                "2",
            ],
        }
        for label, flags in configs.items():
            with running_server({"seg": path}, *flags, "--threads", str(args.threads), "--max-queue", "256") as (
                _,
                base,
            ):
                wrk(base, script, args.connections, 2)  # warm-up
                run = wrk(base, script, args.connections, args.seconds) | {"mean_batch": mean_batch(base)}
            results["runs"][label] = run
        after = engine(path, image, args.batch, args.threads, args.seconds / 2)
    results["load_average_after"] = os.getloadavg()  # other jobs on a shared machine show here
    ref = (before["images_per_s"] + after["images_per_s"]) / 2
    results["engine"] = {"before": before, "after": after, "images_per_s": round(ref, 1)}
    for label, run in results["runs"].items():
        run["fraction_of_engine"] = round(run["requests_per_s"] / ref, 3)
        run["p99_vs_engine_batch_p50"] = round(run["p99_ms"] / before["batch_p50_ms"], 2)
        print(
            f"{label:<32} {run['requests_per_s']:>8.1f} req/s = {run['fraction_of_engine']:.0%} of the engine; "
            f"p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms; mean batch {run['mean_batch']}; "
            f"non-2xx {run['non_2xx']}"
        )
    print(f"engine alone: {ref:.1f} images/s at batch {args.batch} (p50 {before['batch_p50_ms']} ms a batch)")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
