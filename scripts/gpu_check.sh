#!/usr/bin/env bash
# The project's check on a GPU machine, in one run (planned for under 8 minutes on one H100):
#   1. install: scripts/install.sh with the bitsandbytes extra; then flash-attn, given
#      FLASH_ATTN_INSTALL_S seconds (default 150: enough for a prebuilt wheel, not for a
#      source build); without it the tests and the run use SDPA's flash backend
#   2. the gpu-marked tests (tests/test_gpu.py, and the flash-attn ones in test_attention.py
#      and test_packing.py), skip reasons shown
#   3. a ~1.2B-parameter LLaVA-shaped model built from config (ViT-L/14-336 tower, 576 image
#      tokens, packing on, bf16) trained for 35 steps: tokens/s, MFU, peak memory
#      (python -m mllm.bench.gpu_throughput)
# Figures and logs go to runs/gpu_check/ (or $GPU_CHECK_OUT). Exit status: non-zero when a
# phase failed; every phase runs regardless.
#
#   bash scripts/gpu_check.sh                 # on the GPU machine, in the project's venv
#   bash scripts/gpu_check.sh --skip-install  # the venv is ready (e.g. no network there)
#   bash scripts/gpu_check.sh --dry-run       # CPU, seconds (CI): syntax, imports, the gpu
#                                             # tests collected and skipped, the throughput
#                                             # run shrunk to two steps
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
install=1
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1; install=0 ;;
    --skip-install) install=0 ;;
    *) echo "unknown option $arg (use --dry-run or --skip-install)" >&2; exit 2 ;;
  esac
done
out=${GPU_CHECK_OUT:-runs/gpu_check}
mkdir -p "$out"
started=$SECONDS
failed=()
phase() { echo; echo "== [$((SECONDS - started)) s] $*"; }

if [[ $install == 1 ]]; then
  phase "install (scripts/install.sh dev,bitsandbytes)"
  if ! bash scripts/install.sh dev,bitsandbytes; then
    # No network (or an index outage): go on with what is installed, if it is enough.
    python -c "import mllm, torch; assert torch.cuda.is_available()" \
      || { echo "install failed and the environment cannot run the check" >&2; exit 1; }
    echo "install failed; going on with the installed environment" >&2
  fi
  phase "flash-attn (at most ${FLASH_ATTN_INSTALL_S:-150} s)"
  if python -c "import flash_attn" 2>/dev/null; then
    echo "flash-attn is installed"
  elif MAX_JOBS=8 timeout "${FLASH_ATTN_INSTALL_S:-150}" \
      python -m pip install --quiet --no-build-isolation "flash-attn>=2.6"; then
    echo "flash-attn installed"
  else
    echo "flash-attn could not be installed in time: attention runs on SDPA's flash backend"
  fi
fi

phase "environment"
python - <<'PY'
import torch

from mllm.models.attention import flash_attention_unavailable_reason
from mllm.models.quantization import check_quantization

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
print(f"flash_attention_2: {flash_attention_unavailable_reason() or 'available'}")
try:
    check_quantization("4bit")
    print("bitsandbytes 4-bit: available")
except Exception as exc:  # reported, not fatal: its tests skip and say why
    print(f"bitsandbytes 4-bit: {exc}")
PY

phase "gpu-marked tests"
tests=(tests/test_gpu.py tests/test_attention.py tests/test_packing.py)
if ! python -m pytest -q -m gpu -rs -p no:cacheprovider "${tests[@]}" 2>&1 \
    | tee "$out/tests.log"; then
  failed+=(tests)
fi

phase "throughput of the ~1.2B LLaVA-shaped model"
bench=(python -m mllm.bench.gpu_throughput --json "$out/throughput.json")
if [[ $dry == 1 ]]; then
  bench+=(--dry-run --workdir "$(mktemp -d)")
fi
if ! "${bench[@]}" 2>&1 | tee "$out/throughput.log"; then
  failed+=(throughput)
fi

phase "done"
if (( ${#failed[@]} )); then
  echo "FAILED: ${failed[*]} (logs in $out/)"
  exit 1
fi
echo "all phases passed (logs and figures in $out/)"
