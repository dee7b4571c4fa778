#!/usr/bin/env bash
# Download the wheels the GPU machine's image lacks into .whl/ (git-ignored), for benchmarks/gpu_render.py.
#
# That image (torch 2.11 + CUDA, transformers 5.17, no internet) has every dependency of the GPU
# check except diffusers and importlib_metadata; transformers is carried at our pinned version so
# that the renderer modules meet the same API as here. Pure-Python wheels, about 19 MB together.
# Versions are the ones in requirements/cpu.lock. docs/gpu-check.md says how to run the check there.
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i -m1 "^$1==" requirements/cpu.lock | cut -d= -f3; }
rm -rf .whl && mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  "diffusers==$(pin diffusers)" "transformers==$(pin transformers)" "importlib_metadata==$(pin importlib_metadata)"
du -sh .whl && ls .whl
