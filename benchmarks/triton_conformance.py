"""Triton conformance: the same tritonclient calls (http and grpc) against ``effattn serve`` and a real Triton.

Both serve the same exported ``ea_segnet_tiny``: effattn on ONNX Runtime, Triton 2.51 (the
``tritonserver`` the ``nvidia-pytriton`` wheel bundles; Linux x86-64, CPU) through its Python backend
running the same file on ONNX Runtime (``benchmarks/triton_python_backend/model.py``). Each call's status (or error
code), response schema (keys and value types) and, for inference, outputs are compared; statistics are
compared by count after both servers got the same requests. Run from the repository root:

    python benchmarks/triton_conformance.py -o benchmarks/results/triton-conformance.json

First run: downloads the wheel (55 MB) and numpy<2 + onnxruntime (the stub's Python must not see numpy 2:
with it the 2.51 stub answers empty outputs) into ``--cache`` (~/.cache/effattn-triton). The stub's
embedded Python is isolated (it ignores PYTHONPATH) and takes its paths from the first ``python3`` on
PATH, so the server runs with PATH leading to a small venv whose site-packages is that folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import free_port, http, running_server  # noqa: E402

WHEEL = "nvidia-pytriton==0.7.0"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def install_triton(cache: Path) -> Path:
    """The extracted wheel (``cache/wheel``), the stub in place, and ``cache/env``: the stub's Python."""
    wheel_dir, env = cache / "wheel", cache / "env"
    if not (wheel_dir / "pytriton").exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(cache)], check=True)
        zipfile.ZipFile(next(cache.glob("nvidia_pytriton-*.whl"))).extractall(wheel_dir)
    server = wheel_dir / "pytriton" / "tritonserver"
    stub = server / "backends" / "python" / "triton_python_backend_stub"
    shutil.copyfile(server / "python_backend_stubs" / PY / "triton_python_backend_stub", stub)
    for binary in (stub, server / "bin" / "tritonserver"):
        binary.chmod(0o755)
    if not (env / "site" / "numpy").exists():
        import onnxruntime

        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--target",
                str(env / "site"),
                "numpy<2",
                f"onnxruntime=={onnxruntime.__version__}",
            ],
            check=True,
        )
    if not (env / "pyvenv.cfg").exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", str(env / "venv")], check=True)
        site = env / "venv" / "lib" / f"python{PY}" / "site-packages"
        shutil.rmtree(site)
        site.symlink_to(env / "site")
        (env / "pyvenv.cfg").write_text("marker: set up\n")
    return wheel_dir


def export_seg(folder: Path) -> Path:
    """The trained ``ea_segnet_tiny`` at its default profile, exported by the CLI in a process of its own."""
    onnx = folder / "seg.onnx"
    subprocess.run(
        [sys.executable, "-m", "effattn", "export", "ea_segnet_tiny", "--pretrained", "-o", str(onnx)],
        check=True,
        stdout=subprocess.DEVNULL,
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
    )
    return onnx


def write_repository(onnx: Path, folder: Path, name: str, max_batch: int, threads: int = 1) -> None:
    """A Python-backend model: effattn's config for the file (one source), backend python, CPU."""
    from effattn.runtime import load
    from effattn.serving.repository import served_config, to_pbtxt

    with load(onnx, device="cpu", threads=1) as runner:
        config = served_config(name, runner, max_batch, 2000, 1)
    del config["platform"]
    config = {"name": name, "backend": "python", **{k: v for k, v in config.items() if k != "name"}}
    config["parameters"] = {"threads": {"string_value": str(threads)}}
    (folder / name / "1").mkdir(parents=True)
    shutil.copyfile(onnx, folder / name / "1" / "model.onnx")
    shutil.copyfile(ROOT / "benchmarks" / "triton_python_backend" / "model.py", folder / name / "1" / "model.py")
    (folder / name / "config.pbtxt").write_text(to_pbtxt(config))


def start_triton(wheel_dir: Path, cache: Path, repository: Path, log: Path) -> tuple[subprocess.Popen, int, int]:
    server = wheel_dir / "pytriton" / "tritonserver"
    http_port, grpc_port = free_port(), free_port()
    env = os.environ | {
        "LD_LIBRARY_PATH": str(wheel_dir / "nvidia_pytriton.libs"),
        "PATH": f"{cache / 'env' / 'venv' / 'bin'}:{os.environ['PATH']}",
    }
    with open(log, "w") as out:  # the server holds its own descriptor; ours closes once it has started
        process = subprocess.Popen(
            [
                str(server / "bin" / "tritonserver"),
                "--model-repository",
                str(repository),
                "--backend-directory",
                str(server / "backends"),
                "--http-port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
                "--metrics-port",
                str(free_port()),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if http("GET", f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1)[0] == 200:
                return process, http_port, grpc_port
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"tritonserver was not ready within 120 s: {log.read_text()[-2000:]}")


def schema(value):
    """Keys and value types, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return {k: schema(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [schema(value[0])] if value else []
    return type(value).__name__


def outcome(call, *args) -> dict:
    from tritonclient.utils import InferenceServerException

    try:
        result = call(*args)
    except InferenceServerException as e:
        return {"status": str(e.status()), "error": e.message()[:200]}
    if hasattr(result, "as_numpy"):
        return {"status": "ok", "outputs": {"logits": result.as_numpy("logits")}}
    return {"status": "ok", "value": result}


def calls(image: np.ndarray, kind: str) -> dict:
    """name -> fn(client) of the tritonclient calls compared, in order (statistics last)."""
    import tritonclient.grpc as grpc_client
    import tritonclient.http as http_client

    module = http_client if kind == "http" else grpc_client
    grpc = {"as_json": True} if kind == "grpc" else {}

    def infer(x, binary=True, **kw):
        def run(c):
            tensor = module.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, **({"binary_data": binary} if kind == "http" else {}))
            return c.infer("seg", [tensor], **kw)

        return run

    odd = np.ascontiguousarray(np.repeat(image, 3, axis=0)[:, :, :48, :40])
    table = {
        "server_live": lambda c: c.is_server_live(),
        "model_ready": lambda c: c.is_model_ready("seg"),
        "model_ready(nope)": lambda c: c.is_model_ready("nope"),
        "get_server_metadata": lambda c: c.get_server_metadata(**grpc),
        "get_model_metadata": lambda c: c.get_model_metadata("seg", **grpc),
        "get_model_config": lambda c: c.get_model_config("seg", **grpc),
        "get_model_config(version 2)": lambda c: c.get_model_config("seg", "2"),
        "get_model_config(nope)": lambda c: c.get_model_config("nope"),
        "infer batch 1": infer(image),
        "infer batch 2": infer(np.repeat(image, 2, axis=0)),
        "infer odd size 3x3x48x40": infer(odd),
    }
    if kind == "http":
        table |= {
            "infer json": infer(image, binary=False),
            "infer gzip request": infer(image, request_compression_algorithm="gzip"),
            "infer gzip response": infer(image, response_compression_algorithm="gzip"),
        }
    table |= {
        "infer FP64 (wrong datatype)": lambda c: c.infer("seg", [_fp64(module)]),
        "get_model_repository_index": lambda c: c.get_model_repository_index(**grpc),
        "load_model": lambda c: c.load_model("seg"),
        "unload_model": lambda c: c.unload_model("seg"),
        "get_system_shared_memory_status": lambda c: c.get_system_shared_memory_status(**grpc),
        "get_inference_statistics(nope)": lambda c: c.get_inference_statistics("nope"),
        "get_inference_statistics": lambda c: c.get_inference_statistics("seg", **grpc),
    }
    return table


def _fp64(module):
    tensor = module.InferInput("input", [1, 3, 64, 64], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.float64))
    return tensor


#: Differences docs/serving.md lists ("Checked against a real Triton"): (call, what differs).
DOCUMENTED = {
    "get_server_metadata": "name/version/extensions: effattn lists only the extensions it implements",
    "get_model_metadata": "effattn adds each input's profile (min/opt/max) as parameters; platform names differ",
    "get_model_config": "effattn returns the config as written (no Triton defaults filled in); platform vs backend",
    "get_inference_statistics": "durations differ; counts are compared",
}


#: Route answers that differ from Triton's on purpose (listed in docs/serving.md).
BY_DESIGN = {
    "POST /v2/models/seg/infer": "malformed JSON is the client's fault: 400 (Triton: 500)",
    "GET /v2/trace/setting": "tracing is not implemented: 400 with a JSON error (Triton 2.51: 200, on)",
    "GET /v2/logging": "log settings are not implemented: 400 with a JSON error (Triton 2.51: 200, on)",
}


def compare(name: str, triton: dict, effattn: dict) -> dict:
    row = {"call": name, "triton": triton["status"], "effattn": effattn["status"]}
    same = triton["status"] == effattn["status"]
    if same and "outputs" in triton:
        a, b = triton["outputs"]["logits"], effattn["outputs"]["logits"]
        row["max_abs_diff"] = float(np.max(np.abs(a - b))) if a.shape == b.shape else f"shapes {a.shape} {b.shape}"
        same = a.shape == b.shape and row["max_abs_diff"] <= 1e-4
    elif same and "value" in triton:
        tv, ev = triton["value"], effattn["value"]
        if name == "get_inference_statistics":
            tv, ev = _counts(tv), _counts(ev)
            row["counts"] = {"triton": tv, "effattn": ev}
            same = tv == ev
        elif name in DOCUMENTED:
            row["schema_same"] = schema(tv) == schema(ev)
            row["note"] = DOCUMENTED[name]
        else:
            same = tv == ev
            row["values"] = {"triton": tv, "effattn": ev} if not same else tv
    if not same:
        row["errors"] = {"triton": triton.get("error"), "effattn": effattn.get("error")}
    row["match"] = same
    return row


def _counts(stats: dict) -> dict:
    s = stats["model_stats"][0]
    count = {k: int(v.get("count", 0)) for k, v in s["inference_stats"].items()}
    batches = {str(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in s.get("batch_stats", [])}
    return {
        "inference_count": int(s.get("inference_count", 0)),
        "execution_count": int(s.get("execution_count", 0)),
        **count,
        "batch_stats": batches,
    }


def raw_routes(base: str) -> list[tuple[str, str, bytes | None]]:
    return [
        ("GET", "/nowhere", None),
        ("GET", "/v2/models/seg/infer", None),
        ("DELETE", "/v2/models/seg", None),
        ("GET", "/v2/repository/index", None),
        ("POST", "/v2/models/seg/infer", b"{not json"),
        ("GET", "/v2/models/nope/stats", None),
        ("GET", "/v2/trace/setting", None),
        ("GET", "/v2/logging", None),
        ("POST", "/v2/systemsharedmemory/region/r/register", b"{}"),
    ]


def raw(base: str, method: str, path: str, body: bytes | None) -> dict:
    code, _, content = http(method, base + path, body)
    try:
        error = json.loads(content).get("error") if content else None
    except (ValueError, AttributeError):
        error = None
    return {"status": code, "json_error": error is not None}


def run(args) -> dict:
    from effattn.bench.benchmark import environment
    from effattn.models import load_model

    wheel_dir = install_triton(args.cache)
    source = load_model("ea_segnet_tiny", pretrained=True)
    image = source.samples(1, 64, 64, __import__("torch").Generator().manual_seed(0)).numpy()
    results = {
        "schema": "effattn.triton-conformance/1",
        "environment": environment(1),
        "command": "python " + " ".join(sys.argv),
        "triton": f"tritonserver 2.51 from {WHEEL}, Python backend "
        "running the ONNX file on ONNX Runtime (benchmarks/triton_python_backend/model.py)",
        "calls": [],
        "routes": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx = export_seg(tmp)  # in a process of its own: here torch.export failed on this model
        write_repository(onnx, tmp / "repo", "seg", 8)
        import tritonclient.grpc as grpc_client
        import tritonclient.http as http_client

        triton, t_http, t_grpc = start_triton(wheel_dir, args.cache, tmp / "repo", tmp / "triton.log")
        grpc_port = free_port()
        try:
            with running_server({"seg": onnx}, "--grpc-port", str(grpc_port)) as (_, base):
                servers = {
                    "triton": (f"127.0.0.1:{t_http}", f"127.0.0.1:{t_grpc}"),
                    "effattn": (base.removeprefix("http://"), f"127.0.0.1:{grpc_port}"),
                }
                for kind, module, i in (("http", http_client, 0), ("grpc", grpc_client, 1)):
                    clients = {s: module.InferenceServerClient(urls[i]) for s, urls in servers.items()}
                    for name, call in calls(image, kind).items():
                        got = {s: outcome(call, c) for s, c in clients.items()}
                        results["calls"].append({"protocol": kind, **compare(name, got["triton"], got["effattn"])})
                for method, path, body in raw_routes(base):
                    got = {s: raw("http://" + urls[0], method, path, body) for s, urls in servers.items()}
                    results["routes"].append(
                        {"route": f"{method} {path}", **got, "match": got["triton"] == got["effattn"]}
                    )
        finally:
            triton.terminate()
            triton.wait(timeout=60)
    for row in results["routes"]:
        if not row["match"] and row["route"] in BY_DESIGN:
            row["by_design"] = BY_DESIGN[row["route"]]
    results["summary"] = {
        "calls": len(results["calls"]),
        "calls_matching": sum(r["match"] for r in results["calls"]),
        "routes": len(results["routes"]),
        "routes_matching": sum(r["match"] for r in results["routes"]),
        "routes_differing_by_design": sum("by_design" in r for r in results["routes"]),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "effattn-triton")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        parser.error("the tritonserver in nvidia-pytriton runs on Linux x86-64 only")
    args.cache.mkdir(parents=True, exist_ok=True)
    results = run(args)
    text = json.dumps(results, indent=1, default=str)
    if args.output:
        args.output.write_text(text + "\n")
    for row in results["calls"] + results["routes"]:
        name = f"{row['protocol']:4} {row['call']}" if "call" in row else f"raw  {row['route']}"
        verdict = "OK  " if row["match"] else "BY DESIGN" if "by_design" in row else "DIFF"
        print(f"{verdict} {name}: triton {row['triton']} / effattn {row['effattn']}")
    print(json.dumps(results["summary"]))


if __name__ == "__main__":
    main()
