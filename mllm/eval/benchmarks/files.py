"""Reading a benchmark's published files and checking answers against its questions, with
errors that name the file and the record (shared by the benchmark modules)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mllm.eval.benchmarks.base import BenchmarkDataError, QuestionId


def read_json(path: Path, hint: str = "") -> Any:
    """The JSON document at ``path``.

    Args:
        path: the file.
        hint: appended to the "missing" message (e.g. where the benchmark publishes it).

    Raises:
        BenchmarkDataError: the file is missing or is not JSON.
    """
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: file not found{'; ' + hint if hint else ''}")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from err


def read_jsonl(path: Path, hint: str = "") -> list[tuple[str, dict]]:
    """Every record of the JSON-lines file ``path`` as ``(where, record)``, ``where`` being
    ``path:line`` for messages; blank lines are skipped.

    Raises:
        BenchmarkDataError: the file is missing, or a line is not a JSON object.
    """
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: file not found{'; ' + hint if hint else ''}")
    records = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkDataError(f"{where}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise BenchmarkDataError(f"{where}: expected a JSON object")
            records.append((where, record))
    return records


def require(record: Any, keys: Iterable[str], where: str) -> None:
    """Raise a BenchmarkDataError naming ``where`` unless ``record`` is a dict with ``keys``."""
    if not isinstance(record, dict):
        raise BenchmarkDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in keys if key not in record]
    if missing:
        raise BenchmarkDataError(f"{where}: missing key(s) {', '.join(missing)}")


def list_under(document: Any, key: str, path: Path) -> list:
    """``document[key]``, which must be a list (VQA's ``questions``, TextVQA's ``data``...)."""
    if not isinstance(document, dict) or not isinstance(document.get(key), list):
        raise BenchmarkDataError(f"{path}: expected a JSON object with a list under {key!r}")
    return document[key]


def check_answers(
    benchmark: str, expected: Iterable[QuestionId], answers: Mapping[QuestionId, str]
) -> None:
    """Every expected question has an answer and every answer a question.

    Ids compare as strings, so ``1`` and ``"1"`` (JSON keys) are the same question.

    Raises:
        BenchmarkDataError: naming up to five missing and five unknown ids.
    """
    wanted = {str(qid) for qid in expected}
    given = {str(qid) for qid in answers}
    missing, unknown = sorted(wanted - given), sorted(given - wanted)
    problems = []
    if missing:
        problems.append(f"no answer for {len(missing)} question(s), e.g. {', '.join(missing[:5])}")
    if unknown:
        problems.append(
            f"{len(unknown)} answer(s) to question ids it does not have, "
            f"e.g. {', '.join(unknown[:5])}"
        )
    if problems:
        raise BenchmarkDataError(f"{benchmark}: " + "; ".join(problems))


def by_string_id(answers: Mapping[QuestionId, str]) -> dict[str, str]:
    """The answers keyed by ``str(question_id)``."""
    return {str(qid): text for qid, text in answers.items()}
