#!/usr/bin/env bash
# Make the side venv that runs the original LLaVA code (PyPI llava-torch 1.2.2.post1, which
# needs transformers 4.36 and so cannot live in mllm's venv). Used by
# scripts/llava_train_driver.py (`mllm bench --llava-python VENV/bin/python`) and
# scripts/llava_label_driver.py (scripts/make_llava_label_fixtures.py); CI does not need it.
#   bash scripts/make_llava_side_venv.sh [VENV]        # VENV defaults to /tmp/llava-venv
# torch==2.13.0 goes in first (the local CPU build, as scripts/install.sh does) and must stay:
# llava-torch is installed with --no-deps because its own pins (torch 2.1, deepspeed, bitsandbytes,
# gradio, ...) would replace it. The script fails if anything replaced it. Versions are those the
# benchmark of 2026-12-05 ran with (docs/benchmarks.md).
set -euo pipefail
venv="${1:-/tmp/llava-venv}"
python3.11 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" transformers==4.36.2 tokenizers==0.15.0 accelerate==0.21.0 peft==0.4.0 \
  sentencepiece==0.1.99 protobuf==4.25.3 huggingface_hub==0.36.2 safetensors==0.8.0 \
  pillow==13.0.0 numpy==2.4.6
"${pip[@]}" --no-deps llava-torch==1.2.2.post1
"$venv/bin/python" - <<'EOF'
import torch, transformers, llava.train.train  # noqa: F401  (LLaVA's train() imports)
assert torch.__version__.startswith("2.13.0"), f"torch was replaced: {torch.__version__}"
print(f"side venv ready: torch {torch.__version__}, transformers {transformers.__version__}")
EOF
echo "use: python scripts/bench.py --llava-python $venv/bin/python"
