# Sourced by the entry scripts: thread counts and offline switches every run needs.
# torch on few shared cores slows 10-50x unless the thread count is set explicitly. (Do not set
# MKL_NUM_THREADS: it oversubscribes the core vLLM's CPU worker pins its threads to and stalls it.)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
export VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# Python's bytecode cache, kept: where the machine sets PYTHONDONTWRITEBYTECODE (this project's
# machines do), every process would compile torch, vLLM, transformers... again (measured: the test
# suite took 1700 s so, against ~900 s). Unset, the first process to import a module writes its
# cache: ~16 s for the ~6,400 modules a run imports, instead of compiling all 28,700 files of
# .venv at set-up (38 s on 2 cores).
unset PYTHONDONTWRITEBYTECODE
