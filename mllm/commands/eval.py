"""``mllm eval``: answer a LLaVA-format question file with a model, then score it.

Questions: JSONL of ``{question_id, image, text[, category]}`` (images relative to a folder);
answers written in LLaVA's format ``{question_id, prompt, text, model_id}``. The model is any
folder ``mllm chat`` loads (an mllm checkpoint, an original LLaVA or a transformers Llava
folder). CPU-sized command::

    mllm eval --model runs/demo/shapes-mlp/instruct/final \\
        --questions runs/demo/data/test/questions.jsonl --image-folder runs/demo/data/images \\
        --output runs/demo/predictions.jsonl --answers runs/demo/data/test/answers.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from mllm.commands.model_options import ModelLoadError, add_model_arguments, load_model_from_args
from mllm.eval.run import answer_questions, format_score, read_questions
from mllm.eval.scoring import score


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mllm eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--questions", required=True, type=Path)
    parser.add_argument("--image-folder", type=Path)
    parser.add_argument("--output", required=True, type=Path, help="answers JSONL to write")
    parser.add_argument("--answers", type=Path, help="gold answers JSONL; prints accuracy")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--blank-images", action="store_true", help="control: replace images by gray"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    try:
        questions = read_questions(args.questions)  # before the slow part
        loaded = load_model_from_args(args)
        predictions = answer_questions(
            loaded,
            questions,
            args.image_folder,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            blank_images=args.blank_images,
        )
    except (ModelLoadError, ValueError, OSError) as exc:
        parser.exit(2, f"mllm eval: {exc}\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    if args.answers:
        result = score(args.output, args.answers, args.questions)
        print(format_score(result, blank=args.blank_images))
    return 0
