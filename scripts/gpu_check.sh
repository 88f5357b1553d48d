#!/usr/bin/env bash
# The GPU check in stages sized for minutes (docs/gpu-tensorrt.md#gpu-check):
#   bash scripts/gpu_check.sh              stage 1, on torch and Triton (only the small pure-Python wheels are
#                                          carried: .gpuwheels/small, under 1 MiB): the fused kernel's tests,
#                                          every gpu test that needs neither onnxruntime-gpu nor TensorRT (torch
#                                          runners, CUDA graphs, concurrency), the torch bench rows
#   bash scripts/gpu_check.sh --stage      only append the carried wheel part(s) to the bundle on this machine
#   bash scripts/gpu_check.sh --stage2 [--minutes-left N]
#                                          stage 2: install the ONNX Runtime GPU bundle, run the gpu tests that
#                                          need ONNX Runtime, its bench rows and FP16 op probe; refused when the
#                                          caller says fewer than 10 minutes are left (the script cannot know)
#   bash scripts/gpu_check.sh --tensorrt   TensorRT's gpu tests and bench rows (a machine with TensorRT installed)
#   bash scripts/gpu_check.sh --all        stage 1, stage 2 and TensorRT: a whole machine of your own
#   --dry-run                              print every step, run none (any machine)
# Carried parts (.gpuwheels/partNN from scripts/gpu_wheels.sh) are staged by any call that carries them, so
# the stage-1 call can carry part01 too.
# Every step runs under its own `timeout` (TEST_SECONDS, default 150; a bench row set BENCH_SECONDS, default
# 45, plus 60 s to build) and writes to $OUT (else ./gpu-check-out) as it goes, so a call cut short still
# brings back what ran. Files (at most 7 a stage; a lent machine returns 8 a call):
#   stage 1: stage1.log fused-tests.xml torch-tests.xml bench-torch-{block,segnet,resnet}.json summary.txt
#   stage 2: stage2.log ort-tests.xml bench-ort.json fp16-ops.json summary.txt
#   TensorRT: tensorrt.log tensorrt-tests.xml bench-tensorrt.json bench-int8.json summary.txt
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0; STAGE_ONLY=0; STAGES=(); MINUTES_LEFT=${EFFATTN_MINUTES_LEFT:-}
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --stage) STAGE_ONLY=1 ;;
    --stage2) STAGES+=(2) ;;
    --tensorrt) STAGES+=(trt) ;;
    --all) STAGES+=(1 2 trt) ;;
    --minutes-left) shift; MINUTES_LEFT=${1:-} ;;
    --minutes-left=*) MINUTES_LEFT=${1#*=} ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#STAGES[@]} -gt 0 ] || STAGES=(1)
if [ -n "$MINUTES_LEFT" ] && ! [[ $MINUTES_LEFT =~ ^[0-9]+$ ]]; then
  echo "gpu_check.sh: --minutes-left takes whole minutes, not '$MINUTES_LEFT'" >&2; exit 2
fi
OUT=${OUT:-$ROOT/gpu-check-out}
STATE=${EFFATTN_GPU_STATE:-/tmp/effattn-gpu}   # survives between calls while the machine stays warm
PY=${PYTHON:-python3}
TEST_SECONDS=${TEST_SECONDS:-150}
BENCH_SECONDS=${BENCH_SECONDS:-45}
STAGE2_MINUTES=10
LOG=/dev/null; SUMMARY=()

say() { echo "$*"; [ "$DRY" = 1 ] || echo "$*" >> "$LOG"; }

step() {  # name, seconds, command...: run under its own timeout, log as it goes, note the result
  local name=$1 secs=$2; shift 2
  say "+ timeout $secs $*"
  [ "$DRY" = 1 ] && return 0
  local start=$SECONDS rc
  timeout --kill-after=10 "$secs" "$@" 2>&1 | tee -a "$LOG" | tail -15
  rc=${PIPESTATUS[0]}
  local note="exit $rc"; [ "$rc" = 124 ] || [ "$rc" = 137 ] && note="cut at ${secs}s"
  SUMMARY+=("$name: $note, $((SECONDS - start)) s")
  printf '%s\n' "${SUMMARY[@]}" > "$OUT/summary.txt"   # rewritten after every step: a cut call keeps it
  return "$rc"
}

open_log() {  # a stage's log under $OUT, started with the machine's description
  LOG="$OUT/$1.log"
  if [ "$DRY" = 1 ]; then echo "+ log to $LOG: nvidia-smi; versions of python, torch, triton, onnxruntime, tensorrt"; return; fi
  mkdir -p "$OUT"
  { echo "== $1 $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
    $PY - <<'EOF'
import importlib, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("triton", "onnxruntime", "tensorrt", "polygraphy", "onnxslim", "onnxconverter_common", "onnx"):
    try:
        module = importlib.import_module(name)
        extra = f" providers {module.get_available_providers()}" if name == "onnxruntime" else ""
        print(f"{name} {getattr(module, '__version__', '?')}{extra}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__})")
EOF
  } 2>&1 | tee "$LOG"
}

stage_parts() {  # append each carried part once; parts are numbered, so order and repeats are checked
  local part name
  for part in .gpuwheels/part*/chunk.*; do
    [ -e "$part" ] || continue
    name=$(basename "$(dirname "$part")")
    if [ "$DRY" = 1 ]; then echo "+ cat $part >> $STATE/bundle.tar.xz  (and record $name)"; continue; fi
    mkdir -p "$STATE"
    if grep -qxF "$name" "$STATE/parts.done" 2>/dev/null; then echo "  $name already staged"; continue; fi
    cat "$part" >> "$STATE/bundle.tar.xz" && echo "$name" >> "$STATE/parts.done"
    [ -f "$(dirname "$part")/manifest" ] && cp "$(dirname "$part")/manifest" "$STATE/manifest"
    echo "  staged: $(tr '\n' ' ' < "$STATE/parts.done") ($(du -h "$STATE/bundle.tar.xz" | cut -f1))"
  done
}

install_small() {  # the pure-Python wheels the tests import (onnxslim, onnxconverter-common), if carried
  [ -n "$(ls .gpuwheels/small/*.whl 2>/dev/null)" ] || return 0
  if [ "$DRY" = 1 ]; then echo "+ $PY -m pip install -q --no-index --no-deps --no-compile --target $STATE/small .gpuwheels/small/*.whl"; return; fi
  [ -d "$STATE/small" ] && return 0
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$STATE/small" .gpuwheels/small/*.whl &&
    echo "  installed $(ls .gpuwheels/small/*.whl | wc -l) small wheels in $STATE/small"
}

install_wheels() {  # unpack and install the bundle once it is whole (sha256 from the manifest)
  if [ "$DRY" = 1 ]; then
    echo "+ check sha256 of $STATE/bundle.tar.xz against $STATE/manifest"
    echo "+ xz -dc $STATE/bundle.tar.xz | tar -x -C $STATE/wheels"
    echo "+ $PY -m pip install -q --no-index --no-deps --no-compile --target $STATE/site $STATE/wheels/*.whl"
    return
  fi
  if [ -d "$STATE/site" ]; then say "  wheels already installed in $STATE/site"; return; fi
  if [ ! -f "$STATE/manifest" ]; then say "  no wheel bundle carried: the ONNX Runtime steps will skip"; return; fi
  local want have
  want=$(awk '/^sha256/ {print $2}' "$STATE/manifest")
  have=$(sha256sum "$STATE/bundle.tar.xz" | cut -d' ' -f1)
  if [ "$want" != "$have" ]; then
    say "  bundle incomplete ($(wc -l < "$STATE/parts.done") of $(awk '/^parts/ {print $2}' "$STATE/manifest") parts): the ONNX Runtime steps will skip"
    return
  fi
  mkdir -p "$STATE/wheels" && xz -dc "$STATE/bundle.tar.xz" | tar -x -C "$STATE/wheels" &&
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$STATE/site" "$STATE"/wheels/*.whl &&
    rm -rf "$STATE/wheels" && say "  installed: $(ls "$STATE/site" | grep -c dist-info) wheels"
}

pytest_step() {  # name, junit file, pytest arguments...
  local name=$1 junit=$2; shift 2
  step "$name" "$TEST_SECONDS" $PY -m pytest "$@" -rs -p no:cacheprovider --junitxml "$OUT/$junit"
}

bench_step() {  # name, json file, bench arguments...
  local name=$1 json=$2; shift 2
  step "$name" $((BENCH_SECONDS + 60)) $PY -m effattn bench --device cuda --batch 8 --seconds 0.3 \
    --max-seconds "$BENCH_SECONDS" --no-memory "$@" -o "$OUT/$json" --force
}

stage1() {  # nothing carried: torch (CUDA build) and its Triton
  open_log stage1
  say "== stage 1: the fused kernel's tests, then the gpu tests that need neither ONNX Runtime nor TensorRT"
  pytest_step fused-tests fused-tests.xml tests/models/test_fused.py
  pytest_step torch-tests torch-tests.xml tests/runtime -m gpu -k "not onnxruntime and not tensorrt"
  say "== stage 1: torch bench rows (at most ${BENCH_SECONDS}s each)"
  local rows=(--backends torch-fp16 torch-compile torch-compile-fp16 torch-fused torch-fused-fp16)
  bench_step bench-torch-block bench-torch-block.json --models efficient_attention --sizes 128 256 "${rows[@]}"
  bench_step bench-torch-segnet bench-torch-segnet.json --models ea_segnet --sizes 512 "${rows[@]}"
  bench_step bench-torch-resnet bench-torch-resnet.json --models ea_resnet --sizes 224 "${rows[@]}"
}

stage2() {  # the ONNX Runtime GPU bundle, carried in parts
  if [ -n "$MINUTES_LEFT" ] && [ "$MINUTES_LEFT" -lt "$STAGE2_MINUTES" ]; then
    echo "== stage 2 skipped: $MINUTES_LEFT minutes left, it needs $STAGE2_MINUTES (carrying the bundle, then its steps)"
    return 0
  fi
  open_log stage2
  install_wheels
  say "== stage 2: the gpu tests that need ONNX Runtime, its bench rows, the FP16 op probe"
  pytest_step ort-tests ort-tests.xml tests/runtime tests/export tests/engines -m gpu -k "onnxruntime and not tensorrt"
  bench_step bench-ort bench-ort.json --models efficient_attention ea_segnet_tiny ea_resnet_tiny \
    --sizes 64 128 256 --backends onnxruntime onnxruntime-fp16
  step fp16-ops "$TEST_SECONDS" $PY benchmarks/fp16_ops_probe.py --device cuda -o "$OUT/fp16-ops.json"
}

stage_tensorrt() {  # for a machine that has TensorRT (never a lent one: TensorRT cannot reach it)
  open_log tensorrt
  say "== TensorRT: its gpu tests (INT8, FP8 on 8.9+ GPUs, BF16 engines vs eager:"
  say "   tests/engines/test_tensorrt_build.py::test_low_precision_engine_of_the_segmenter_matches_eager), then its bench rows"
  pytest_step tensorrt-tests tensorrt-tests.xml tests/runtime tests/engines -m gpu -k tensorrt
  bench_step bench-tensorrt bench-tensorrt.json --models efficient_attention ea_segnet_tiny ea_resnet_tiny \
    --sizes 64 128 256 --backends tensorrt tensorrt-fp16
  local lowprec=(tensorrt-fp16 tensorrt-int8)
  if [ "$DRY" = 1 ] || $PY -c "import sys, torch; sys.exit(torch.cuda.get_device_capability() < (8, 9))" 2>/dev/null; then
    lowprec+=(tensorrt-fp8)   # FP8 tensor cores (Ada, Hopper, Blackwell); the dry run shows the row
  fi
  bench_step bench-int8 bench-int8.json --models ea_segnet_tiny --sizes 128 --backends "${lowprec[@]}"
}

stage_parts
[ "$STAGE_ONLY" = 1 ] && exit 0
install_small
# onnxruntime-gpu (in site) first: the lent machine's image has the CPU onnxruntime in its own site-packages; the package from src/, tests/ from the root
export PYTHONPATH="$STATE/site:$STATE/small:$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for s in "${STAGES[@]}"; do
  case $s in
    1) stage1 ;;
    2) stage2 ;;
    trt) stage_tensorrt ;;
  esac
done
failed=0
for line in "${SUMMARY[@]}"; do case $line in *": exit 0,"*) ;; *) failed=1 ;; esac; done
if [ ${#SUMMARY[@]} -gt 0 ]; then printf '== %s\n' "${SUMMARY[@]}"; else echo "== dry run"; fi
exit "$failed"
