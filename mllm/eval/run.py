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
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from mllm.eval.scoring import score
from mllm.inference import GenerationRequest, LoadedModel, generate
from mllm.inference.inputs import image_question, read_image
from mllm.inference.loading import ModelLoadError, add_model_arguments, load_model_from_args


def read_questions(path: Path) -> list[dict]:
    questions = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line_number}: not valid JSON: {exc}") from None
        for key in ("question_id", "text"):
            if key not in record:
                raise ValueError(f"{path}:{line_number}: missing {key!r}")
        questions.append(record)
    return questions


def _batches(items: list[dict], size: int) -> Iterator[list[dict]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def answer_questions(
    loaded: LoadedModel,
    questions: list[dict],
    image_folder: Path | None,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    blank_images: bool = False,
) -> list[dict]:
    """LLaVA's ``model_vqa`` loop: ``<image>\\n`` + question, greedy, one answer per question.

    With ``blank_images`` every image is replaced by a uniform gray one of the same size:
    a control that shows how much of the accuracy comes from the image.
    """
    model_id = str(loaded.recipe.name)
    predictions = []
    for batch in _batches(questions, batch_size):
        requests = []
        for record in batch:
            images: list[Image.Image] = []
            text = record["text"]
            if record.get("image"):
                if image_folder is None:
                    raise ValueError(
                        f"question {record['question_id']} has an image; pass --image-folder"
                    )
                image = read_image(image_folder / record["image"])
                if blank_images:
                    image = Image.new("RGB", image.size, (128, 128, 128))
                images.append(image)
                text = image_question(loaded, text)
            requests.append(GenerationRequest([{"from": "human", "value": text}], images))
        answers = generate(loaded, requests, max_new_tokens=max_new_tokens)
        for record, answer in zip(batch, answers, strict=True):
            predictions.append(
                {
                    "question_id": record["question_id"],
                    "prompt": record["text"],
                    "text": answer,
                    "model_id": model_id,
                }
            )
    return predictions


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


def format_score(result: dict, blank: bool = False) -> str:
    label = "accuracy (blank images)" if blank else "accuracy"
    lines = [f"{label}: {100 * result['accuracy']:.1f}% ({result['correct']}/{result['count']})"]
    for category, values in sorted(result.get("per_category", {}).items()):
        lines.append(
            f"  {category}: {100 * values['accuracy']:.1f}% ({values['correct']}/{values['count']})"
        )
    return "\n".join(lines)
