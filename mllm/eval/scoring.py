"""Exact-match scoring of LLaVA-format short-answer predictions.

Answers are compared after the normalisation VQA-style evaluations apply (case, punctuation,
articles, number words), so "The Red." and "red" agree. Files are JSONL, as LLaVA writes them:

    predictions  {"question_id", "prompt", "text", "model_id", ...}
    answers      {"question_id", "answer"}            answer: a string or a list of accepted ones
    questions    {"question_id", "category", ...}     optional; gives per-category accuracy

CPU-sized command::

    python -m mllm.eval.scoring preds.jsonl demo_data/test/answers.jsonl \\
        --questions demo_data/test/questions.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from mllm.eval.benchmarks.files import read_jsonl  # errors name file and line
from mllm.eval.benchmarks.vqa_accuracy import ARTICLES, NUMBER_WORDS  # VQA's, shared

_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")  # 1,000 -> 1000
_NON_DECIMAL_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")  # keeps the point in 3.5
_PUNCTUATION = re.compile(r"""[;/\[\]"{}()=+\\_\-><@`,?!:*#%&|~^$]""")
_STRAY_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")  # quotes go, "don't" stays


def normalize_answer(text: str) -> str:
    """Normalise a short answer the way VQA-style exact-match evaluation does.

    Lowercases; removes punctuation (a mark joining two words, as in ``top-left``, becomes a
    space) but keeps decimal points and apostrophes inside words; drops thousands separators;
    maps number words up to ten to digits; removes the articles a/an/the; collapses
    whitespace. A trailing period therefore disappears.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _DIGIT_COMMA.sub("", text)
    text = _NON_DECIMAL_PERIOD.sub(" ", text)
    text = _PUNCTUATION.sub(" ", text)
    text = _STRAY_APOSTROPHE.sub(" ", text)
    words = [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]
    return " ".join(words)


def _read_jsonl(path: Path, required: Sequence[str]) -> dict[int, tuple[int, dict]]:
    """Map question_id -> (line number, record); errors name the file and line."""
    records: dict[int, tuple[int, dict]] = {}
    for where, record in read_jsonl(path):
        number = int(where.rsplit(":", 1)[1])
        missing = [key for key in required if key not in record]
        if missing:
            raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
        question_id = record["question_id"]
        if question_id in records:
            first = records[question_id][0]
            raise ValueError(f"{where}: question_id {question_id!r} repeats line {first}")
        records[question_id] = (number, record)
    return records


def is_correct(prediction: str, answer: str | list[str]) -> bool:
    """Whether ``prediction`` matches ``answer`` (or one of a list) after normalisation: the
    rule of ``mllm eval`` and of validation during training."""
    accepted = [answer] if isinstance(answer, str) else answer
    return normalize_answer(prediction) in {normalize_answer(a) for a in accepted}


def _check_answer(answer: object, where: str) -> None:
    if isinstance(answer, str):
        return
    if isinstance(answer, list) and answer and all(isinstance(a, str) for a in answer):
        return
    raise ValueError(f"{where}: 'answer' must be a string or a non-empty list of strings")


def score(
    predictions: Path | str, answers: Path | str, questions: Path | str | None = None
) -> dict:
    """Score predictions by normalised exact match.

    Args:
        predictions: JSONL with ``question_id`` and the model's ``text``.
        answers: JSONL with ``question_id`` and ``answer`` (a list means any one is right).
        questions: Optional JSONL with ``question_id`` and ``category``.

    Returns:
        ``{"accuracy", "correct", "count", "per_category": {name: {"accuracy", "correct",
        "count"}}}`` with accuracies in [0, 1]; ``per_category`` is empty without questions.

    Raises:
        ValueError: naming file and line for malformed JSON, missing keys, repeated ids,
            predictions for unknown questions; and listing answered questions that have no
            prediction (a partial run is an error, not a lower score).
    """
    predictions, answers = Path(predictions), Path(answers)
    predicted = _read_jsonl(predictions, ("question_id", "text"))
    expected = _read_jsonl(answers, ("question_id", "answer"))
    categories: dict[int, str] = {}
    if questions is not None:
        for question_id, (_, record) in _read_jsonl(Path(questions), ("question_id",)).items():
            if record.get("category") is not None:
                categories[question_id] = str(record["category"])

    for question_id, (number, _) in predicted.items():
        if question_id not in expected:
            raise ValueError(
                f"{predictions}:{number}: question_id {question_id!r} has no answer in {answers}"
            )
    unanswered = [question_id for question_id in expected if question_id not in predicted]
    if unanswered:
        shown = ", ".join(repr(q) for q in unanswered[:5])
        more = f" and {len(unanswered) - 5} more" if len(unanswered) > 5 else ""
        raise ValueError(f"{predictions}: no prediction for question_id {shown}{more}")

    correct = 0
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # name -> [correct, count]
    for question_id, (number, record) in expected.items():
        line, prediction = predicted[question_id]
        if not isinstance(prediction["text"], str):
            raise ValueError(f"{predictions}:{line}: 'text' must be a string")
        _check_answer(record["answer"], f"{answers}:{number}")
        hit = int(is_correct(prediction["text"], record["answer"]))
        correct += hit
        if question_id in categories:
            by_category[categories[question_id]][0] += hit
            by_category[categories[question_id]][1] += 1

    result = _summary(correct, len(expected))
    result["per_category"] = {name: _summary(*by_category[name]) for name in sorted(by_category)}
    return result


def _summary(correct: int, count: int) -> dict:
    return {"accuracy": correct / count if count else 0.0, "correct": correct, "count": count}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the score of a predictions file as JSON."""
    parser = argparse.ArgumentParser(prog="mllm.eval.scoring", description=__doc__.split("\n")[0])
    parser.add_argument("predictions", type=Path)
    parser.add_argument("answers", type=Path)
    parser.add_argument("--questions", type=Path, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(score(args.predictions, args.answers, args.questions), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
