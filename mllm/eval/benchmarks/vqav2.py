"""VQAv2 in its published files, scored with the VQA accuracy (:mod:`.vqa_accuracy`).

Expected under ``--data-root`` (files as https://visualqa.org/download.html ships them)::

    v2_OpenEnded_mscoco_val2014_questions.json    {"questions": [{"question_id", "image_id", "question"}]}
    v2_mscoco_val2014_annotations.json            {"annotations": [{"question_id", "answer_type",
                                                    "question_type", "answers": [{"answer"}] x 10}]}
    val2014/COCO_val2014_000000000042.jpg         COCO images, 12-digit zero-padded image id

Splits: ``val2014`` (default; scored here), ``train2014``, and ``test-dev2015`` /
``test2015`` (images in ``test2015/``), whose answers are not public: their questions can be
asked, and scoring them says to submit to EvalAI. LLaVA-1.5 asks
``"{question}\\nAnswer the question using a single word or phrase."``.
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
from mllm.eval.benchmarks.files import by_string_id, check_answers, list_under, read_json, require
from mllm.eval.benchmarks.vqa_accuracy import soft_accuracy

SPLITS = ("val2014", "train2014", "test-dev2015", "test2015")
UNSCORED = ("test-dev2015", "test2015")
DOWNLOAD = "download it from https://visualqa.org/download.html"


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@BENCHMARKS.register("vqav2")
class VQAv2(Benchmark):
    """VQAv2 open-ended questions; ``split`` one of :data:`SPLITS` (default ``val2014``)."""

    name = "vqav2"
    known_splits = SPLITS

    @property
    def questions_file(self) -> Path:
        return self.root / f"v2_OpenEnded_mscoco_{self.split}_questions.json"

    @property
    def annotations_file(self) -> Path:
        return self.root / f"v2_mscoco_{self.split}_annotations.json"

    def image_path(self, image_id: int) -> Path:
        folder = "test2015" if self.split in UNSCORED else self.split
        return self.root / folder / f"COCO_{folder}_{int(image_id):012d}.jpg"

    def questions(self) -> list[BenchmarkQuestion]:
        path = self.questions_file
        records = list_under(read_json(path, DOWNLOAD), "questions", path)
        types = {} if self.split in UNSCORED else self._annotations()
        questions = []
        for index, record in enumerate(records):
            require(record, ("question_id", "image_id", "question"), f"{path}: questions[{index}]")
            answer_type = types.get(str(record["question_id"]), {}).get("answer_type")
            questions.append(
                BenchmarkQuestion(
                    question_id=record["question_id"],
                    text=f"{record['question']}\n{SHORT_ANSWER}",
                    image=self.image_path(record["image_id"]),
                    category=answer_type,
                )
            )
        return questions

    def _annotations(self) -> dict[str, dict]:
        """question_id (as a string) -> annotation record, each checked."""
        path = self.annotations_file
        records = list_under(read_json(path, DOWNLOAD), "annotations", path)
        annotations = {}
        for index, record in enumerate(records):
            where = f"{path}: annotations[{index}]"
            require(record, ("question_id", "answers", "answer_type", "question_type"), where)
            answers = record["answers"]
            if not isinstance(answers, list) or not answers:
                raise BenchmarkDataError(f"{where}: 'answers' must be a non-empty list")
            for number, answer in enumerate(answers):
                require(answer, ("answer",), f"{where}.answers[{number}]")
            annotations[str(record["question_id"])] = record
        return annotations

    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        """VQA accuracy overall, per answer type and per question type (``question_type: X``).

        Raises:
            BenchmarkDataError: a test split (score it on EvalAI), or answers that do not
                match the annotated questions.
        """
        if self.split in UNSCORED:
            raise BenchmarkDataError(
                f"vqav2: {self.split} has no public answers; submit the predictions to the "
                "EvalAI VQA challenge (https://eval.ai/web/challenges/challenge-page/830)"
            )
        annotations = self._annotations()
        check_answers(self.name, annotations, answers)
        given = by_string_id(answers)
        overall: list[float] = []
        groups: dict[str, list[float]] = defaultdict(list)
        for qid, record in annotations.items():
            value = soft_accuracy(given[qid], [a["answer"] for a in record["answers"]])
            overall.append(value)
            groups[str(record["answer_type"])].append(value)
            groups[f"question_type: {record['question_type']}"].append(value)
        # answer types first, then question types
        names = sorted(groups, key=lambda name: (name.startswith("question_type: "), name))
        per_category = {name: {"accuracy": mean(groups[name])} for name in names}
        return BenchmarkReport(self.name, {"accuracy": mean(overall)}, per_category, len(overall))
