#!/usr/bin/env bash
# The whole GPU check as one command, for a CUDA machine with torch and no package registry:
#   bash scripts/gpu_check.sh            install the carried wheels, run the GPU tests and the tests whose
#                                        behaviour changes when CUDA is present, then a short GPU bench
#   bash scripts/gpu_check.sh --dry-run  print every step, run none (works on any machine)
#   bash scripts/gpu_check.sh --stage    only add the carried wheel part to the bundle on this machine
#   bash scripts/gpu_check.sh --install  stage, then install the bundle once whole (no tests, no bench)
# Wheels: scripts/gpu_wheels.sh packs them into .gpuwheels/partNN (git-ignored); carry one part per
# call, in order, with --stage, and the last one with the full check. Without them the check still
# runs: what needs onnxruntime-gpu or TensorRT is reported as skipped, with the reason.
# Results go to $OUT (the lent machine's folder that comes back), else ./gpu-check-out:
#   env.txt, fused-tests.log, fused-{block,segnet,resnet}.{json,txt}, pytest.log, junit.xml, bench.json, bench.txt, bench.png, bench-int8.json, bench-int8.txt, summary.txt
# (bench-int8 has an FP8 row too on GPUs of compute capability 8.9+: Ada, Hopper, Blackwell)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0; STAGE_ONLY=0; INSTALL_ONLY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --stage) STAGE_ONLY=1 ;;
    --install) INSTALL_ONLY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$ROOT/gpu-check-out}
STATE=${EFFATTN_GPU_STATE:-/tmp/effattn-gpu}   # survives between calls while the machine stays warm
PY=${PYTHON:-python3}
BENCH_SECONDS=${BENCH_SECONDS:-120}

run() {  # print a step; run it unless --dry-run
  echo "+ $*"
  [ "$DRY" = 1 ] || "$@"
}

stage() {  # append each carried part once; parts are numbered, so order and repeats are checked
  local part name
  run mkdir -p "$STATE"
  for part in .gpuwheels/part*/chunk.*; do
    [ -e "$part" ] || continue
    name=$(basename "$(dirname "$part")")
    if [ "$DRY" = 0 ] && grep -qxF "$name" "$STATE/parts.done" 2>/dev/null; then
      echo "  $name already staged"; continue
    fi
    if [ "$DRY" = 1 ]; then echo "+ cat $part >> $STATE/bundle.tar.xz  (and record $name)"
    else cat "$part" >> "$STATE/bundle.tar.xz" && echo "$name" >> "$STATE/parts.done"; fi
    [ -f "$(dirname "$part")/manifest" ] && run cp "$(dirname "$part")/manifest" "$STATE/manifest"
  done
  [ "$DRY" = 1 ] || echo "  staged: $(tr '\n' ' ' < "$STATE/parts.done" 2>/dev/null) ($(du -h "$STATE/bundle.tar.xz" 2>/dev/null | cut -f1))"
}

install_wheels() {  # unpack and install the bundle once it is whole (sha256 from the manifest)
  if [ "$DRY" = 1 ]; then
    echo "+ check sha256 of $STATE/bundle.tar.xz against $STATE/manifest"
    echo "+ xz -dc $STATE/bundle.tar.xz | tar -x -C $STATE/wheels"
    echo "+ $PY -m pip install -q --no-index --no-deps --no-compile --target $STATE/site $STATE/wheels/*.whl"
    return
  fi
  if [ -d "$STATE/site" ]; then echo "  wheels already installed in $STATE/site"; return; fi
  if [ ! -f "$STATE/manifest" ]; then echo "  no wheel bundle carried: running without onnxruntime-gpu/polygraphy"; return; fi
  local want have
  want=$(awk '/^sha256/ {print $2}' "$STATE/manifest")
  have=$(sha256sum "$STATE/bundle.tar.xz" | cut -d' ' -f1)
  if [ "$want" != "$have" ]; then
    echo "  bundle incomplete ($(wc -l < "$STATE/parts.done") of $(awk '/^parts/ {print $2}' "$STATE/manifest") parts): running without it"
    return
  fi
  mkdir -p "$STATE/wheels" && xz -dc "$STATE/bundle.tar.xz" | tar -x -C "$STATE/wheels" &&
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$STATE/site" "$STATE"/wheels/*.whl &&
    rm -rf "$STATE/wheels" && echo "  installed: $(ls "$STATE/site" | grep -c dist-info) wheels"
}

stage
[ "$STAGE_ONLY" = 1 ] && exit 0
install_wheels
[ "$INSTALL_ONLY" = 1 ] && exit 0
export PYTHONPATH="$STATE/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
run mkdir -p "$OUT"

echo "== environment"
envinfo() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
  $PY - <<'EOF'
import importlib, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("onnxruntime", "tensorrt", "tensorrt_rtx", "polygraphy", "onnxslim", "onnxconverter_common", "onnx"):
    try:
        module = importlib.import_module(name)
        extra = f" providers {module.get_available_providers()}" if name == "onnxruntime" else ""
        print(f"{name} {getattr(module, '__version__', '?')} at {module.__file__}{extra}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
EOF
}
if [ "$DRY" = 1 ]; then echo "+ nvidia-smi; versions of torch, onnxruntime (providers), tensorrt, polygraphy > $OUT/env.txt"
else envinfo 2>&1 | tee "$OUT/env.txt"; fi

