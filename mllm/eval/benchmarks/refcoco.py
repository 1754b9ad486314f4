"""RefCOCO, RefCOCO+ and RefCOCOg referring-expression grounding, in MiniGPT-v2's evaluation
files, scored as accuracy at IoU >= 0.5 (the standard REC metric, "Acc@0.5").

Expected under ``--data-root`` (MiniGPT-v2's ``eval_scripts/eval_data``; COCO train2014
images, which RefCOCO's val/test splits are drawn from)::

    refcoco_val.json   (or refcoco/refcoco_val.json)   also _testA, _testB; refcoco+_*, refcocog_val/test
    train2014/COCO_train2014_000000580957.jpg

Each file is a JSON list of ``{"img_id", "sents", "bbox": [x, y, w, h] (pixels), "height",
"width"}``; the image is ``ROOT/{image}`` when a record gives ``image``, else MiniGPT-v2's
``{img_id[:27]}.jpg`` at ``ROOT`` or ``ROOT/train2014``. Question ids are ``"{split}/{index}"``
(``img_id`` repeats across a ref's sentences). The prompt is MiniGPT-v2's: ``"[refer] give me
the location of {sents}"``; train with its template (``minigpt_v2``) for the task identifier.

Scoring: the first ``{<x1><y1><x2><y2>}`` in the answer (:func:`mllm.data.boxes.parse_box`) is
scaled from the 0-100 grid to the image's pixels and compared with the ground-truth box; a hit
is IoU >= 0.5 and an answer without a box is a miss. MiniGPT-v2's ``eval_ref.py`` differs in
two details: it counts IoU > 0.5 on inclusive pixel boxes (each side + 1 px), and it only reads
an answer that starts with the box. Headline: ``accuracy``, the share of answers that hold a box
(``parsed``) and the ``mean_iou``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from mllm.data.boxes import Box, iou, parse_box
from mllm.eval.benchmarks.base import (
    BENCHMARKS,
    Benchmark,
    BenchmarkDataError,
    BenchmarkQuestion,
    BenchmarkReport,
    QuestionId,
)
from mllm.eval.benchmarks.files import by_string_id, check_answers, read_json, require

PROMPT = "[refer] give me the location of {}"
IOU_THRESHOLD = 0.5
DOWNLOAD = "MiniGPT-v2's files are in github.com/Vision-CAIR/MiniGPT-4, eval_scripts/eval_data"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ground_truth_box(record: Mapping, where: str) -> Box:
    """The record's ``bbox`` ``[x, y, w, h]`` as corners, in pixels.

    Raises:
        BenchmarkDataError: a box that is not four numbers with a non-negative size, or an
            image size that is not positive.
    """
    bbox = record["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_number, bbox)):
        raise BenchmarkDataError(f"{where}: bbox must be 4 numbers [x, y, w, h] in pixels")
    x, y, w, h = bbox
    if w < 0 or h < 0:
        raise BenchmarkDataError(f"{where}: bbox {bbox} has a negative size")
    for key in ("width", "height"):
        if not _number(record[key]) or record[key] <= 0:
            raise BenchmarkDataError(f"{where}: {key} must be a positive number of pixels")
    return Box(x, y, x + w, y + h)


def answer_iou(answer: str, truth: Box, width: float, height: float) -> float | None:
    """IoU of the answer's first box (0-100 grid, scaled to pixels) with ``truth``; None when
    the answer holds no box."""
    box = parse_box(answer)
    return None if box is None else iou(box.to_pixels(width, height), truth)


@BENCHMARKS.register("refcoco")
class RefCOCO(Benchmark):
    """RefCOCO (UNC splits); ``split`` one of :attr:`known_splits`, ``val`` by default."""

    name = "refcoco"
    max_new_tokens = 32  # "{<100><100><100><100>}" is 22 tokens when digits are split
    known_splits: ClassVar[tuple[str, ...]] = ("val", "testA", "testB")

    def question_file(self) -> Path:
        """``ROOT/{name}_{split}.json``, or MiniGPT-v2's ``ROOT/{name}/{name}_{split}.json``."""
        filename = f"{self.name}_{self.split}.json"
        nested = self.root / self.name / filename
        return nested if nested.is_file() else self.root / filename

    def image_path(self, record: Mapping) -> Path:
        if record.get("image"):
            return self.root / record["image"]
        filename = f"{str(record['img_id'])[:27]}.jpg"  # "COCO_train2014_000000580957"
        direct = self.root / filename
        return direct if direct.is_file() else self.root / "train2014" / filename

    def _records(self) -> dict[str, tuple[dict, Box]]:
        """``"{split}/{index}"`` -> (record, ground-truth pixel box), each checked."""
        path = self.question_file()
        document = read_json(path, DOWNLOAD)
        if not isinstance(document, list):
            raise BenchmarkDataError(f"{path}: expected a JSON list of referring expressions")
        records = {}
        for index, record in enumerate(document):
            where = f"{path}: record {index}"
            require(record, ("img_id", "sents", "bbox", "height", "width"), where)
            if not isinstance(record["sents"], str) or not record["sents"].strip():
                raise BenchmarkDataError(f"{where}: sents must be a non-empty string")
            records[f"{self.split}/{index}"] = (record, ground_truth_box(record, where))
        return records

    def questions(self) -> list[BenchmarkQuestion]:
        return [
            BenchmarkQuestion(
                question_id=qid,
                text=PROMPT.format(record["sents"].strip()),
                image=self.image_path(record),
                category=self.split,
            )
            for qid, (record, _) in self._records().items()
        ]

    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        """Accuracy at IoU >= 0.5, the share of answers with a box, and the mean IoU (0 for
        an answer without a box)."""
        records = self._records()
        check_answers(self.name, records, answers)
        given = by_string_id(answers)
        hits = parsed = 0
        total_iou = 0.0
        for qid, (record, truth) in records.items():
            value = answer_iou(given[qid], truth, record["width"], record["height"])
            if value is None:
                continue
            parsed += 1
            total_iou += value
            hits += value >= IOU_THRESHOLD
        count = len(records)
        metrics = {
            "accuracy": hits / count if count else 0.0,
            "parsed": parsed / count if count else 0.0,
            "mean_iou": total_iou / count if count else 0.0,
        }
        return BenchmarkReport(self.name, metrics, {self.split: dict(metrics)}, count)


@BENCHMARKS.register("refcoco+")
class RefCOCOPlus(RefCOCO):
    """RefCOCO+ (no location words in the expressions); same files and metric."""

    name = "refcoco+"


@BENCHMARKS.register("refcocog")
class RefCOCOg(RefCOCO):
    """RefCOCOg (UMD splits: longer expressions); same files and metric."""

    name = "refcocog"
    known_splits: ClassVar[tuple[str, ...]] = ("val", "test")
