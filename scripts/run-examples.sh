#!/usr/bin/env bash
# The main job on the embedded defaults: set up, build the local default models once, then run the
# Prefect flow over prompts_in/examples.txt. Extra arguments go to `direct2v run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/direct2v models build
exec .venv/bin/direct2v run prompts_in/examples.txt "$@"
