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
    from effattn.serving.launch import running_server

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
