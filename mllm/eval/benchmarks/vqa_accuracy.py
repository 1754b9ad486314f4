"""The VQA accuracy of VQAv2 and TextVQA: EvalAI's answer normalisation and the soft score
against ten human answers.

The normalisation follows the evaluation servers (EvalAI, which scores VQAv2 test-dev) and
LLaVA's ``llava/eval/m4c_evaluator.py`` (``EvalAIAnswerProcessor``, which scores TextVQA),
quirks included, because a reported number is only comparable when they are:

1. lowercase; delete ``,`` and ``?``; write ``'s`` as `` 's``; strip;
2. each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``: deleted where the answer has it
   next to a space, otherwise replaced by a space (decided on the text before this step);
3. a period not followed by a digit is deleted (at most 32 of them: the reference passes
   ``re.UNICODE`` where ``re.sub`` takes its count);
4. number words up to ten become digits (``none`` is ``0``), articles go, and contractions
   written without their apostrophes get them back (``dont`` -> ``don't``).

A prediction scores ``mean over i of min(1, #{j != i : human_j == prediction} / 3)``: the
"at least three of the other nine humans agree" rule averaged over the ten leave-one-out
subsets; predictions and human answers are normalised alike.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'  # the 21 marks of step 2
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32

# Contractions the reference restores, written with their apostrophes; the misspellings it
# maps are derived below (every apostrophe dropped for one-apostrophe words, one at a time
# for the others).
_ONE_APOSTROPHE = (  # noqa: SIM905 - word lists read better as text
    "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd "
    "he's how'd how'll how's isn't it'd it'll ma'am mightn't might've mustn't must've "
    "needn't not've o'clock oughtn't shan't should've shouldn't somebody'll somebody's "
    "someone'd someone'll someone's something'd something'll that's there'd there're "
    "there's they'd they'll they're they've 'twas wasn't we've weren't what'll what're "
    "what's what've when's where'd where's where've who'd who'll who's who've why'll "
    "why're why's won't would've wouldn't y'all you'd you'll you're you've"
).split()
_SEVERAL_APOSTROPHES = (  # noqa: SIM905
    "couldn't've hadn't've he'd've it'd've mightn't've 'ow's'at she'd've shouldn't've "
    "somebody'd've someone'd've something'd've there'd've they'd've we'd've who'd've "
    "wouldn't've y'all'll y'all'd've you'd've"
).split()


def _contractions() -> dict[str, str]:
    table = {word.replace("'", ""): word for word in _ONE_APOSTROPHE}
    for word in _SEVERAL_APOSTROPHES:
        marks = [i for i, char in enumerate(word) if char == "'"]
        for drop in marks:
            table[word[:drop] + word[drop + 1 :]] = word
    table["somebody'd"] = "somebodyd"  # the reference maps this one backwards; kept for parity
    return table


CONTRACTIONS = _contractions()


def normalize_vqa_answer(answer: str) -> str:
    """An answer as the VQA evaluation compares it (the steps in the module docstring)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    original = text
    for mark in PUNCTUATION:
        spaced = f"{mark} " in original or f" {mark}" in original
        text = text.replace(mark, "" if spaced else " ")
    text = _PERIOD.sub("", text, count=_MAX_PERIODS)
    words = [NUMBER_WORDS.get(word, word) for word in text.split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def soft_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers (ten in VQAv2 and TextVQA).

    Both sides are normalised with :func:`normalize_vqa_answer`.
    """
    predicted = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(answer) for answer in human_answers]
    if not humans:
        return 0.0
    per_subset = []
    for left_out in range(len(humans)):
        others = itertools.chain(humans[:left_out], humans[left_out + 1 :])
        agreeing = sum(answer == predicted for answer in others)
        per_subset.append(min(1.0, agreeing / 3))
    return sum(per_subset) / len(per_subset)
