"""GQA test-dev (balanced) in its published files, scored as LLaVA-1.5 scores it: the answer
with trailing periods stripped and lowercased (``scripts/convert_gqa_for_eval.py``), then
exact match against the gold answer, overall and per structural and semantic question type
(the accuracy lines of GQA's ``eval.py``; its consistency, validity, plausibility and grounding
need scene graphs and choices, and LLaVA does not report them).

Expected under ``--data-root`` (https://cs.stanford.edu/people/dorarad/gqa/download.html)::

    testdev_balanced_questions.json   {"<question id>": {"imageId", "question", "answer",
                                        "types": {"structural", "semantic", ...}}, ...}
    images/{imageId}.jpg

``split`` names the questions file: ``testdev_balanced`` (default) reads
``testdev_balanced_questions.json``; any other tier, e.g. ``val_balanced``, likewise.
"""

from __future__ import annotations

from collections import defaultdict
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
from mllm.eval.benchmarks.files import by_string_id, check_answers, read_json, require

DOWNLOAD = "download it from https://cs.stanford.edu/people/dorarad/gqa/download.html"


def normalize_gqa_answer(text: str) -> str:
    """LLaVA's conversion of a prediction for GQA's evaluation: trailing periods off, lowercase."""
    return text.rstrip(".").lower()


@BENCHMARKS.register("gqa")
class GQA(Benchmark):
    """GQA balanced questions; ``split`` is the tier (default ``testdev_balanced``)."""

    name = "gqa"

    @property
    def questions_file(self) -> Path:
        return self.root / f"{self.split or 'testdev_balanced'}_questions.json"

    def _records(self) -> dict[str, dict]:
        path = self.questions_file
        document = read_json(path, DOWNLOAD)
        if not isinstance(document, dict):
            raise BenchmarkDataError(f"{path}: expected a JSON object of question id -> question")
        for qid, record in document.items():
            where = f"{path}: question {qid}"
            require(record, ("imageId", "question", "answer", "types"), where)
            require(record["types"], ("structural", "semantic"), f"{where}.types")
        return document

    def questions(self) -> list[BenchmarkQuestion]:
        return [
            BenchmarkQuestion(
                question_id=qid,
                text=f"{record['question']}\n{SHORT_ANSWER}",
                image=self.root / "images" / f"{record['imageId']}.jpg",
                category=record["types"]["structural"],
            )
            for qid, record in self._records().items()
        ]

    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        """Exact-match accuracy, and per ``structural: T`` / ``semantic: T`` type."""
        records = self._records()
        check_answers(self.name, records, answers)
        given = by_string_id(answers)
        correct: list[bool] = []
        groups: dict[str, list[bool]] = defaultdict(list)
        for qid, record in records.items():
            hit = normalize_gqa_answer(given[qid]) == record["answer"]
            correct.append(hit)
            groups[f"structural: {record['types']['structural']}"].append(hit)
            groups[f"semantic: {record['types']['semantic']}"].append(hit)
        per_category = {
            name: {"accuracy": sum(values) / len(values)} for name, values in sorted(groups.items())
        }
        accuracy = sum(correct) / len(correct) if correct else 0.0
        return BenchmarkReport(self.name, {"accuracy": accuracy}, per_category, len(correct))
