"""scripts/gpu_check.sh: each stage shows exactly what it would do on any machine (--dry-run)."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dry_run(tmp_path, *args: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "EFFATTN_GPU_STATE": str(tmp_path / "state")}
    run = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()  # ran nothing
    return run.stdout


def test_stage_one_needs_no_onnxruntime_nor_tensorrt_and_each_step_has_its_own_timeout(tmp_path):
    out = dry_run(tmp_path)
    steps = [line for line in out.splitlines() if line.startswith("+ timeout ")]
    assert "tests/models/test_fused.py" in steps[0]  # the fused kernel first
    assert "-m gpu -k not onnxruntime and not tensorrt" in steps[1]
    for step in (
        "--models efficient_attention --sizes 128 256",
        "--models ea_segnet --sizes 512",
        "--models ea_resnet --sizes 224",
        "--backends torch-fp16 torch-compile torch-compile-fp16 torch-fused torch-fused-fp16",
    ):
        assert step in out, step
    assert len(steps) == 5 and all(f"{tmp_path / 'out'}/" in s for s in steps)  # results land in $OUT
    assert "onnxruntime onnxruntime-fp16" not in out and "tensorrt-" not in out
    assert "xz -dc" not in out  # nothing carried to unpack


def test_stage_two_runs_the_onnxruntime_gpu_tests_and_rows_when_time_allows(tmp_path):
    out = dry_run(tmp_path, "--stage2", "--minutes-left", "10")
    for step in (
        "xz -dc",
        "pip install -q --no-index --no-deps",
        "-m gpu -k onnxruntime and not tensorrt",
        "--backends onnxruntime onnxruntime-fp16",
        f"{tmp_path / 'out'}/bench-ort.json",
        "fp16_ops_probe.py --device cuda",
    ):
        assert step in out, step
    assert "torch-compile" not in out and "test_fused" not in out and "tensorrt-fp16" not in out
    skipped = dry_run(tmp_path, "--stage2", "--minutes-left=9")
    assert "stage 2 skipped: 9 minutes left" in skipped and "+ timeout" not in skipped


def test_tensorrt_steps_only_when_asked(tmp_path):
    out = dry_run(tmp_path, "--tensorrt")
    for step in (
        "-m gpu -k tensorrt",
        "test_low_precision_engine_of_the_segmenter_matches_eager",
        "--backends tensorrt tensorrt-fp16",
        "--backends tensorrt-fp16 tensorrt-int8 tensorrt-fp8",
        f"{tmp_path / 'out'}/bench-int8.json",
    ):
        assert step in out, step
    assert "torch-compile" not in out and "onnxruntime-fp16" not in out
    everything = dry_run(tmp_path, "--all")
    assert everything.index("test_fused") < everything.index("bench-ort.json") < everything.index("bench-int8.json")


@pytest.mark.parametrize(
    ("args", "message"), [(["--bogus"], "unknown option --bogus"), (["--minutes-left", "x"], "whole minutes")]
)
def test_gpu_check_refuses_bad_options(args, message):
    run = subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr
