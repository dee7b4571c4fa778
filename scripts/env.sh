# Sourced by the entry scripts: thread counts and offline switches every run needs.
# torch on few shared cores slows 10-50x unless the thread count is set explicitly. (Do not set
# MKL_NUM_THREADS: it oversubscribes the core vLLM's CPU worker pins its threads to and stalls it.)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
export VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
