"""MME: 14 subtasks of yes/no questions, two per image, scored by MME's ``calculation.py``.

Reads the published ``MME_Benchmark_release_version`` folder (the per-subtask folders, not the
flat ``eval_tool/Your_Results/{subtask}.txt`` lists)::

    ROOT/{subtask}/{name}.jpg|png + ROOT/{subtask}/{name}.txt            (existence, count, ...)
    ROOT/{subtask}/images/{name}.jpg + ROOT/{subtask}/questions_answers_YN/{name}.txt
                                                                          (artwork, posters, ...)

Each ``{name}.txt`` holds two lines ``question<TAB>Yes|No``. The prompt is LLaVA-1.5's: the
question with " Please answer yes or no." replaced by the short-answer suffix.

Score, per subtask: ``acc`` (questions right), ``acc_plus`` (images with both right),
``score = (acc + acc_plus) * 100``; ``perception`` sums the 10 perception subtasks,
``cognition`` the 4 cognition ones. An answer is read as MME reads it: lowercased, ``yes`` or
``no`` exactly, else whichever of "yes", "no" its first four characters contain (yes first),
else neither (wrong).
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
from mllm.eval.benchmarks.choices import require_answers

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")

_MME_SUFFIX = " Please answer yes or no."
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def mme_label(answer: str) -> str:
    """``yes``, ``no`` or ``other``: the label MME's ``calculation.py`` reads from an answer."""
    # LLaVA's conversion writes answers on one line; MME then lowercases.
    answer = answer.replace("\n", " ").lower()
    if answer in ("yes", "no"):
        return answer
    head = answer[:4]
    if "yes" in head:
        return "yes"
    return "no" if "no" in head else "other"


@BENCHMARKS.register("mme")
class MME(Benchmark):
    """MME (all 14 subtasks; ``split`` unused)."""

    name = "mme"

    def __init__(self, root: Path, split: str | None = None) -> None:
        super().__init__(root, split)
        self._questions: list[BenchmarkQuestion] | None = None
        self._truth: dict[str, str] = {}

    def questions(self) -> list[BenchmarkQuestion]:
        if self._questions is None:
            self._questions = []
            for subtask in PERCEPTION + COGNITION:
                self._questions += self._read_subtask(subtask)
        return list(self._questions)

    def _read_subtask(self, subtask: str) -> list[BenchmarkQuestion]:
        folder = self.root / subtask
        if not folder.is_dir():
            raise BenchmarkDataError(f"mme: subtask folder {folder} is missing")
        nested = folder / "questions_answers_YN"
        text_folder, image_folder = (
            (nested, folder / "images") if nested.is_dir() else (folder, folder)
        )
        questions = []
        for path in sorted(text_folder.glob("*.txt")):
            image = next(
                (
                    image_folder / (path.stem + s)
                    for s in _IMAGE_SUFFIXES
                    if (image_folder / (path.stem + s)).is_file()
                ),
                None,
            )
            if image is None:
                raise BenchmarkDataError(
                    f"mme: {path} has no image {image_folder / path.stem}.jpg|png"
                )
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if len(lines) != 2:
                raise BenchmarkDataError(
                    f"mme: {path} has {len(lines)} questions; MME pairs 2 per image"
                )
            for number, line in enumerate(lines):
                fields = line.split("\t")
                truth = fields[-1].strip().lower() if len(fields) == 2 else ""
                if truth not in ("yes", "no"):
                    raise BenchmarkDataError(
                        f"mme: {path}, line {number + 1}: expected 'question<TAB>Yes|No', got {line!r}"
                    )
                qid = f"{subtask}/{image.name}/{number}"
                text = fields[0].strip().replace(_MME_SUFFIX, "") + "\n" + SHORT_ANSWER
                self._truth[qid] = truth
                questions.append(BenchmarkQuestion(qid, text, image, subtask))
        if not questions:
            raise BenchmarkDataError(f"mme: {text_folder} has no question files (*.txt)")
        return questions

    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        questions = self.questions()
        require_answers(self.name, [q.question_id for q in questions], answers)
        per_image: dict[str, dict[str, list[bool]]] = {}
        for question in questions:
            subtask, image, _ = str(question.question_id).rsplit("/", 2)
            hit = mme_label(answers[question.question_id]) == self._truth[str(question.question_id)]
            per_image.setdefault(subtask, {}).setdefault(image, []).append(hit)
        per_category = {}
        for subtask, images in per_image.items():
            hits = [hit for pair in images.values() for hit in pair]
            acc = sum(hits) / len(hits)
            acc_plus = sum(all(pair) for pair in images.values()) / len(images)
            per_category[subtask] = {
                "acc": acc,
                "acc_plus": acc_plus,
                "score": (acc + acc_plus) * 100,
            }
        metrics = {
            "perception": sum(per_category[s]["score"] for s in PERCEPTION),
            "cognition": sum(per_category[s]["score"] for s in COGNITION),
        }
        return BenchmarkReport(self.name, metrics, per_category, len(questions))
