#!/usr/bin/env bash
# Install mllm and its dependencies into the active Python environment.
# torch is installed first and pinned: any later requirement that merely says "torch" would
# otherwise pull a multi-GB CUDA build onto a CPU-only machine (and replace a working one).
# Every other package is held to constraints.txt, the exact versions the test suite passed
# with, so a fresh install is the tested install.
#   python3 -m venv .venv && . .venv/bin/activate && bash scripts/install.sh [EXTRAS] [--latest]
# EXTRAS defaults to "dev,lmms-eval" (tests, lint, DeepSpeed, and lmms-eval for its test);
# GPU machines may add "flash-attn,bitsandbytes".
#   --latest               install the newest releases instead of constraints.txt
#   --write-constraints    write the active environment's versions to constraints.txt (after
#                          the suite passed on a --latest install) and exit
set -euo pipefail
cd "$(dirname "$0")/.."
extras="dev,lmms-eval"
latest=0
for arg in "$@"; do
  case "$arg" in
    --latest) latest=1 ;;
    --write-constraints)
      {
        sed -n '1,3p' constraints.txt
        python -m pip freeze --exclude-editable | grep -v '^mllm' | sed 's/+cpu$//'
      } > constraints.txt.new
      mv constraints.txt.new constraints.txt
      echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
      exit 0
      ;;
    -*) echo "unknown option $arg (use --latest or --write-constraints)" >&2; exit 2 ;;
    *) extras="$arg" ;;
  esac
done
pins=(-c constraints.txt)
if [[ $latest == 1 ]]; then
  pins=()
  echo "installing the newest releases (not the tested constraints.txt)"
fi
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet "${pins[@]}" -e ".[${extras}]"
if [[ ",${extras}," == *",lmms-eval,"* ]]; then
  # lmms-eval's own requirements pull torchvision, wandb and a CUDA torch: install it alone;
  # the extra "lmms-eval" above brought what its evaluator and CLI import.
  python -m pip install --quiet --no-deps "lmms-eval==0.7.3"
fi
python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch was replaced: {torch.__version__}"
print(f"torch {torch.__version__} (cuda: {torch.cuda.is_available()})")
PY
