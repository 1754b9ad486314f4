"""MMBench (dev) with CircularEval: a question counts only when every rotation of its options
is answered right.

Reads the published TSV (``ROOT/{split}.tsv``, e.g. ``mmbench_dev_20230712.tsv``; without a
split, the only ``.tsv`` in ROOT), columns ``index, question, hint, A, B, C, D, answer,
category, l2-category, image`` (base64). Rows whose index is ``i + k * 1_000_000`` are the
release's own rotations of question ``i``; a question with none in the file is rotated here,
as LLaVA's ``--all-rounds`` does (shift ``k``: the options from the ``k``-th on, then the first
``k``). Each rotation is one question, id ``"{index}_shift{k}"``.

Images are decoded once into ``ROOT/.mllm_images/{tsv name}/{index}.jpg|png``, or, when ROOT
is read-only, into the same tree under the system temp folder.

The prompt is LLaVA-1.5's: hint, question, ``A. ...`` options, the multiple-choice suffix.
Answers are read with MMBench's rules (:func:`~mllm.eval.benchmarks.choices.mmbench_letter`);
where those find nothing, the official evaluation asks GPT, mllm counts the answer wrong.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import os
import sys
import tempfile
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
from mllm.eval.benchmarks.choices import LETTERS, mc_prompt, mmbench_letter, require_answers

ROTATION = 1_000_000
_REQUIRED = ("index", "question", "A", "B", "answer", "image")


def _absent(value: str | None) -> bool:
    """LLaVA's ``is_none``: empty, ``nan`` or ``none`` cells are no value."""
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


@BENCHMARKS.register("mmbench")
class MMBench(Benchmark):
    """MMBench; ``split``: the TSV's name without ``.tsv`` (default: the only TSV in ROOT)."""

    name = "mmbench"

    def __init__(self, root: Path, split: str | None = None) -> None:
        super().__init__(root, split)
        self._shifts: dict[int, list[tuple[str, dict[str, str], str]]] | None = None
        self._rows: dict[int, dict[str, str]] = {}

    def tsv_path(self) -> Path:
        if self.split is not None:
            path = self.root / f"{self.split}.tsv"
            if not path.is_file():
                raise BenchmarkDataError(f"mmbench: {path} is missing")
            return path
        found = sorted(self.root.glob("*.tsv"))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise BenchmarkDataError(
                f"mmbench: {self.root} must hold exactly one .tsv (found: {names}); name one as the split"
            )
        return found[0]

    def _read(self) -> dict[int, list[tuple[str, dict[str, str], str]]]:
        """Base index -> its rotations (question id, options by letter, answer letter)."""
        if self._shifts is not None:
            return self._shifts
        path = self.tsv_path()
        csv.field_size_limit(sys.maxsize)
        rows: dict[int, dict[str, str]] = {}
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise BenchmarkDataError(f"mmbench: {path} lacks columns {missing}")
            for number, row in enumerate(reader, start=2):
                where = f"mmbench: {path}, line {number}"
                try:
                    index = int(float(row["index"]))
                except (TypeError, ValueError):
                    raise BenchmarkDataError(
                        f"{where}: index {row['index']!r} is not a number"
                    ) from None
                options = [row.get(c) for c in "ABCD"]
                count = next((i for i, v in enumerate(options) if _absent(v)), 4)
                if count < 2 or (row["answer"] or "").strip() not in LETTERS[:count]:
                    raise BenchmarkDataError(
                        f"{where} (index {index}): needs options A, B, ... and an answer among them "
                        f"(answer {row['answer']!r})"
                    )
                row["_options"] = options[:count]  # type: ignore[assignment]
                rows[index] = row
        shifts: dict[int, list[tuple[str, dict[str, str], str]]] = defaultdict(list)
        for index in sorted(rows):
            base = index % ROTATION
            if base not in rows:
                raise BenchmarkDataError(
                    f"mmbench: {path}: rotation {index} of absent question {base}"
                )
            row = rows[index]
            options = dict(zip(LETTERS, row["_options"], strict=False))
            shifts[base].append(
                (f"{base}_shift{index // ROTATION}", options, row["answer"].strip())
            )
        for base, found in shifts.items():
            if len(found) == 1:  # no rotations in the file: make them
                options, answer = list(found[0][1].values()), LETTERS.index(found[0][2])
                for k in range(1, len(options)):
                    rotated = dict(zip(LETTERS, options[k:] + options[:k], strict=False))
                    found.append(
                        (f"{base}_shift{k}", rotated, LETTERS[(answer - k) % len(options)])
                    )
        self._rows, self._shifts = rows, dict(shifts)
        return self._shifts

    def image_folder(self) -> Path:
        """Where decoded images go: under ROOT, else under the temp folder."""
        name = self.tsv_path().stem
        folder = self.root / ".mllm_images" / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        except OSError:
            digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:12]
            folder = Path(tempfile.gettempdir()) / "mllm_mmbench_images" / digest / name
            folder.mkdir(parents=True, exist_ok=True)
            return folder

    def _image(self, folder: Path, index: int) -> Path:
        row = self._rows[index]
        try:
            data = base64.b64decode(row["image"], validate=True)
        except (binascii.Error, ValueError):
            raise BenchmarkDataError(
                f"mmbench: {self.tsv_path()}, index {index}: image is not base64"
            ) from None
        suffix = ".png" if data.startswith(b"\x89PNG") else ".jpg"
        path = folder / f"{index}{suffix}"
        if not path.is_file():
            partial = path.with_suffix(".partial")
            partial.write_bytes(data)
            os.replace(partial, path)
        return path

    def questions(self) -> list[BenchmarkQuestion]:
        folder = self.image_folder()
        questions = []
        for base, shifts in self._read().items():
            row = self._rows[base]
            image = self._image(folder, base)
            hint = None if _absent(row.get("hint")) else row["hint"]
            for qid, options, _ in shifts:
                text = mc_prompt(row["question"], list(options.values()), hint)
                questions.append(BenchmarkQuestion(qid, text, image, row.get("category")))
        return questions

    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        shifts = self._read()
        answers = {str(qid): text for qid, text in answers.items()}
        require_answers(
            self.name, [qid for found in shifts.values() for qid, _, _ in found], answers
        )
        groups: dict[str, list[bool]] = defaultdict(list)
        hits = []
        for base, found in shifts.items():
            hit = all(
                mmbench_letter(answers[qid], options) == truth for qid, options, truth in found
            )
            hits.append(hit)
            row = self._rows[base]
            for column, prefix in (("category", ""), ("l2-category", "l2: ")):
                if not _absent(row.get(column)):
                    groups[prefix + row[column]].append(hit)
        per_category = {
            name: {"accuracy": sum(h) / len(h), "count": len(h)} for name, h in groups.items()
        }
        accuracy = sum(hits) / len(hits) if hits else 0.0
        return BenchmarkReport(self.name, {"accuracy": accuracy}, per_category, len(hits))
