#!/usr/bin/env bash
# The embedded CPU demo: tiny random models + a synthetic visual-QA dataset, trained from
# scratch through both LLaVA stages, then scored on held-out questions, with a control that
# blanks every image (accuracy must drop to chance: the answers come from the image), and on
# POPE-style yes/no object questions (hallucination), with the same control.
# Needs no download. Run from the repository root after scripts/install.sh:
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}" TOKENIZERS_PARALLELISM=false
work=runs/demo
start=$(date +%s)

mllm make-tiny "$work/models" --image-size 32 --patch-size 8 --vision-layers 3 --llm-layers 3
mllm demo-data "$work/data" --num-align 12800 --num-instruct 9600 --num-test 100 --image-size 32
python scripts/train.py recipes/tiny/shapes_mlp.yaml
trained=$(date +%s)

eval_args=(--model "$work/shapes-mlp/instruct/final"
  --questions "$work/data/test/questions.jsonl" --image-folder "$work/data/images"
  --answers "$work/data/test/answers.jsonl")
# --restart: answer anew (a rerun after retraining must not reuse the previous answers)
mllm eval "${eval_args[@]}" --output "$work/predictions.jsonl" --restart | tee "$work/accuracy.txt"
mllm eval "${eval_args[@]}" --output "$work/predictions_blank.jsonl" --blank-images --restart \
  | tee "$work/accuracy_blank.txt"
# Hallucination: POPE's yes/no object questions on the test images (mllm/demo/pope.py)
pope_args=(--model "$work/shapes-mlp/instruct/final" --benchmark pope
  --data-root "$work/data/test" --restart)
mllm eval "${pope_args[@]}" --output "$work/pope.jsonl" | tee "$work/pope.txt"
mllm eval "${pope_args[@]}" --output "$work/pope_blank.jsonl" --blank-images \
  | tee "$work/pope_blank.txt"
end=$(date +%s)
echo "data + training: $((trained - start)) s; total: $((end - start)) s"
