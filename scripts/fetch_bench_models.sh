#!/usr/bin/env bash
# Real models for the benchmarks that ../shared/models does not hold, from PyPI (the only network
# this project's machines reach): iris_landmark.tflite (MediaPipe, Apache-2.0, float32, input
# 1x64x64x3, outputs 1x213 and 1x15) as shipped in the mediapipe 0.10.14 wheel, which still
# carries its .tflite files (1.x does not). Nothing is installed: the wheel is downloaded without
# its dependencies, the model extracted into .bench-models/ (git-ignored), the wheel deleted.
#   scripts/fetch_bench_models.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.bench-models}"
mkdir -p "$out"
if [ -s "$out/iris_landmark.tflite" ]; then echo "$out/iris_landmark.tflite"; exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
  "mediapipe==0.10.14" -d "$tmp" 2>&1 | grep -v "is ignored" || true
python3 - "$tmp" "$out" <<'PY'
import glob, sys, zipfile
whl = glob.glob(f"{sys.argv[1]}/mediapipe-0.10.14-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    data = z.read("mediapipe/modules/iris_landmark/iris_landmark.tflite")
open(f"{sys.argv[2]}/iris_landmark.tflite", "wb").write(data)
PY
echo "$out/iris_landmark.tflite"
