#!/usr/bin/env bash
# LLaVA-NeXT's anyres on CPU, with its control: tiny random models trained from scratch to name
# the 1-px texture in a small square (mllm/demo/resolution.py), once with anyres tiles
# (recipes/tiny/resolution_anyres.yaml) and once at the tower's 32 px (resolution_base.yaml:
# same models, data, steps, seed). Halving erases the texture, so only anyres can answer; a
# blank-image control shows the anyres model's answers come from the image. Prints held-out
# accuracy (exact match, as mllm eval scores the shapes demo) and the time of each run.
# Needs no download. Run from the repository root after scripts/install.sh:
#   OMP_NUM_THREADS=1 bash scripts/resolution_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}" TOKENIZERS_PARALLELISM=false
work=runs/resolution
data="$work/data"

mllm make-tiny "$work/models" --image-size 32 --patch-size 8 --vision-layers 3 --llm-layers 3
python -m mllm.demo.resolution "$data" --num-train 8000 --num-test 200

declare -A seconds
for run in anyres base; do  # one after the other: each run is timed alone
  start=$(date +%s)
  python scripts/train.py "recipes/tiny/resolution_$run.yaml"
  seconds[$run]=$(( $(date +%s) - start ))
done

eval_args=(--questions "$data/test/questions.jsonl" --image-folder "$data/images"
  --answers "$data/test/answers.jsonl" --restart)
for run in anyres base; do
  mllm eval --model "$work/$run/train/final" "${eval_args[@]}" --output "$work/$run.jsonl" \
    | tee "$work/$run.txt"
done
mllm eval --model "$work/anyres/train/final" "${eval_args[@]}" --blank-images \
  --output "$work/anyres_blank.jsonl" | tee "$work/anyres_blank.txt"

echo
for run in anyres base; do
  echo "$run: $(head -1 "$work/$run.txt"), training ${seconds[$run]} s"
done
echo "anyres, blank images: $(head -1 "$work/anyres_blank.txt")"
