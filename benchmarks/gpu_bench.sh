#!/usr/bin/env bash
# Benchmarks 1-3 on one NVIDIA GPU: ViT-B/16-sized random weights (no download), bf16 autocast, SDPA attention,
# batch 32 / 128 / 256; prints samples/s and peak memory per variant and writes benchmarks/results/gpu.json.
# Self-contained: run from a clone on the GPU machine (about 3-6 minutes on an H100/H200-class GPU):
#   bash benchmarks/gpu_bench.sh
# It uses .venv/bin/python when `make install` made one, else python3 (which needs torch with CUDA and transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not available"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
timeout "${GPU_BENCH_TIMEOUT:-480}" "$PY" -m benchmarks.bench_gpu --device cuda --dtype bfloat16 --size vitb16 \
  --batch-sizes ${GPU_BENCH_BATCH_SIZES:-32 128 256} --regions 6 --warmup 3 --steps 10 "$@"