echo "== fused kernel first (needs nothing carried): its tests on CUDA, then every torch row (at most ${BENCH_SECONDS}s each)"
if [ "$DRY" = 1 ]; then echo "+ $PY -m pytest tests/models/test_fused.py -rs -p no:cacheprovider > $OUT/fused-tests.log"
else $PY -m pytest tests/models/test_fused.py -rs -p no:cacheprovider 2>&1 | tee "$OUT/fused-tests.log" | tail -5; fi
fused_rc=${PIPESTATUS[0]}
TORCH_ROWS=(torch-fp16 torch-compile torch-compile-fp16 torch-fused torch-fused-fp16)
fused_bench() {  # name, then the bench's model and size arguments
  local name=$1; shift
  local cmd=($PY -m effattn bench --device cuda "$@" --batch 8 --seconds 0.3 --max-seconds "$BENCH_SECONDS"
             --no-memory --backends "${TORCH_ROWS[@]}" -o "$OUT/$name.json" --force)
  if [ "$DRY" = 1 ]; then echo "+ ${cmd[*]} > $OUT/$name.txt"; else "${cmd[@]}" 2>&1 | tee "$OUT/$name.txt"; fi
}
fused_bench fused-block --models efficient_attention --sizes 128 256
fused_bench fused-segnet --models ea_segnet --sizes 512
fused_bench fused-resnet --models ea_resnet --sizes 224

echo "== tests: every GPU test, and the CPU tests whose paths change when CUDA is present (serving aside);"
echo "   TensorRT INT8, FP8 (QDQ graphs; FP8 on 8.9+ GPUs) and BF16 engines vs eager: tests/engines/test_tensorrt_build.py::test_low_precision_engine_of_the_segmenter_matches_eager"
TESTS=(tests/runtime tests/engines tests/export tests/bench tests/test_cli.py tests/test_gpu_check.py)
PARALLEL=()
$PY -c "import xdist" 2>/dev/null && PARALLEL=(-n 4)   # pytest-xdist, where the machine has it
if [ "$DRY" = 1 ]; then
  echo "+ $PY -m pytest ${TESTS[*]} ${PARALLEL[*]} -rs -p no:cacheprovider --junitxml $OUT/junit.xml 2>&1 | tee $OUT/pytest.log"
else
  $PY -m pytest "${TESTS[@]}" "${PARALLEL[@]}" -rs -p no:cacheprovider --junitxml "$OUT/junit.xml" 2>&1 |
    tee "$OUT/pytest.log" | tail -40
fi
tests_rc=${PIPESTATUS[0]}

echo "== bench (at most ${BENCH_SECONDS}s): EA block and two hosts, eager FP32/FP16, torch.compile, ONNX Runtime CUDA FP32/FP16"
bench=($PY -m effattn bench --device cuda --models efficient_attention ea_segnet_tiny ea_resnet_tiny
       --sizes 64 128 256 --batch 8 --seconds 0.3 --max-seconds "$BENCH_SECONDS" --no-memory
       --backends torch-fp16 torch-compile onnxruntime onnxruntime-fp16 tensorrt-fp16
       -o "$OUT/bench.json" --plot "$OUT/bench.png" --force)
if [ "$DRY" = 1 ]; then echo "+ ${bench[*]} > $OUT/bench.txt"
else "${bench[@]}" 2>&1 | tee "$OUT/bench.txt"; fi
bench_rc=${PIPESTATUS[0]}

LOWPREC=(tensorrt-fp16 tensorrt-int8)
if [ "$DRY" = 1 ] || $PY -c "import sys, torch; sys.exit(torch.cuda.get_device_capability() < (8, 9))" 2>/dev/null; then
  LOWPREC+=(tensorrt-fp8)   # FP8 tensor cores (Ada, Hopper, Blackwell); the dry run shows the row
fi
echo "== bench row, TensorRT low precision (at most ${BENCH_SECONDS}s): the trained segmenter, ${LOWPREC[*]} engines"
lowprec=($PY -m effattn bench --device cuda --models ea_segnet_tiny --sizes 128 --batch 8 --seconds 0.3
         --max-seconds "$BENCH_SECONDS" --no-memory --backends "${LOWPREC[@]}"
         -o "$OUT/bench-int8.json" --force)
if [ "$DRY" = 1 ]; then echo "+ ${lowprec[*]} > $OUT/bench-int8.txt"
else "${lowprec[@]}" 2>&1 | tee "$OUT/bench-int8.txt"; fi
lowprec_rc=${PIPESTATUS[0]}

summary="fused tests exit $fused_rc, tests exit $tests_rc, bench exit $bench_rc, int8 bench exit $lowprec_rc; $(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$OUT/pytest.log" 2>/dev/null | tail -1)"
echo "== $summary"
[ "$DRY" = 1 ] || echo "$summary" > "$OUT/summary.txt"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$lowprec_rc" = 0 ]
