#!/usr/bin/env bash
# The whole test suite: static checks of the Docker files, then pytest (real vLLM CPU servers included).
set -euo pipefail
cd "$(dirname "$0")/.."
# Keep every cache inside the work tree; nothing may reach the Hugging Face Hub.
export HF_HOME="$PWD/.cache/hf" VLLM_CACHE_ROOT="$PWD/.cache/vllm" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       VLLM_HOST_IP=127.0.0.1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
if [ -x scripts/check-docker.sh ]; then
  bash scripts/check-docker.sh
fi
.venv/bin/python -m pytest -p no:cacheprovider -q -rs --durations=15 "$@"
