"""ScienceQA-IMG: the test questions that have an image, asked and scored as LLaVA-1.5 does.

Reads ScienceQA's own release (not LLaVA's derived ``llava_test_CQM-A.json``)::

    ROOT/problems.json        {pid: {question, choices, answer (index), hint, image, subject, grade, ...}}
    ROOT/pid_splits.json      {"test": [pid, ...], ...}
    ROOT/images/test/{pid}/image.png

Only questions with an image are kept (the IMG column LLaVA-1.5 reports). The prompt is the
one of LLaVA's question file: ``Context: {hint}`` (when there is a hint), the question, the
options ``A. ...``, and the multiple-choice suffix. Letters are read as LLaVA's
``llava/eval/eval_science_qa.py`` reads them (:func:`~mllm.eval.benchmarks.choices.scienceqa_letter`).
Breakdown, as in ScienceQA's tables: subject (NAT, SOC, LAN), with a text context (TXT), and
grade (G1-6, G7-12).
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
from mllm.eval.benchmarks.choices import mc_prompt, require_answers, scienceqa_letter

SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
LOWER_GRADES = {f"grade{n}" for n in range(1, 7)}


def _load_json(path: Path) -> object:
    if not path.is_file():
        raise BenchmarkDataError(f"scienceqa: {path} is missing (ScienceQA's release file)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BenchmarkDataError(f"scienceqa: {path} is not valid JSON: {exc}") from None


@BENCHMARKS.register("scienceqa")
class ScienceQA(Benchmark):
    """ScienceQA-IMG; ``split``: a key of ``pid_splits.json`` (default ``test``)."""

    name = "scienceqa"

    def __init__(self, root: Path, split: str | None = None) -> None:
        super().__init__(root, split)
        self.split = split or "test"
        self._problems: dict[str, dict] | None = None

    def problems(self) -> dict[str, dict]:
        """The split's problems that have an image, by pid, in ``pid_splits.json`` order."""
        if self._problems is not None:
            return self._problems
        problems_path = self.root / "problems.json"
        splits_path = self.root / "pid_splits.json"
        problems, splits = _load_json(problems_path), _load_json(splits_path)
        if not isinstance(splits, dict) or self.split not in splits:
            raise BenchmarkDataError(f"scienceqa: {splits_path} has no split {self.split!r}")
        if not isinstance(problems, dict):
            raise BenchmarkDataError(f"scienceqa: {problems_path} is not an object of problems")
        kept = {}
        for pid in splits[self.split]:
            problem = problems.get(str(pid))
            where = f"scienceqa: {problems_path}, problem {pid!r}"
            if not isinstance(problem, dict):
                raise BenchmarkDataError(f"{where}: listed in {self.split!r} but absent")
            if not problem.get("image"):
                continue
            choices, answer = problem.get("choices"), problem.get("answer")
            if not isinstance(problem.get("question"), str) or not isinstance(choices, list):
                raise BenchmarkDataError(f"{where}: needs 'question' (text) and 'choices' (list)")
            if not isinstance(answer, int) or not 0 <= answer < len(choices):
                raise BenchmarkDataError(f"{where}: 'answer' {answer!r} is not a choice index")
            kept[str(pid)] = problem
        self._problems = kept
        return kept

    def questions(self) -> list[BenchmarkQuestion]:
        questions = []
        for pid, problem in self.problems().items():
            hint = (problem.get("hint") or "").strip()
            text = mc_prompt(
                problem["question"], problem["choices"], f"Context: {hint}" if hint else None
            )
            image = self.root / "images" / self.split / pid / problem["image"]
            category = SUBJECTS.get(problem.get("subject", ""), problem.get("subject"))
            questions.append(BenchmarkQuestion(pid, text, image, category))
        return questions

    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        problems = self.problems()
        answers = {str(qid): text for qid, text in answers.items()}
        require_answers(self.name, list(problems), answers)
        hits: dict[str, list[bool]] = defaultdict(list)
        for pid, problem in problems.items():
            # Stripped, as LLaVA strips what it generates before writing it.
            letter = scienceqa_letter(answers[pid].strip(), len(problem["choices"]))
            hit = letter is not None and "ABCDE".index(letter) == problem["answer"]
            hits["all"].append(hit)
            for group in _groups(problem):
                hits[group].append(hit)
        per_category = {
            group: {"accuracy": sum(hits[group]) / len(hits[group]), "count": len(hits[group])}
            for group in ("NAT", "SOC", "LAN", "TXT", "G1-6", "G7-12")
            if hits[group]
        }
        overall = hits["all"]
        accuracy = sum(overall) / len(overall) if overall else 0.0
        return BenchmarkReport(self.name, {"accuracy": accuracy}, per_category, len(overall))


def _groups(problem: dict) -> list[str]:
    """ScienceQA's breakdown columns a problem counts in."""
    groups = []
    if problem.get("subject") in SUBJECTS:
        groups.append(SUBJECTS[problem["subject"]])
    if (problem.get("hint") or "").strip():
        groups.append("TXT")
    groups.append("G1-6" if problem.get("grade") in LOWER_GRADES else "G7-12")
    return groups
