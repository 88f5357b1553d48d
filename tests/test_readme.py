"""The README's set-up commands are what CI runs, word for word."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme.split("## The command line")[0], re.S)
    commands = [line for block in blocks for line in block.strip().splitlines()]
    assert len(commands) == 2, commands
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == commands


def test_the_serving_client_example_works_as_written(tmp_path):
    """Export and serve as the README says, then run its client code word for word (address aside)."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("tritonclient.http", reason="the client example needs tritonclient[http] (test extra)")
    from tests.harness import running_server

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Serving")[1]
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)[0].strip().splitlines()
    export = commands[0].split("#")[0].split()
    assert export[:2] == ["effattn", "export"] and commands[1].split("#")[0].split() == ["effattn", "serve", "seg.onnx"]
    subprocess.run([sys.executable, "-m", "effattn", *export[1:], "-q"], cwd=tmp_path, check=True)
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    assert '"127.0.0.1:8000"' in code
    with running_server({"seg": tmp_path / "seg.onnx"}) as (_, base):
        run = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:8000", base.removeprefix("http://"))],
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "(1, 3, 64, 64) [-1, 3, -1, -1]"


USER_PACKAGE = '''
from torch import nn
from effattn.models import EfficientAttention


def build(channels: int = 8):
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), EfficientAttention(channels, 4, 2, channels))
'''


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
