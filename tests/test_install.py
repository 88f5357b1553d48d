"""What an install brings. Every package effattn imports is declared in pyproject.toml (read from the source's
imports and pyproject itself, so the check cannot rot), and the paths that need no torch or no server stack
really import none: each runs in a subprocess where importing the package raises ImportError, as it does where
the package is not installed."""

import ast
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import packages_distributions
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import rel_l2

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
#: declared, yet imported by no effattn module: each for a reason
NOT_IMPORTED = {
    "onnxscript": "torch.onnx's dynamo exporter imports it",
    "httptools": "uvicorn's HTTP parser in C, used by uvicorn when installed",
    "tensorrt": "imported by a computed name (engines.tensorrt_build.import_tensorrt: tensorrt or tensorrt_rtx)",
    "onnxruntime-gpu": "the gpu extra's flavour of the onnxruntime module",
}
SERVER_STACK = ("starlette", "uvicorn", "prometheus_client", "h11")


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def _declared(extras: bool = True) -> dict[str, str]:
    """Distribution -> where pyproject declares it (``dependencies`` or an extra; the test extra excluded, and
    the self-references of one extra to others)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {_name(r): "dependencies" for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        if extras and extra != "test":
            found.update({_name(r): extra for r in requirements if _name(r) != "effattn"})
    return found


def _imported() -> dict[str, str]:
    """Top-level modules effattn's source imports (at any level, stdlib and effattn left out) -> a file."""
    found = {}
    for path in sorted((ROOT / "src" / "effattn").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for top in {n.partition(".")[0] for n in names} - set(sys.stdlib_module_names) - {"effattn"}:
                found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _distributions(module: str) -> set[str]:
    """The distributions that install ``module`` here (its own name where none is installed, e.g. tensorrt)."""
    return {_name(d) for d in packages_distributions().get(module, [module])}


def test_every_import_is_declared():
    declared = _declared()
    undeclared = {m: where for m, where in _imported().items() if not _distributions(m) & declared.keys()}
    assert undeclared == {}, "imported (module: file) but in no dependency list or extra of pyproject.toml"


def test_every_declared_package_is_imported():
    imported = set().union(*map(_distributions, _imported()))
    assert sorted(_declared().keys() - imported - NOT_IMPORTED.keys()) == []


def test_the_server_stack_is_an_extra():
    core = _declared(extras=False)
    assert [m for m in SERVER_STACK if _distributions(m) & core.keys()] == []


def _blocked(modules, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing any of ``modules`` raises ImportError."""
    blocker = textwrap.dedent(
        f"""
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {set(modules)!r}:
                    raise ImportError(f"{{name}} is blocked by the test", name=name)

        sys.meta_path.insert(0, Blocked())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_runtime_runs_an_onnx_file_without_torch(onnx_models, rng, tmp_path):
    seg = onnx_models["seg_small"]  # the trained segmenter
    x = rng.standard_normal((2, 3, 56, 40)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = f"""
        import numpy as np
        from effattn.runtime import load, onnxruntime_runner, openvino_runner, tensorrt_runner, parity
        from effattn.serving import http_server, grpc_server, repository

        with load({str(seg.path)!r}) as runner:  # auto: ONNX Runtime on this CPU
            np.savez("out.npz", backend=runner.backend, **runner.infer(np.load("x.npy")))
        """
    result = _blocked(["torch"], code, tmp_path)
    assert result.returncode == 0, result.stderr
    out = np.load(tmp_path / "out.npz")
    with torch.no_grad():
        expected = seg.source.model(torch.from_numpy(x)).numpy()
    assert str(out["backend"]) == "onnxruntime-cpu"
    assert rel_l2(expected, out["logits"]) <= 1e-5  # FP32's limit
    assert (expected.argmax(1) == out["logits"].argmax(1)).mean() >= 0.999


def test_cli_runs_without_the_server_stack(tmp_path):
    code = """
        import sys
        from effattn.cli import main

        def call(*argv):
            try:
                code = main(list(argv))
            except SystemExit as e:
                code = e.code
            print(f"exit: {argv[0]} {code}", flush=True)

        call("--help")
        call("export", "efficient_attention", "-o", "ea.onnx", "-q", "--exporter", "torchscript", "--random-weights",
             "--min", "1x64x4x4", "--opt", "1x64x8x8", "--max", "2x64x8x8")
        call("run", "ea.onnx", "--shape", "2x64x6x6", "--output", "out.npz")
        call("triton", "ea.onnx", "--repository", "models")
        call("serve", "ea.onnx")
        """
    result = _blocked(SERVER_STACK, code, tmp_path)
    codes = [line.removeprefix("exit: ") for line in result.stdout.splitlines() if line.startswith("exit: ")]
    assert codes == ["--help 0", "export 0", "run 0", "triton 0", "serve 2"], result.stderr
    assert [a.shape for a in np.load(tmp_path / "out.npz").values()] == [(2, 64, 6, 6)]
    assert result.stderr.strip().splitlines()[-1] == (
        "effattn serve: error: effattn serve needs prometheus_client, which is not installed: "
        "pip install 'effattn[serve]'"
    )


def test_a_checkout_on_pythonpath_cannot_shadow_the_installed_package():
    """Users put a clone on PYTHONPATH (or work in it) to import their own modules: with the package in src/, the
    clone's root holds no ``effattn/`` to shadow the installed one (a stale ``effattn/`` there broke every command
    with ImportError on ``__version__``). Run from the root, with the root first on PYTHONPATH."""
    assert not (ROOT / "effattn").exists()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = "import effattn, effattn.cli; print(effattn.__file__); print(effattn.__version__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    where, version = out.stdout.split()
    assert Path(where).parent != ROOT / "effattn" and Path(where).parent.name == "effattn", where
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version), version
