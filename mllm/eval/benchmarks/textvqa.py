"""TextVQA v0.5.1 validation in its published files, scored with the VQA accuracy
(:mod:`.vqa_accuracy`, as LLaVA's ``eval_textvqa.py`` does through ``m4c_evaluator``).

Expected under ``--data-root`` (https://textvqa.org/dataset)::

    TextVQA_0.5.1_val.json               {"data": [{"question_id", "image_id", "question",
                                           "answers": [10 strings]}]}
    train_images/{image_id}.jpg          the validation images ship in train_images/
    TextVQA_Rosetta_OCR_v0.2_val.json    only for split val_ocr: {"data": [{"image_id",
                                           "ocr_tokens": [...]}]}

Splits: ``val`` (default): ``"{question}\\nAnswer the question using a single word or
phrase."``; ``val_ocr``: LLaVA-1.5's ``llava_textvqa_val_v051_ocr`` prompt, with the image's
Rosetta OCR tokens between the two, ``"{question}\\nReference OCR token: {t1}, {t2}, ...\\n
Answer the question ..."`` (the line is left out for an image without tokens).
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
from mllm.eval.benchmarks.files import by_string_id, check_answers, list_under, read_json, require
from mllm.eval.benchmarks.vqa_accuracy import soft_accuracy

SPLITS = ("val", "val_ocr")
DOWNLOAD = "download it from https://textvqa.org/dataset"


@BENCHMARKS.register("textvqa")
class TextVQA(Benchmark):
    """TextVQA validation; ``split`` ``val`` (default) or ``val_ocr`` (OCR tokens in the prompt)."""

    name = "textvqa"
    known_splits = SPLITS

    @property
    def annotations_file(self) -> Path:
        return self.root / "TextVQA_0.5.1_val.json"

    @property
    def ocr_file(self) -> Path:
        return self.root / "TextVQA_Rosetta_OCR_v0.2_val.json"

    def _records(self) -> dict[str, dict]:
        path = self.annotations_file
        records = {}
        for index, record in enumerate(list_under(read_json(path, DOWNLOAD), "data", path)):
            where = f"{path}: data[{index}]"
            require(record, ("question_id", "image_id", "question", "answers"), where)
            if not isinstance(record["answers"], list) or not record["answers"]:
                raise BenchmarkDataError(f"{where}: 'answers' must be a non-empty list")
            records[str(record["question_id"])] = record
        return records

    def _ocr_tokens(self) -> dict[str, list[str]]:
        path = self.ocr_file
        tokens = {}
        for index, record in enumerate(list_under(read_json(path, DOWNLOAD), "data", path)):
            require(record, ("image_id", "ocr_tokens"), f"{path}: data[{index}]")
            tokens[str(record["image_id"])] = [str(token) for token in record["ocr_tokens"]]
        return tokens

    def questions(self) -> list[BenchmarkQuestion]:
        ocr = self._ocr_tokens() if self.split == "val_ocr" else {}
        questions = []
        for record in self._records().values():
            lines = [record["question"]]
            if ocr.get(str(record["image_id"])):
                lines.append(f"Reference OCR token: {', '.join(ocr[str(record['image_id'])])}")
            lines.append(SHORT_ANSWER)
            questions.append(
                BenchmarkQuestion(
                    question_id=record["question_id"],
                    text="\n".join(lines),
                    image=self.root / "train_images" / f"{record['image_id']}.jpg",
                )
            )
        return questions

    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        """Mean VQA accuracy over the validation questions."""
        records = self._records()
        check_answers(self.name, records, answers)
        given = by_string_id(answers)
        values = [soft_accuracy(given[qid], record["answers"]) for qid, record in records.items()]
        accuracy = sum(values) / len(values) if values else 0.0
        return BenchmarkReport(self.name, {"accuracy": accuracy}, {}, len(values))
