"""How many greedy answers of a model's hf-llava export, run by plain transformers, equal
``mllm eval``'s: a held-out question file answered both ways.

The transformers side is what a user of the exported folder writes: the processor's chat
template renders each question with its image, ``LlavaProcessor`` prepares the image and ids,
and ``LlavaForConditionalGeneration.generate`` answers (one question at a time). The mllm side
is ``mllm.eval.run.answer_questions`` (batched, left-padded). Prints the agreement, per
category, and the first differences.

CPU-sized (the shapes demo: mllm demo-data, then a trained checkpoint)::

    mllm export runs/demo/shapes-mlp/instruct/final --format hf-llava --out runs/demo/hf
    python scripts/export_agreement.py runs/demo/shapes-mlp/instruct/final runs/demo/hf \\
        demo_data/test/questions.jsonl demo_data/images --limit 800
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

import mllm
from mllm.eval.run import answer_questions, read_questions
from mllm.inference.inputs import read_image


def transformers_answer(model, processor, image, question: str, max_new_tokens: int) -> str:
    """The export's greedy answer, cut at the first EOS and stripped as mllm cuts it."""
    content = [{"type": "image"}, {"type": "text", "text": question}]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = ids[0, inputs["input_ids"].shape[1] :]
    eos = processor.tokenizer.eos_token
    return processor.decode(new, skip_special_tokens=False).split(eos)[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the mllm checkpoint that was exported")
    parser.add_argument("export", help="its hf-llava folder")
    parser.add_argument("questions", type=Path, help="LLaVA question file (JSONL)")
    parser.add_argument("image_folder", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--backend", default=None, help="image processor backend (pil, torchvision); default: "
        "transformers' choice (torchvision where installed)"
    )  # fmt: skip
    args = parser.parse_args()

    questions = read_questions(args.questions)[: args.limit]
    loaded = mllm.load(args.checkpoint)
    ours = answer_questions(
        loaded, questions, args.image_folder, max_new_tokens=args.max_new_tokens
    )
    model = LlavaForConditionalGeneration.from_pretrained(args.export).eval()
    options = {} if args.backend is None else {"backend": args.backend}
    processor = AutoProcessor.from_pretrained(args.export, **options)
    per_category: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    differences = []
    for question, answer in zip(questions, ours, strict=True):
        image = read_image(args.image_folder / question["image"])
        theirs = transformers_answer(model, processor, image, question["text"], args.max_new_tokens)
        counts = per_category[question.get("category", "-")]
        counts[0] += theirs == answer["text"]
        counts[1] += 1
        if theirs != answer["text"]:
            differences.append({"question_id": question["question_id"], "mllm": answer["text"],
                                "transformers": theirs})  # fmt: skip
    agree = sum(c[0] for c in per_category.values())
    print(f"image processor: {type(processor.image_processor).__name__}")
    print(f"agree: {agree}/{len(questions)}")
    for category, (same, total) in sorted(per_category.items()):
        print(f"  {category}: {same}/{total}")
    for difference in differences[:10]:
        print(json.dumps(difference))


if __name__ == "__main__":
    main()
