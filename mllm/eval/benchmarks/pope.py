"""POPE (object hallucination by yes/no questions) in its published files, scored as POPE's
``evaluate.py`` and LLaVA's ``eval_pope.py`` score it.

Expected under ``--data-root`` (question files from https://github.com/RUCAIBox/POPE,
``output/coco/``; COCO val2014 images)::

    coco_pope_random.json        JSON lines: {"question_id", "image", "text", "label": "yes"|"no"}
    coco_pope_popular.json
    coco_pope_adversarial.json
    val2014/COCO_val2014_000000310196.jpg

Files are ``{source}_pope_{split}.json``: POPE's ``coco``, ``aokvqa`` and ``gqa`` sources and
the demo's ``shapes`` (:mod:`mllm.demo.pope`) all read; the folder must hold one source. A
record's ``image`` is looked up at ``ROOT/{image}``, then ``ROOT/val2014/{image}``.

``split``: ``random``, ``popular``, ``adversarial``, or None (default) for all three. Question
ids are ``"{split}/{question_id}"`` (each file numbers its questions from 1). The prompt is
LLaVA-1.5's: ``"{text}\\nAnswer the question using a single word or phrase."``.

Parsing an answer (:func:`parse_yes_no`): keep the text before its first period, drop commas,
split on spaces; "no" if a word is ``No``, ``no`` or ``not``, otherwise "yes". Metrics per
split: accuracy, precision, recall and F1 of "yes" (the positive class), and the ratio of
"yes" answers; a precision or recall with nothing to count is 0 here (the reference divides by
zero). With several splits, the headline numbers are the mean over the splits.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mllm.eval.benchmarks.base import (
    BENCHMARKS,
    SHORT_ANSWER,
    Benchmark,
    BenchmarkDataError,
    BenchmarkQuestion,
    BenchmarkReport,
    QuestionId,
)
from mllm.eval.benchmarks.files import by_string_id, check_answers, read_jsonl, require

SPLITS = ("random", "popular", "adversarial")
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
DOWNLOAD = "POPE's question files are at https://github.com/RUCAIBox/POPE (output/coco/)"


def parse_yes_no(text: str) -> str:
    """POPE's reading of a free-form answer as ``"yes"`` or ``"no"``."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def pope_metrics(predicted: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (of "yes") and the yes ratio of parsed answers."""
    pairs = list(zip(predicted, labels, strict=True))
    tp = sum(p == "yes" and gold == "yes" for p, gold in pairs)
    fp = sum(p == "yes" and gold == "no" for p, gold in pairs)
    tn = sum(p == "no" and gold == "no" for p, gold in pairs)
    fn = sum(p == "no" and gold == "yes" for p, gold in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = len(pairs)
    return {
        "accuracy": (tp + tn) / total if total else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / total if total else 0.0,
    }


@BENCHMARKS.register("pope")
class POPE(Benchmark):
    """POPE's yes/no questions; ``split`` one of :data:`SPLITS`, or None for all three."""

    name = "pope"

    def __init__(self, root: Path, split: str | None = None) -> None:
        super().__init__(root, split)
        if split is not None and split not in SPLITS:
            raise BenchmarkDataError(
                f"pope: unknown split {split!r}; choose one of: {', '.join(SPLITS)} "
                "(or none for all three)"
            )

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS if self.split is None else (self.split,)

    def question_file(self, split: str) -> Path:
        """``ROOT/{source}_pope_{split}.json`` for the one source the folder holds."""
        found = sorted(self.root.glob(f"*_pope_{split}.json"))
        if not found:
            raise BenchmarkDataError(
                f"{self.root / f'coco_pope_{split}.json'}: file not found; {DOWNLOAD}"
            )
        if len(found) > 1:
            names = ", ".join(path.name for path in found)
            raise BenchmarkDataError(f"{self.root}: several POPE sources for {split}: {names}")
        return found[0]

    def image_path(self, image: str) -> Path:
        direct = self.root / image
        return direct if direct.is_file() else self.root / "val2014" / image

    def _records(self) -> dict[str, tuple[str, dict]]:
        """``"{split}/{question_id}"`` -> (split, record), each checked."""
        records: dict[str, tuple[str, dict]] = {}
        for split in self.splits:
            for where, record in read_jsonl(self.question_file(split), DOWNLOAD):
                require(record, ("question_id", "image", "text", "label"), where)
                if record["label"] not in ("yes", "no"):
                    raise BenchmarkDataError(
                        f"{where}: label must be 'yes' or 'no', got {record['label']!r}"
                    )
                qid = f"{split}/{record['question_id']}"
                if qid in records:
                    raise BenchmarkDataError(f"{where}: question_id repeats an earlier one")
                records[qid] = (split, record)
        return records

    def questions(self) -> list[BenchmarkQuestion]:
        return [
            BenchmarkQuestion(
                question_id=qid,
                text=f"{record['text']}\n{SHORT_ANSWER}",
                image=self.image_path(record["image"]),
                category=split,
            )
            for qid, (split, record) in self._records().items()
        ]

    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        """Per split: accuracy, precision, recall, f1, yes_ratio; headline: their mean."""
        records = self._records()
        check_answers(self.name, records, answers)
        given = by_string_id(answers)
        per_split = {}
        for split in self.splits:
            items = [(qid, record) for qid, (s, record) in records.items() if s == split]
            predicted = [parse_yes_no(given[qid]) for qid, _ in items]
            per_split[split] = pope_metrics(predicted, [record["label"] for _, record in items])
        headline = {
            metric: sum(values[metric] for values in per_split.values()) / len(per_split)
            for metric in METRICS
        }
        return BenchmarkReport(self.name, headline, per_split, len(records))
