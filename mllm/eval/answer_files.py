"""Where ``mllm eval``'s answers go: one merged answer file in LLaVA's format, and beside it a
partial file per process that batches are appended to, read back to resume an interrupted run;
and the JSON report's path."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path

from mllm.eval.benchmarks.base import BenchmarkQuestion, QuestionId


class AnswerFiles:
    """The merged answer file at ``output`` and the per-process partial files beside it
    (``OUTPUT.rank{N}.partial``: one JSON answer a line, appended as batches finish)."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)

    def partial(self, rank: int) -> Path:
        return self.output.with_name(f"{self.output.name}.rank{rank}.partial")

    def partials(self) -> list[Path]:
        pattern = f"{glob.escape(self.output.name)}.rank*.partial"
        return sorted(self.output.parent.glob(pattern))

    def earlier_answers(self) -> dict[QuestionId, dict]:
        """Answers written by earlier runs: the merged file's, then the partial files'.

        A last line without its newline (a run killed mid-write) is left out.

        Raises:
            ValueError: a complete line that is not a JSON answer (naming file and line).
        """
        answers: dict[QuestionId, dict] = {}
        for path in [self.output, *self.partials()]:
            if path.is_file():
                for record in _read_answer_lines(path):
                    answers.setdefault(record["question_id"], record)
        return answers

    def start_appending(self, rank: int) -> None:
        """Cut this process's partial file back to its last complete line."""
        path = self.partial(rank)
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as file:
                    file.truncate(data.rfind(b"\n") + 1)

    def append(self, rank: int, records: Sequence[dict]) -> None:
        self.partial(rank).parent.mkdir(parents=True, exist_ok=True)
        with open(self.partial(rank), "a", encoding="utf-8") as file:
            file.write("".join(json.dumps(r) + "\n" for r in records))
            file.flush()

    def write_merged(self, records: Sequence[dict]) -> None:
        """Write the merged file atomically (a reader never sees half of it)."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.output.with_name(f".{self.output.name}.tmp")
        temporary.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        os.replace(temporary, self.output)

    def remove_partials(self, rank: int | None = None) -> None:
        """Remove one process's partial file, or every one (``rank`` None)."""
        for path in self.partials() if rank is None else [self.partial(rank)]:
            path.unlink(missing_ok=True)

    def remove_all(self) -> None:
        self.output.unlink(missing_ok=True)
        self.remove_partials()


def report_path(output: Path) -> Path:
    """Where the JSON report of ``output`` goes: ``answers.jsonl`` -> ``answers.report.json``."""
    return Path(output).with_suffix(".report.json")


def _read_answer_lines(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: "" or a cut-off line
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON answer ({exc.msg})") from None
        if not isinstance(record, dict) or not {"question_id", "text"} <= record.keys():
            raise ValueError(f"{path}:{number}: an answer needs 'question_id' and 'text'")
        records.append(record)
    return records


def check_earlier(
    earlier: dict[QuestionId, dict], questions: Sequence[BenchmarkQuestion], model_id: str
) -> None:
    """Earlier answers must come from this model and these questions."""
    for question in questions:
        record = earlier.get(question.question_id)
        if record is None:
            continue
        if record.get("model_id") != model_id or record.get("prompt") != question.text:
            what = (
                f"model {record.get('model_id')!r}"
                if record.get("model_id") != model_id
                else f"another prompt ({record.get('prompt')!r})"
            )
            raise ValueError(
                f"the answer to question {question.question_id!r} already written for this "
                f"--output is from {what}; pass --restart to answer every question again, or "
                "another --output"
            )
