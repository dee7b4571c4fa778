#!/usr/bin/env bash
# On a CUDA machine with torch + transformers (e.g. the lent H200's image): run the renderer's GPU check.
# Installs the wheels of .whl/ (scripts/device-wheels.sh, run where pip reaches a registry) into a
# private directory, then runs benchmarks/dsf_cost.py (one layer call, then whole renders) and
# benchmarks/gpu_render.py (SD 1.5, then SDXL); the reports go to $1 (default: $OUT when set, else the current
# directory). Budget: about 12 minutes on one H200, compilation included; each of the four steps is
# one command of its own, to run alone where less device time is left.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${1:-${OUT:-.}}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/direct2v-site .whl/*.whl
  export PYTHONPATH="/tmp/direct2v-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"  # the renderer modules, without installing
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# One DSF layer call at SD 1.5's up_blocks.3 shape (512 px: 4096 tokens, 8 heads of 40), fp16, step
# by step, with the confidences on float32 copies as before 2026-12-06 beside them (~30 s).
python3 benchmarks/dsf_cost.py --layer --shape 2 8 8 4096 40 \
  | tee "$out_dir/dsf_layer.md" || echo "gpu-check: the DSF layer table failed; the render check runs on" >&2
# What DSF costs in a whole render, SD 1.5's sizes (random weights), 512 px, 100 steps: diffusers'
# Text2Video-Zero, ours m=inf, RVM, RVM+DSF, each in its own process (~2 min).
python3 benchmarks/dsf_cost.py --architecture sd15 --size 512 \
  --steps 100 --t0 90 --t1 95 | tee "$out_dir/dsf_cost.md" || echo "gpu-check: the DSF cost table failed" >&2
python3 benchmarks/gpu_render.py --out "$out_dir/gpu_render.json" \
  || echo "gpu-check: the render check failed; the SDXL rows run on" >&2
# SDXL 1.0's sizes (random weights), fp16, 1024 px, 8 frames, 50 steps: diffusers' Text2Video-Zero
# SDXL and ours (RVM+DSF), eager, seconds and peak memory each (~2 min).
exec python3 benchmarks/gpu_render.py --sdxl --out "$out_dir/gpu_render_sdxl.json"
