"""Bounded load benchmark of ``effattn serve``: requests/s and p50/p99 with and without dynamic batching.

Serves the trained ``ea_segnet_tiny`` (1x3x64x64 images) on ONNX Runtime CPU from a local
subprocess on 127.0.0.1, and drives it with ``tritonclient.http`` from CLIENTS threads for
SECONDS per configuration (the whole run stays under 30 s of load). Run from the repository root:

    python benchmarks/serve_load.py -o benchmarks/results/cpu-serve-load.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import running_server


def load(base: str, clients: int, seconds: float, image: np.ndarray) -> dict:
    import tritonclient.http as http

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        c = http.InferenceServerClient(base.removeprefix("http://"), network_timeout=60)
        tensor = http.InferInput("input", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                c.infer("seg", [tensor])
            except Exception as e:  # a benchmark counts failures instead of stopping
                with lock:
                    errors.append(str(e)[:120])
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def batch_sizes(base: str) -> dict:
    import re
    import urllib.request

    text = urllib.request.urlopen(base + "/metrics").read().decode()
    count = float(re.search(r'effattn_batch_size_count\{model="seg"\} (\S+)', text).group(1))
    total = float(re.search(r'effattn_batch_size_sum\{model="seg"\} (\S+)', text).group(1))
    return {"engine_calls": int(count), "mean_batch": round(total / count, 2) if count else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="load per configuration (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads in the server")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    if 2 * args.seconds > 30:
        parser.error("the benchmark is bounded: 2 x --seconds must be at most 30")

    from effattn.bench.benchmark import environment
    from effattn.export import export_onnx
    from effattn.models import load_model
    from effattn.shapes import ShapeProfile

    source = load_model("ea_segnet_tiny", pretrained=True)
    image = source.samples(1, 64, 64, __import__("torch").Generator().manual_seed(0)).numpy()
    results = {
        "schema": "effattn.serve-load/1",
        "environment": environment(args.threads),
        "command": "python " + " ".join(sys.argv),
        "model": "ea_segnet_tiny 1x3x64x64, onnxruntime cpu",
        "clients": args.clients,
        "seconds": args.seconds,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(
            source, ShapeProfile.single("1x3x64x64", "8x3x64x64", "16x3x64x64"), Path(tmp) / "seg.onnx"
        ).path
        configs = {
            "no batching": ["--max-batch-size", "1", "--max-queue-delay-ms", "0"],
            "dynamic batching (max 16, 2 ms)": ["--max-batch-size", "16", "--max-queue-delay-ms", "2"],
        }
        for label, flags in configs.items():
            with running_server({"seg": path}, *flags, "--threads", str(args.threads), "--max-queue", "256") as (
                _,
                base,
            ):
                run = load(base, args.clients, args.seconds, image)
                run |= batch_sizes(base)
            results["runs"][label] = run
            print(
                f"{label:<34} {run['requests_per_s']:>8.1f} req/s  p50 {run['p50_ms']:>7.2f} ms  "
                f"p99 {run['p99_ms']:>7.2f} ms  mean batch {run['mean_batch']}  errors {run['errors']}"
            )
    a, b = results["runs"].values()
    results["throughput_ratio_batching_vs_none"] = round(b["requests_per_s"] / a["requests_per_s"], 2)
    print(f"dynamic batching: {results['throughput_ratio_batching_vs_none']}x the requests/s")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
