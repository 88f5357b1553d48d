"""The README and docs/ are tested as written: CI runs the README's set-up commands word for word, the
code blocks run, the command lines parse, and every link resolves."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS, *sorted((ROOT / "benchmarks" / "results").glob("*.md"))]


def test_ci_runs_the_readme_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme.split("## The command line")[0], re.S)
    commands = [line for block in blocks for line in block.strip().splitlines()]
    assert len(commands) == 2, commands
    ci = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == commands


def test_the_serving_client_example_works_as_written(tmp_path):
    """Export and serve as docs/serving.md says, then run its client code word for word (address aside)."""
    import subprocess
    import sys

    pytest.importorskip("tritonclient.http", reason="the client example needs tritonclient[http] (test extra)")
    from tests.harness import running_server

    section = (ROOT / "docs" / "serving.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)[0].strip().splitlines()
    export = commands[0].split("#")[0].split()
    assert export[:2] == ["effattn", "export"] and commands[1].split("#")[0].split() == ["effattn", "serve", "seg.onnx"]
    subprocess.run([sys.executable, "-m", "effattn", *export[1:], "-q"], cwd=tmp_path, check=True)
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    assert '"127.0.0.1:8000"' in code
    with running_server({"seg": tmp_path / "seg.onnx"}) as (_, base):
        run = subprocess.run(
            [sys.executable, "-c", code.replace("127.0.0.1:8000", base.removeprefix("http://"))],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "(1, 3, 64, 64) [-1, 3, -1, -1]"


USER_PACKAGE = """
from torch import nn
from effattn.models import EfficientAttention


def build(channels: int = 8):
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), EfficientAttention(channels, 4, 2, channels))
"""


def test_the_python_api_examples_run_as_written_for_a_zoo_model_and_a_user_model(tmp_path):
    """Both blocks of "The Python API", word for word: the zoo model, then a user's own package.module:factory
    (a package and checkpoint made here, named as the README names them)."""
    import subprocess
    import sys

    import torch

    section = (ROOT / "README.md").read_text().split("## The Python API")[1].split("\n## ")[0]
    zoo, user = re.findall(r"```python\n(.*?)```", section, re.S)
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "nets.py").write_text(USER_PACKAGE)
    sys.path.insert(0, str(tmp_path))
    try:
        from my_pkg.nets import build

        torch.save(build().state_dict(), tmp_path / "w.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_pkg.nets", None), sys.modules.pop("my_pkg", None)
    for code, printed in ((zoo, "PASS"), (user, "{'logits': (2, 8, 64, 64)}")):
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert printed in run.stdout and "FAIL" not in run.stdout, run.stdout
    assert (tmp_path / "seg.onnx").is_file() and (tmp_path / "mine.onnx").is_file()


def test_the_readme_is_a_front_door_of_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the detail to a docs/ page"


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links, not code
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_every_docs_page_is_linked_from_the_readme():
    assert DOCS, "no docs/*.md pages"
    linked = {(ROOT / link.split("#")[0]).resolve() for link in _links(ROOT / "README.md")}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target)):
            broken.append(link)
    assert broken == []


def _cli_examples(page: Path) -> list[str]:
    """Every ``effattn ...`` command in a page's bash blocks (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["effattn"]:
                    commands.append(words[1:])
    return commands


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_command_lines_shown_parse(page):
    """Each example is a valid command line of today's CLI (parsed, not run)."""
    from effattn.cli import build_parser

    parser = build_parser()
    for words in _cli_examples(page):
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{page.name}: 'effattn {shlex.join(words)}' does not parse")


def test_the_precision_example_runs_as_written(tmp_path):
    """docs/precision.md's Python block, word for word, on an export of the trained segmenter."""
    import subprocess
    import sys

    pytest.importorskip("openvino", reason="the example runs INT8 and BF16 on OpenVINO (cpu extra)")
    from effattn.runtime.openvino_runner import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("the example asks OpenVINO for BF16, which this CPU lacks")
    code = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "precision.md").read_text(), re.S)[0]
    export = ["effattn", "export", "ea_segnet_tiny", "--pretrained", "-o", "seg.onnx", "-q"]
    subprocess.run([sys.executable, "-m", *export], cwd=tmp_path, check=True)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("(1, 3, 64, 64)"), run.stdout
    assert (tmp_path / "seg.int8.onnx").is_file()
