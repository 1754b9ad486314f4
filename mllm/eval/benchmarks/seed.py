"""SEED-Bench (image split): multiple-choice questions in 9 image dimensions, scored as LLaVA-1.5
scores them.

Reads the published release::

    ROOT/SEED-Bench.json     {"question_type": {name: id}, "questions": [{question_id, question,
                              choice_a..choice_d, answer, question_type_id, data_type, data_id}]}
    ROOT/SEED-Bench-image/{data_id}

Only ``data_type == "image"`` questions are asked. The prompt is LLaVA's: question, options
``A. ...`` to ``D. ...``, the multiple-choice suffix. An answer counts when, stripped, it is
the right letter itself (LLaVA's ``scripts/convert_seed_for_submission.py``). Accuracy overall
and per question type (dimension).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from mllm.eval.benchmarks.base import (
    BENCHMARKS,
    Benchmark,
    BenchmarkDataError,
    BenchmarkQuestion,
    BenchmarkReport,
    QuestionId,
)
from mllm.eval.benchmarks.choices import exact_letter, mc_prompt, require_answers

_FIELDS = ("question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer")


@BENCHMARKS.register("seed")
class SEEDBench(Benchmark):
    """SEED-Bench's image questions (``split`` unused)."""

    name = "seed"

    def __init__(self, root: Path, split: str | None = None) -> None:
        super().__init__(root, split)
        self._records: dict[str, tuple[dict, str]] | None = None

    def records(self) -> dict[str, tuple[dict, str]]:
        """Question id -> (record, dimension name), image questions only."""
        if self._records is not None:
            return self._records
        path = self.root / "SEED-Bench.json"
        if not path.is_file():
            raise BenchmarkDataError(f"seed: {path} is missing (SEED-Bench's annotation file)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            types = {int(v): k for k, v in data["question_type"].items()}
            records = data["questions"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BenchmarkDataError(
                f"seed: {path} is not SEED-Bench's format ('question_type', 'questions'): {exc}"
            ) from None
        kept = {}
        for number, record in enumerate(records):
            where = f"seed: {path}, question {number}"
            if not isinstance(record, dict) or record.get("data_type") != "image":
                if not isinstance(record, dict):
                    raise BenchmarkDataError(f"{where}: not an object")
                continue
            missing = [f for f in (*_FIELDS, "data_id", "question_type_id") if f not in record]
            if missing:
                raise BenchmarkDataError(f"{where}: lacks {missing}")
            if record["answer"] not in ("A", "B", "C", "D"):
                raise BenchmarkDataError(f"{where}: answer {record['answer']!r} is not A-D")
            kind = types.get(int(record["question_type_id"]), str(record["question_type_id"]))
            kept[str(record["question_id"])] = (record, kind)
        self._records = kept
        return kept

    def questions(self) -> list[BenchmarkQuestion]:
        questions = []
        for qid, (record, kind) in self.records().items():
            options = [record[f"choice_{c}"] for c in "abcd"]
            image = self.root / "SEED-Bench-image" / record["data_id"]
            questions.append(
                BenchmarkQuestion(qid, mc_prompt(record["question"], options), image, kind)
            )
        return questions

    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        records = self.records()
        answers = {str(qid): text for qid, text in answers.items()}
        require_answers(self.name, list(records), answers)
        groups: dict[str, list[bool]] = defaultdict(list)
        for qid, (record, kind) in records.items():
            groups[kind].append(exact_letter(answers[qid]) == record["answer"])
        hits = [hit for group in groups.values() for hit in group]
        per_category = {
            kind: {"accuracy": sum(group) / len(group), "count": len(group)}
            for kind, group in sorted(groups.items())
        }
        accuracy = sum(hits) / len(hits) if hits else 0.0
        return BenchmarkReport(self.name, {"accuracy": accuracy}, per_category, len(hits))
