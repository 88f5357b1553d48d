"""``effattn serve`` against a real Triton on the same engine and load: requests/s and p99 under ``wrk``.

Both serve the trained ``ea_segnet_tiny`` (ONNX Runtime, CPU, the same threads, dynamic batching up to
8 with 2 ms of queue delay): effattn directly, Triton 2.51 (from the ``nvidia-pytriton`` wheel, set up
as in ``triton_conformance.py``) through its Python backend (``benchmarks/triton_python_backend/model.py``). The load
is ``wrk`` on one thread posting one 1x3x64x64 image as binary tensor data (``serve_wrk.py``'s request),
at each connection count; the servers take turns round by round (the order alternates), so drift on a
shared machine hits both alike. Run from the repository root:

    python benchmarks/triton_wrk.py -o benchmarks/results/cpu-serve-vs-triton.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata as dists
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve_wrk import request_files, wrk
from triton_conformance import WHEEL, export_seg, install_triton, start_triton, write_repository

from tests.harness import running_server


def rounds(bases: dict[str, str], script: Path, connections: list[int], seconds: float, count: int) -> dict:
    """server -> connections -> one wrk result per round; the servers alternate who goes first."""
    runs = {name: {c: [] for c in connections} for name in bases}
    for i in range(count):
        order = list(bases) if i % 2 == 0 else list(reversed(bases))
        for c in connections:
            for name in order:
                runs[name][c].append(wrk(bases[name], script, c, seconds))
    return runs


def lscpu() -> dict:
    """The CPU as ``lscpu`` names it: model, family/model/stepping, cores, hypervisor and every flag."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    keep = (
        "Model name",
        "Vendor ID",
        "CPU family",
        "Model",
        "Stepping",
        "CPU(s)",
        "Thread(s) per core",
        "Hypervisor vendor",
        "L2 cache",
        "L3 cache",
        "Flags",
    )
    return {k: fields[k].strip() for k in keep if k in fields}


def http_parser() -> str:
    """What parses HTTP in ``effattn serve`` here: httptools where it is installed, else h11."""
    try:
        import httptools
    except ImportError:
        return f"h11 {dists.version('h11')}"
    return f"httptools {httptools.__version__}"


def summary(runs: dict) -> dict:
    """Median requests/s and p99 per server and connection count, and effattn ÷ Triton."""
    out = {}
    for c in runs["effattn"]:
        row = {
            name: {
                "requests_per_s": float(np.median([r["requests_per_s"] for r in runs[name][c]])),
                "p99_ms": float(np.median([r["p99_ms"] for r in runs[name][c]])),
            }
            for name in runs
        }
        row["throughput_ratio"] = round(row["effattn"]["requests_per_s"] / row["triton"]["requests_per_s"], 3)
        row["p99_ratio"] = round(row["effattn"]["p99_ms"] / row["triton"]["p99_ms"], 3)
        out[str(c)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seconds", type=float, default=8.0, help="per wrk run (8)")
    parser.add_argument("--rounds", type=int, default=2, help="turns per server and connection count (2)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads in both servers (2)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "effattn-triton")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("needs wrk, a compiled HTTP load generator: apt-get install wrk")
    args.cache.mkdir(parents=True, exist_ok=True)
    wheel_dir = install_triton(args.cache)

    from effattn.bench.benchmark import environment
    from effattn.models import load_model

    image = (
        load_model("ea_segnet_tiny", pretrained=True)
        .samples(1, 64, 64, __import__("torch").Generator().manual_seed(0))
        .numpy()
    )
    results = {
        "schema": "effattn.serve-vs-triton/1",
        "environment": environment(args.threads),
        "command": "python " + " ".join(sys.argv),
        "model": "ea_segnet_tiny 1x3x64x64, onnxruntime cpu",
        "triton": f"tritonserver 2.51 from {WHEEL}, Python backend on ONNX Runtime, max batch 8, 2 ms delay",
        "effattn": f"effattn serve --max-batch-size 8 --max-queue-delay-ms 2 ({http_parser()})",
        "lscpu": lscpu(),
        "load": f"wrk -t1 -d{args.seconds:g}s, binary tensor data in and out, {args.rounds} interleaved rounds",
        "load_average_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx = export_seg(tmp)
        write_repository(onnx, tmp / "repo", "seg", 8, args.threads)
        script = request_files(tmp, image)
        triton, t_http, _ = start_triton(wheel_dir, args.cache, tmp / "repo", tmp / "triton.log")
        try:
            with running_server(
                {"seg": onnx},
                "--max-batch-size",
                "8",
                "--max-queue-delay-ms",
                "2",
                "--threads",
                str(args.threads),
                "--max-queue",
                "256",
            ) as (_, base):
                bases = {"effattn": base, "triton": f"http://127.0.0.1:{t_http}"}
                for b in bases.values():
                    wrk(b, script, max(args.connections), 2)  # warm-up
                results["runs"] = rounds(bases, script, args.connections, args.seconds, args.rounds)
        finally:
            triton.terminate()
            triton.wait(timeout=60)
    results["load_average_after"] = os.getloadavg()
    results["summary"] = summary(results["runs"])
    for c, row in results["summary"].items():
        print(
            f"{c:>3} connections: effattn {row['effattn']['requests_per_s']:.0f} req/s "
            f"p99 {row['effattn']['p99_ms']:.1f} ms | triton {row['triton']['requests_per_s']:.0f} req/s "
            f"p99 {row['triton']['p99_ms']:.1f} ms | "
            f"ratio {row['throughput_ratio']:.2f}x"
        )
    if args.output:
        args.output.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
