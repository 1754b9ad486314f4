"""Multiple-choice helpers shared by ScienceQA, MMBench and SEED-Bench: LLaVA-1.5's option
layout and answer suffix, and the rules that read a letter out of a free answer.

Each benchmark's official scorer reads letters its own way, so each rule is kept apart and
named after its source:

- :func:`scienceqa_letter`: LLaVA's ``llava/eval/eval_science_qa.py``;
- :func:`mmbench_letter`: MMBench's ``can_infer`` (VLMEvalKit, lmms-eval's ``mmbench_evals.py``):
  a lone option letter, else the one option whose text the answer contains; the official
  GPT fallback for answers neither matches is not used (such an answer counts as wrong);
- SEED-Bench, as LLaVA scores it (``scripts/convert_seed_for_submission.py``): the answer,
  stripped, must be the letter itself (:func:`exact_letter`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

from mllm.eval.benchmarks.base import BenchmarkDataError

LETTERS = string.ascii_uppercase
#: LLaVA-1.5's suffix for multiple-choice questions (``--single-pred-prompt``).
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


def format_options(options: Sequence[str]) -> str:
    """``"A. first\\nB. second"``: the options as LLaVA-1.5 lists them, one a line."""
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def mc_prompt(question: str, options: Sequence[str], context: str | None = None) -> str:
    """The LLaVA-1.5 multiple-choice prompt: context line, question, options, suffix."""
    head = f"{context}\n{question}" if context else question
    return f"{head}\n{format_options(options)}\n{MC_SUFFIX}"


_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def scienceqa_letter(answer: str, num_options: int) -> str | None:
    """The option letter LLaVA's ``eval_science_qa.py`` reads from ``answer``, or None.

    Accepted, in order: the answer is exactly a letter among A-E; it starts with a letter
    and ``". "`` (``"B. cat"``); it contains ``"The answer is X"`` followed by any character,
    exactly once. A letter past the question's options is no answer. ``"B."`` alone and
    ``"The answer is (B)."`` are not read (LLaVA reads neither).
    """
    letters = LETTERS[:5]
    if answer in letters:
        letter = answer
    elif len(answer) >= 3 and answer[0] in letters and answer[1:3] == ". ":
        letter = answer[0]
    else:
        found = _SQA_ANSWER_IS.findall(answer)
        letter = found[0] if len(found) == 1 else None
    return letter if letter is not None and letter in LETTERS[:num_options] else None


# MMBench's accepted wrappings of a letter among the answer's words: "B.", "(B)", ":B", ...
_MMBENCH_WRAPPINGS = (
    ("", "."),
    ("", ","),
    ("", ":"),
    ("", ")"),
    ("", ")."),
    ("(", ")"),
    ("(", ")."),
    (":", ""),
    (":", ","),
    (":", "."),
    (":", ")"),
    (":", ")."),
)


def _mmbench_option_letter(answer: str) -> str | None:
    """MMBench's ``can_infer_option``: one letter among A-E standing as a word of the answer."""
    if "Failed to obtain answer via API" in answer:
        return None
    letters = LETTERS[:5]
    words = [word.strip() for word in answer.split()]
    bare = [letter for letter in letters if letter in words]
    # "A" in a longer answer may be the article, so MMBench does not take it bare there.
    if len(bare) == 1 and not ("A" in words and len(words) > 3):
        return bare[0]
    for prefix, suffix in _MMBENCH_WRAPPINGS:
        wrapped = [letter for letter in letters if f"{prefix}{letter}{suffix}" in words]
        if len(wrapped) == 1:
            return wrapped[0]
    return None


def _mmbench_text_letter(answer: str, options: Mapping[str, str]) -> str | None:
    """MMBench's ``can_infer_text``: the one option whose text (lowercased) the answer contains."""
    answer = answer.lower()
    hits = [letter for letter, text in options.items() if str(text).lower() in answer]
    return hits[0] if len(hits) == 1 else None


def mmbench_letter(answer: str, options: Mapping[str, str]) -> str | None:
    """The option MMBench's rules read from ``answer`` (``options``: letter -> text), or None.

    A letter standing alone or wrapped (``"B"``, ``"(B)"``, ``"B."``, ``"The answer is
    (B)."``) wins; otherwise the answer must contain exactly one option's text. No GPT
    fallback: None means MMBench would have asked GPT; mllm counts it wrong.
    """
    return _mmbench_option_letter(answer) or _mmbench_text_letter(answer, options)


def exact_letter(answer: str) -> str:
    """The answer as LLaVA compares it for SEED-Bench: stripped, nothing else."""
    return answer.strip()


def require_answers(
    benchmark: str, expected: Sequence[object], answers: Mapping[object, str]
) -> None:
    """Check that ``answers`` holds exactly the ids of ``expected``.

    Raises:
        BenchmarkDataError: ids without an answer, or answers for ids the benchmark lacks
            (the first few of each named).
    """
    known = set(expected)
    missing = [qid for qid in expected if qid not in answers]
    unknown = [qid for qid in answers if qid not in known]
    problems = []
    if missing:
        problems.append(f"{len(missing)} questions have no answer (first: {_first(missing)})")
    if unknown:
        problems.append(
            f"{len(unknown)} answers have ids it does not know (first: {_first(unknown)})"
        )
    if problems:
        raise BenchmarkDataError(f"{benchmark}: " + "; ".join(problems))


def _first(ids: Sequence[object], count: int = 5) -> str:
    return ", ".join(repr(qid) for qid in list(ids)[:count])
