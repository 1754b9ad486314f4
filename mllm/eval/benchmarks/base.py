"""What every benchmark provides: its questions, read from the benchmark's published files, and
a scorer with the benchmark's official metric.

``mllm eval --benchmark NAME --data-root DIR`` asks every question through the same generation
path as ``mllm chat`` (greedy, the model's own template) and hands the answers to ``score``.
A benchmark module registers its class with ``@BENCHMARKS.register("name")``; this package's
``__init__`` imports every module so the table is full.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from mllm.registry import Registry

QuestionId = str | int

#: LLaVA-1.5's answer-format suffix for short-answer questions (VQAv2, GQA, TextVQA, POPE, MME).
SHORT_ANSWER = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class BenchmarkQuestion:
    """One question as the model is asked it.

    Attributes:
        question_id: the benchmark's own id (answers are keyed by it).
        text: the prompt as LLaVA-1.5 asked it: the question, with the benchmark's options
            and answer-format suffix (e.g. "Answer the question using a single word or
            phrase."); no image marker (the runner places it).
        image: the image file, or None for a text-only question.
        category: the breakdown the benchmark reports by (subtask, question type, ...).
    """

    question_id: QuestionId
    text: str
    image: Path | None
    category: str | None = None


@dataclass
class BenchmarkReport:
    """A benchmark's result.

    Attributes:
        benchmark: its name.
        metrics: the headline numbers, named as the benchmark's papers name them (e.g.
            ``accuracy``, or POPE's ``accuracy``, ``precision``, ``recall``, ``f1``,
            ``yes_ratio``); accuracies in [0, 1] unless the benchmark reports a score (MME).
        per_category: the same kind of numbers per category.
        count: questions scored.
    """

    benchmark: str
    metrics: dict[str, float]
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    count: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The report for the console: the headline, then one line per category."""

        def numbers(values: Mapping[str, float]) -> str:
            return ", ".join(f"{k} {_format(v)}" for k, v in values.items())

        lines = [f"{self.benchmark} ({self.count} questions): {numbers(self.metrics)}"]
        lines += [f"  {name}: {numbers(values)}" for name, values in self.per_category.items()]
        return lines


def _format(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class Benchmark(ABC):
    """A benchmark's files under ``root`` (the layout its documentation gives).

    Args:
        root: the folder with the benchmark's published question/annotation files and images.
        split: the split or subset where the benchmark has several (POPE's ``random``,
            ``popular``, ``adversarial``; ``None``: the default the class documents).
    """

    name: ClassVar[str]
    #: Generation budget per answer: short answers by default, captions need more.
    max_new_tokens: ClassVar[int] = 16

    #: The splits the benchmark reads, the default first; empty: the class takes ``split`` as
    #: it is (no splits, or ones it finds in the files).
    known_splits: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: Path, split: str | None = None) -> None:
        self.root = Path(root)
        if self.known_splits:
            split = split or self.known_splits[0]
            if split not in self.known_splits:
                raise BenchmarkDataError(
                    f"{self.name}: unknown split {split!r}; choose one of: {', '.join(self.known_splits)}"
                )
        self.split = split

    @abstractmethod
    def questions(self) -> list[BenchmarkQuestion]:
        """Every question, read from the published files.

        Raises:
            BenchmarkDataError: a missing file or a malformed record (naming file and record).
        """

    @abstractmethod
    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        """Score the model's answers (one per question id) with the official metric.

        Raises:
            BenchmarkDataError: answers missing for some questions, or ids it does not know.
        """


class BenchmarkDataError(ValueError):
    """A benchmark's files are missing or malformed, or answers do not match its questions."""


BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")
