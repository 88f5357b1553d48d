#!/usr/bin/env bash
# Fetch the wheels a lent GPU machine lacks (it has torch, Triton, onnx, numpy and the CPU onnxruntime, no
# registry) and lay them out for scripts/gpu_check.sh under .gpuwheels/ (git-ignored):
#   .gpuwheels/small/*.whl   the pure-Python wheels the tests import (under 1 MiB): carry them in every call
#   .gpuwheels/partNN/       onnxruntime-gpu as one xz bundle cut into parts, each as large as one call can
#                            carry beside the working tree (64 MiB in all; PART_MIB overrides), one part a call
#
#   bash scripts/gpu_wheels.sh                 # onnxslim + onnxconverter-common; onnxruntime-gpu in parts
#   bash scripts/gpu_wheels.sh PKG==VER...     # other packages in the parts (Python 3.12, manylinux x86-64)
#
# No TensorRT or Polygraphy: TensorRT cannot reach a lent machine (a machine with TensorRT installs
# 'effattn[gpu]' with pip). Wheels are re-stored uncompressed before xz packs them: zip's
# deflate leaves onnxruntime-gpu at 255 MB, while xz over the whole file finds the CUDA kernels it repeats
# for each GPU architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.gpuwheels
small=(onnxslim==0.1.98 onnxconverter-common==1.16.0)
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(onnxruntime-gpu==1.31.1)
grep -qxF "/$root/" .git/info/exclude 2>/dev/null || echo "/$root/" >> .git/info/exclude
rm -rf "$root" && mkdir -p "$root/dl" "$root/stored" "$root/small"
download() {  # folder, packages...
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dir" "$@"
}
echo "downloading ${small[*]} (pure Python) and ${pkgs[*]} (Python 3.12, manylinux x86-64)"
download "$root/small" "${small[@]}"
download "$root/dl" "${pkgs[@]}"
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
# a call carries the working tree (tracked files), the small wheels and one part: 64 MiB in all
tree_mib=$(( ( $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) + $(du -cb "$root/small" | tail -1 | cut -f1) ) / 1048576 + 1 ))
part_mib=${PART_MIB:-$((63 - tree_mib))}
echo "packing (xz, a few minutes on 2 cores); parts of $part_mib MiB beside a $tree_mib MiB tree"
tar -cf - -C "$root/stored" . | xz -6 -T0 > "$root/bundle.tar.xz"
sha=$(sha256sum "$root/bundle.tar.xz" | cut -d' ' -f1)
(cd "$root" && split -b "${part_mib}m" -d -a 2 bundle.tar.xz chunk.)
n=0
for chunk in "$root"/chunk.*; do
  n=$((n + 1)); part=$(printf '%s/part%02d' "$root" "$n"); mkdir -p "$part"; mv "$chunk" "$part/"
done
for part in "$root"/part*; do printf 'parts %d\nsha256 %s\n' "$n" "$sha" > "$part/manifest"; done
rm -rf "$root/dl" "$root/stored" "$root/bundle.tar.xz"
du -sh "$root"/small "$root"/part*
echo "carry .gpuwheels/small in every call and .gpuwheels/part01..part$(printf '%02d' "$n") one a call, in order (docs/gpu-tensorrt.md: GPU check)"
