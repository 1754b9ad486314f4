#!/usr/bin/env bash
# Install mllm and its dependencies into the active Python environment.
# torch is installed first and pinned: any later requirement that merely says "torch" would
# otherwise pull a multi-GB CUDA build onto a CPU-only machine (and replace a working one).
#   python3 -m venv .venv && . .venv/bin/activate && bash scripts/install.sh [EXTRAS]
# EXTRAS defaults to "dev" (tests, lint, DeepSpeed); GPU machines may add "flash-attn,bitsandbytes".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[${extras}]"
python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch was replaced: {torch.__version__}"
print(f"torch {torch.__version__} (cuda: {torch.cuda.is_available()})")
PY
