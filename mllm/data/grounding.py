"""Referring-expression data (RefCOCO-style pixel boxes) as LLaVA conversation records with
MiniGPT-v2's task identifiers and boxes as text.

The grounding format, one object per image (a ``.json`` list or ``.jsonl``)::

    {"image": "train2014/COCO_train2014_000000580957.jpg", "width": 640, "height": 428,
     "refs": [{"bbox": [468.3, 0.91, 171.7, 116.12],          # COCO [x, y, w, h] in pixels
               "sentences": ["white dish in the top right corner", "bowl behind the others"]}]}

``id`` is optional. A ref's ``sentences`` may be strings or RefCOCO's ``{"raw": ..., "sent":
...}`` objects. Every (ref, sentence) becomes one record per task:

- ``refer`` (expression -> box): ``"<image>\\n[refer] give me the location of {sentence}"``,
  answered ``"{<x1><y1><x2><y2>}"`` on the 0-100 grid (:mod:`mllm.data.boxes`);
- ``identify`` (box -> expression): ``"<image>\\n[identify] what object is in this location
  {box}"``, answered with the sentence.

The first phrasing of each pool is MiniGPT-v2's evaluation prompt; others are drawn with
``seed``, as MiniGPT-v2 draws one per sample. Train with template ``minigpt_v2``. Command::

    python -m mllm.data.grounding refs.jsonl grounding.json --tasks refer identify
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mllm.data.boxes import box_from_xywh, format_box
from mllm.data.minigpt_v2 import task_instruction
from mllm.data.records import DataError, read_records

#: Instruction phrasings per task; ``{}`` is the sentence (refer) or the box (identify).
PHRASINGS: dict[str, tuple[str, ...]] = {
    "refer": (
        "give me the location of {}",
        "where is {} ?",
        "from this image, tell me the location of {}",
        "the location of {} is",
    ),
    "identify": (
        "what object is in this location {}",
        "identify the object present at this location {}",
        "what is it in {}",
    ),
}
GROUNDING_TASKS = tuple(PHRASINGS)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sentences(ref: Mapping[str, Any], where: str) -> list[str]:
    sentences = ref.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise DataError(f"{where}.sentences: must be a non-empty list of expressions")
    texts = []
    for index, sentence in enumerate(sentences):
        text = sentence.get("raw", sentence.get("sent")) if isinstance(sentence, dict) else sentence
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"{where}.sentences[{index}]: must be a non-empty string or an object with 'raw'"
            )
        texts.append(text.strip())
    return texts


def convert_record(
    record: Mapping[str, Any],
    where: str,
    *,
    tasks: Sequence[str] = ("refer",),
    rng: random.Random | None = None,
) -> list[dict]:
    """One grounding record as LLaVA records, one per (ref, sentence, task).

    Args:
        record: an image with ``image``, ``width``, ``height`` and ``refs``.
        where: ``"FILE: record N"``, the start of every error message.
        tasks: which of :data:`GROUNDING_TASKS` to write.
        rng: draws the phrasing; None always uses the first (MiniGPT-v2's evaluation prompt).

    Raises:
        DataError: a missing or mistyped field, or a box outside the image, naming
            ``where`` and the field (``refs[1].bbox``).
    """
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: is a {type(record).__name__}, not an object")
    for key in ("image", "width", "height", "refs"):
        if key not in record:
            raise DataError(f"{where}: no {key!r} field")
    if not isinstance(record["image"], str) or not record["image"]:
        raise DataError(f"{where}.image: must be a path relative to the image folder")
    width, height = record["width"], record["height"]
    for key, value in (("width", width), ("height", height)):
        if not _number(value) or value <= 0:
            raise DataError(f"{where}.{key}: must be a positive number of pixels, got {value!r}")
    if not isinstance(record["refs"], list):
        raise DataError(f"{where}.refs: must be a list")
    image_id = record.get("id", Path(record["image"]).stem)
    out = []
    for ref_index, ref in enumerate(record["refs"]):
        at = f"{where}.refs[{ref_index}]"
        if not isinstance(ref, Mapping):
            raise DataError(f"{at}: must be an object with 'bbox' and 'sentences'")
        bbox = ref.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_number, bbox)):
            raise DataError(f"{at}.bbox: must be 4 numbers [x, y, width, height] in pixels")
        try:
            box = format_box(box_from_xywh(tuple(bbox), width, height))
        except ValueError as err:
            raise DataError(f"{at}.bbox: {err}") from None
        for sentence_index, sentence in enumerate(_sentences(ref, at)):
            for task in tasks:
                pool = PHRASINGS[task]
                phrasing = rng.choice(pool) if rng is not None else pool[0]
                question, answer = (
                    (phrasing.format(sentence), box)
                    if task == "refer"
                    else (phrasing.format(box), sentence)
                )
                out.append(
                    {
                        "id": f"{image_id}-{ref_index}-{sentence_index}-{task}",
                        "image": record["image"],
                        "conversations": [
                            {"from": "human", "value": task_instruction(task, question)},
                            {"from": "gpt", "value": answer},
                        ],
                    }
                )
    return out


def as_one_conversation(records: Sequence[dict], record_id: str) -> dict:
    """Records of one image as one multi-turn record, the image marker in the first turn only:
    the tower runs once for all of the image's questions, and each reply is learned next to
    the others' (the red star's box, then the blue circle's)."""
    turns: list[dict] = []
    for index, record in enumerate(records):
        human, gpt = record["conversations"]
        value = human["value"] if index == 0 else human["value"].split("\n", 1)[1]
        turns += [{"from": "human", "value": value}, gpt]
    return {"id": record_id, "image": records[0]["image"], "conversations": turns}


def convert_grounding(
    source: str | Path,
    *,
    tasks: Sequence[str] = ("refer",),
    seed: int | None = 0,
    per_image: bool = False,
    max_turns: int | None = None,
) -> list[dict]:
    """Every record of a grounding file (``.json`` list or ``.jsonl``) as LLaVA records.

    Args:
        source: the grounding file.
        tasks: which of :data:`GROUNDING_TASKS` to write, each for every (ref, sentence).
        seed: seeds the phrasing draw; None keeps MiniGPT-v2's evaluation phrasing throughout.
        per_image: multi-turn records of one image and task (:func:`as_one_conversation`)
            instead of one single-turn record per question, as MiniGPT-v2 samples them: one
            per question, which opens it, followed by the image's other questions of the
            task in a drawn order (``max_turns`` in all). Each question thus opens a
            conversation once: a later turn can be answered by elimination (the box no earlier
            turn gave), and a question only ever asked late is never learned the way an
            evaluation asks it, as a first question. Tasks get records of their own: in one
            conversation a ``refer`` answer could be copied from an earlier ``identify``
            question about the same box, and the reverse.
        max_turns: the most questions in a ``per_image`` record (None: all of the image's);
            an image of n questions costs n records of up to ``max_turns`` turns.

    Raises:
        DataError: see :func:`convert_record`; also an unknown task or an unreadable file.
    """
    if max_turns is not None and (max_turns < 1 or not per_image):
        raise DataError(f"max_turns ({max_turns}) needs per_image records and must be >= 1")
    unknown = [task for task in tasks if task not in PHRASINGS]
    if unknown or not tasks:
        raise DataError(f"grounding tasks {list(tasks)}: choose from {', '.join(PHRASINGS)}")
    rng = random.Random(seed) if seed is not None else None
    records = read_records(source)
    out: list[dict] = []
    for index, record in enumerate(records):
        where = f"{source}: record {index}"
        if not per_image:
            out += convert_record(record, where, tasks=tasks, rng=rng)
            continue
        for task in tasks:
            converted = convert_record(record, where, tasks=(task,), rng=rng)  # validates it
            record_id = str(record.get("id", index))
            task_id = record_id if len(tasks) == 1 else f"{record_id}-{task}"
            for lead, first in enumerate(converted):
                others = converted[:lead] + converted[lead + 1 :]
                if rng is not None:
                    rng.shuffle(others)
                turns = [first, *others][:max_turns]
                out.append(as_one_conversation(turns, f"{task_id}-{lead}"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mllm.data.grounding SOURCE OUT.json [--tasks refer identify] [--seed N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m mllm.data.grounding",
        description="Convert RefCOCO-style boxes to LLaVA records with MiniGPT-v2 task tokens.",
    )
    parser.add_argument("source", type=Path, help="grounding file (.json or .jsonl)")
    parser.add_argument("out", type=Path, help="LLaVA records (.json)")
    parser.add_argument("--tasks", nargs="+", default=["refer"], choices=list(PHRASINGS))
    parser.add_argument("--seed", type=int, default=0, help="phrasing draw")
    parser.add_argument(
        "--per-image",
        action="store_true",
        help="multi-turn records per image and task, one opened by each question",
    )
    parser.add_argument(
        "--max-turns", type=int, default=None, help="most questions in a --per-image record"
    )
    args = parser.parse_args(argv)
    try:
        records = convert_grounding(
            args.source,
            tasks=args.tasks,
            seed=args.seed,
            per_image=args.per_image,
            max_turns=args.max_turns,
        )
    except (DataError, OSError) as err:
        parser.exit(2, f"error: {err}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1))
    print(f"{len(records)} records -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
