#!/usr/bin/env bash
# Fetch the wheels a lent GPU machine lacks (it has torch, onnx, onnxscript and numpy, no registry)
# and pack them for scripts/gpu_check.sh: one xz bundle, cut into parts of at most 60 MiB under
# .gpuwheels/ (git-ignored), each part carried by one call.
#
#   bash scripts/gpu_wheels.sh             # onnxruntime-gpu, polygraphy, onnxslim, onnxconverter-common
#   bash scripts/gpu_wheels.sh PKG==VER... # other packages (Python 3.12, manylinux x86-64 wheels)
#
# Wheels are re-stored uncompressed before xz packs them: zip's deflate leaves onnxruntime-gpu at
# 255 MB, while xz over the whole file finds the CUDA kernels it repeats for each GPU architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.gpuwheels
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(onnxruntime-gpu==1.31.1 polygraphy==0.53.6 onnxslim==0.1.98 onnxconverter-common==1.16.0)
grep -qxF "/$root/" .git/info/exclude 2>/dev/null || echo "/$root/" >> .git/info/exclude
rm -rf "$root" && mkdir -p "$root/dl" "$root/stored"
echo "downloading ${pkgs[*]} (Python 3.12, manylinux x86-64)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$root/dl" "${pkgs[@]}"
for wheel in "$root"/dl/*.whl; do
  python3 - "$wheel" "$root/stored/$(basename "$wheel")" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as src, zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_STORED) as dst:
    for info in src.infolist():
        data = src.read(info)
        info.compress_type = zipfile.ZIP_STORED
        dst.writestr(info, data)
EOF
done
echo "packing (xz, a few minutes on 2 cores)"
tar -cf - -C "$root/stored" . | xz -6 -T0 > "$root/bundle.tar.xz"
sha=$(sha256sum "$root/bundle.tar.xz" | cut -d' ' -f1)
(cd "$root" && split -b 60m -d -a 2 bundle.tar.xz chunk.)
n=0
for chunk in "$root"/chunk.*; do
  n=$((n + 1)); part=$(printf '%s/part%02d' "$root" "$n"); mkdir -p "$part"; mv "$chunk" "$part/"
done
for part in "$root"/part*; do printf 'parts %d\nsha256 %s\n' "$n" "$sha" > "$part/manifest"; done
rm -rf "$root/dl" "$root/stored" "$root/bundle.tar.xz"
du -sh "$root"/part*
echo "carry each of .gpuwheels/part01..part$(printf '%02d' "$n") in one call, in order (docs/gpu-tensorrt.md: GPU check)"
