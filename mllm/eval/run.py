"""LLaVA-format evaluation: read a question file, answer it with a model (LLaVA's
``model_vqa`` loop), format the score; ``mllm eval`` (``mllm.commands.eval``) runs it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from mllm.inference import GenerationRequest, LoadedModel, generate
from mllm.inference.inputs import image_question, read_image


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


def format_score(result: dict, blank: bool = False) -> str:
    label = "accuracy (blank images)" if blank else "accuracy"
    lines = [f"{label}: {100 * result['accuracy']:.1f}% ({result['correct']}/{result['count']})"]
    for category, values in sorted(result.get("per_category", {}).items()):
        lines.append(
            f"  {category}: {100 * values['accuracy']:.1f}% ({values['correct']}/{values['count']})"
        )
    return "\n".join(lines)
