"""The package's layering, checked on its source: no stage imports a later stage, no file-level import cycle,
and toolkit modules are imported at the top of a file (a function-level import of effattn code is how cycles
used to be hidden). Ranks follow the pipeline: core < models < export < engines < runtime < serving, bench
< pipeline < cli."""

import ast
import itertools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "effattn"
RANK = {
    "errors": 0,
    "shapes": 0,
    "metadata": 0,
    "dtypes": 0,
    "files": 0,
    "names": 0,
    "precisions": 0,
    "cpu": 0,
    "models": 1,
    "export": 2,
    "engines": 3,
    "runtime": 4,
    "serving": 5,
    "bench": 5,
    "pipeline": 6,
    "cli": 7,
    "__main__": 7,
}
#: (module, imported) pairs allowed inside a function, each for a reason.
LAZY = {
    ("effattn.cli", "effattn.cli.commands"),  # `effattn --help` answers without loading torch
    ("effattn.models.fused", "effattn.models.fused_kernel"),  # the kernel imports triton: optional, on first use
    # torch and the server stack load only where needed (docs/install.md): tests/test_install.py runs without them
    ("effattn.runtime", "effattn.runtime.torch_runner"),  # effattn.runtime runs ONNX files without torch
    ("effattn.export.quantize.calibration", "effattn.models"),  # the zoo's samples: torch, for zoo models only
    ("effattn.cli.commands", "effattn.serving.http_server"),  # the serve extra, for `effattn serve` alone
    ("effattn.cli.commands", "effattn.serving.grpc_server"),
}


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported effattn module, inside a function) for each import in ``path``: ``from a import b`` names
    ``a.b`` when that is a module, else ``a``."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree, found, modules = ast.parse(path.read_text()), [], _modules()
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in functions for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            found += [
                (f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target, id(node) in inner)
                for a in node.names
            ]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in inner) for a in node.names]
    return [(name, lazy) for name, lazy in found if name and name.split(".")[0] == "effattn"]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {d for d, _ in _imports(m, p) if d in modules and d != m} for m, p in modules.items()}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_every_part_has_a_rank():
    assert {_part(m) for m in _modules()} - {"__init__"} <= set(RANK)


def test_no_stage_imports_a_later_stage():
    back = [
        f"{m} -> {d}"
        for m, deps in _graph().items()
        for d in deps
        if _part(m) in RANK and _part(d) in RANK and RANK[_part(d)] > RANK[_part(m)]
    ]
    assert back == []


def test_no_file_level_import_cycles():
    graph, cycles = _graph(), []
    for start in graph:  # a cycle through `start`: depth-first from each of its imports back to it
        stack, seen = [(d, [start, d]) for d in graph[start]], set()
        while stack:
            node, trail = stack.pop()
            if node == start:
                cycles.append(" -> ".join(trail))
                break
            if node not in seen:
                seen.add(node)
                stack += [(d, [*trail, d]) for d in graph.get(node, ())]
    # a package's __init__ re-exporting its own modules is not a cycle of files importing each other
    assert [c for c in cycles if not _is_reexport(c.split(" -> "))] == []


def _is_reexport(trail: list[str]) -> bool:
    return any(b.startswith(a + ".") or a.startswith(b + ".") for a, b in itertools.pairwise(trail))


def test_toolkit_modules_are_imported_at_the_top():
    lazy = {(m, d) for m, p in _modules().items() for d, inside in _imports(m, p) if inside}
    assert sorted(lazy - LAZY) == []
