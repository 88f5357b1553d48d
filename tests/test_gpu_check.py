"""scripts/gpu_check.sh: the one-command GPU check shows exactly what it would do on any machine."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_prints_every_step_and_runs_none(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "EFFATTN_GPU_STATE": str(tmp_path / "state")}
    run = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    fused = out.index("-m pytest tests/models/test_fused.py")
    assert fused < out.index("-m pytest tests/runtime")  # the steps that need nothing carried come first
    for step in (
        "--models efficient_attention --sizes 128 256",
        "--models ea_segnet --sizes 512",
        "--backends torch-fp16 torch-compile torch-compile-fp16 torch-fused torch-fused-fp16",
    ):
        assert step in out[fused:], step
    for step in (
        "pip install -q --no-index --no-deps",
        "-m pytest tests/runtime tests/engines",
        "--junitxml",
        "-m effattn bench --device cuda",
        "torch-compile onnxruntime onnxruntime-fp16",
        f"{tmp_path / 'out'}/bench.json",
        "test_low_precision_engine_of_the_segmenter_matches_eager",
        "--backends tensorrt-fp16 tensorrt-int8 tensorrt-fp8",
        f"{tmp_path / 'out'}/bench-int8.json",
    ):
        assert step in out, step
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()


def test_gpu_check_refuses_unknown_options():
    run = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--bogus"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "unknown option --bogus" in run.stderr
