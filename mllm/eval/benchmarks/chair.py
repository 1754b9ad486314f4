"""CHAIR (Rohrbach et al., 2018): how often a model's detailed captions of COCO images name
objects the image does not show.

Each caption's object mentions are found through ``coco_objects.txt`` (the 80 COCO categories
and their synonyms, one- and two-word, written for mllm): words are lowercased and split as
NLTK's ``word_tokenize`` splits them for this purpose (punctuation and "'s" apart, "t-shirt"
one word), singularised by trying the plural endings that give a known word ("buses" -> "bus",
"knives" -> "knife", "people" stays), and two-word synonyms ("hot dog") win over their parts.
As in the reference: "baby"/"adult" before an animal and "passenger" before a train or plane
name the animal or vehicle (not a person), and "seat" is not a chair in a caption that
mentions a toilet. An image's ground truth is the categories of its instance annotations plus
the objects its human captions mention.

- CHAIRs: the fraction of captions with at least one hallucinated mention;
- CHAIRi: hallucinated mentions / all mentions (a category named twice counts twice).

Checked against the reference scorer (chair.py, in the Python 3 port the later papers run) on
the same synonym table (``tests/test_benchmarks_chair.py``): the same objects in every caption
and the same CHAIRs / CHAIRi, except where mllm differs on purpose:

- the reference singularises every word with pattern's ``singularize``, which turns "bus" into
  "bu", "glass" into "glas", "tennis" into "tenni" and "ties" into "ty": it never counts a
  bus or a glass, nor ties in the plural. mllm only singularises into known words;
- its "baby"/"adult"/"passenger" qualifiers and its two-word names are fixed word lists ("baby
  dog" but not "baby puppy"); mllm applies them to every word of the table's categories.

So mllm's CHAIR is the reference's metric without those misses; with a different synonym list
than the reference's own, absolute numbers are comparable across mllm runs rather than to
published tables.

Expected under ``--data-root`` (https://cocodataset.org/#download, 2014 train/val
annotations)::

    annotations/instances_val2014.json
    annotations/captions_val2014.json
    val2014/COCO_val2014_000000000042.jpg

Images asked: ``ROOT/chair_image_ids.txt`` (one COCO image id a line) if present, else 500
val2014 images with instance annotations drawn with ``random.Random(0)`` from their sorted ids
(the 500-image protocol of the papers after CHAIR). Prompt "Please describe this image in
detail." with up to 512 new tokens. ``split`` is the COCO split (default ``val2014``).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mllm.eval.benchmarks.base import (
    BENCHMARKS,
    Benchmark,
    BenchmarkDataError,
    BenchmarkQuestion,
    BenchmarkReport,
    QuestionId,
)
from mllm.eval.benchmarks.files import by_string_id, check_answers, list_under, read_json, require

PROMPT = "Please describe this image in detail."
NUM_IMAGES = 500
SYNONYMS_FILE = Path(__file__).with_name("coco_objects.txt")
DOWNLOAD = "download the 2014 annotations from https://cocodataset.org/#download"
ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")
VEHICLES = ("train", "airplane")
_IRREGULAR = {"men": "man", "women": "woman", "children": "child", "geese": "goose", "mice": "mouse", "teeth": "tooth", "feet": "foot", "oxen": "ox"}  # fmt: skip
_WORD = re.compile(r"[a-z0-9]+(?:[-/][a-z0-9]+)*")  # "t-shirt", "cat/dog": one word, as NLTK splits


@dataclass(frozen=True)
class Mention:
    """An object named in a caption: the words used and the COCO category they name."""

    words: str
    category: str


@cache
def synonym_table(path: Path = SYNONYMS_FILE) -> dict[str, str]:
    """Word or two-word phrase -> COCO category, from the synonym file.

    Raises:
        ValueError: a malformed line, or a word given to two categories (naming the line).
    """
    table: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        category, sep, words = line.partition(":")
        if not sep:
            raise ValueError(f"{path}:{number}: expected 'category: word, word, ...'")
        for word in (w.strip() for w in words.split(",")):
            if table.get(word, category) != category:
                raise ValueError(f"{path}:{number}: {word!r} already names {table[word]!r}")
            table[word] = category.strip()
    return table


@cache
def _known_words() -> frozenset[str]:
    return frozenset(part for phrase in synonym_table() for part in phrase.split())


def singular(word: str) -> str:
    """``word`` in the singular when a plural ending gives a word of the synonym table."""
    known = _known_words()
    if word in known or word in _IRREGULAR:
        return _IRREGULAR.get(word, word)
    candidates = []
    if word.endswith("ies"):  # "skies" is no plural of "ski"
        return next((c for c in (word[:-3] + "y", word[:-1]) if c in known), word)
    if word.endswith("ves"):
        candidates += [word[:-3] + "fe", word[:-3] + "f"]
    if word.endswith("es"):
        candidates.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        candidates.append(word[:-1])
    return next((c for c in candidates if c in known), word)


def find_mentions(caption: str) -> list[Mention]:
    """The COCO objects ``caption`` names, in order (see the module docstring)."""
    table = synonym_table()
    words = [singular(word) for word in _WORD.findall(caption.lower())]
    mentions, index = [], 0
    while index < len(words):
        pair = " ".join(words[index : index + 2])
        word, nxt = words[index], words[index + 1] if index + 1 < len(words) else ""
        qualifies = (word in ("baby", "adult") and table.get(nxt) in ANIMALS) or (
            word == "passenger" and table.get(nxt) in VEHICLES
        )
        if qualifies:  # "baby elephant" is an elephant, not a person
            index += 1
        elif pair in table and " " in pair:
            mentions.append(Mention(pair, table[pair]))
            index += 2
        else:
            if word in table:
                mentions.append(Mention(word, table[word]))
            index += 1
    if any(m.category == "toilet" for m in mentions):  # a toilet seat is no chair
        mentions = [m for m in mentions if m.words != "seat"]
    return mentions


def chair_metrics(
    captions: Mapping[str, str], truth: Mapping[str, set[str]]
) -> tuple[dict[str, float], int]:
    """CHAIRs, CHAIRi and the mention count of ``captions`` (image id -> caption)."""
    hallucinated_captions = hallucinated = mentioned = 0
    for image_id, caption in captions.items():
        mentions = find_mentions(caption)
        wrong = sum(m.category not in truth[image_id] for m in mentions)
        mentioned += len(mentions)
        hallucinated += wrong
        hallucinated_captions += wrong > 0
    metrics = {
        "chair_s": hallucinated_captions / len(captions) if captions else 0.0,
        "chair_i": hallucinated / mentioned if mentioned else 0.0,
    }
    return metrics, mentioned


@BENCHMARKS.register("chair")
class CHAIR(Benchmark):
    """Detailed captions of COCO images; ``split`` the COCO split (default ``val2014``)."""

    name = "chair"
    max_new_tokens = 512

    def __init__(self, root: Path, split: str | None = None) -> None:
        super().__init__(root, split or "val2014")

    def _instances(self) -> dict[str, set[str]]:
        """Image id -> categories of its instance annotations (images with at least one)."""
        path = self.root / "annotations" / f"instances_{self.split}.json"
        document = read_json(path, DOWNLOAD)
        names = {}
        for index, category in enumerate(list_under(document, "categories", path)):
            require(category, ("id", "name"), f"{path}: categories[{index}]")
            names[category["id"]] = category["name"]
        objects: dict[str, set[str]] = defaultdict(set)
        for index, record in enumerate(list_under(document, "annotations", path)):
            where = f"{path}: annotations[{index}]"
            require(record, ("image_id", "category_id"), where)
            if record["category_id"] not in names:
                raise BenchmarkDataError(f"{where}: unknown category_id {record['category_id']}")
            objects[str(record["image_id"])].add(names[record["category_id"]])
        return objects

    def _truth(self, image_ids: set[str]) -> dict[str, set[str]]:
        """Image id -> ground-truth objects: instance categories and caption mentions."""
        truth = {image_id: set() for image_id in image_ids}
        for image_id, objects in self._instances().items():
            if image_id in truth:
                truth[image_id] |= objects
        path = self.root / "annotations" / f"captions_{self.split}.json"
        for index, record in enumerate(list_under(read_json(path, DOWNLOAD), "annotations", path)):
            require(record, ("image_id", "caption"), f"{path}: annotations[{index}]")
            if str(record["image_id"]) in truth:
                truth[str(record["image_id"])] |= {
                    m.category for m in find_mentions(record["caption"])
                }
        return truth

    def image_ids(self) -> list[str]:
        """The images asked (see the module docstring), as strings."""
        listed = self.root / "chair_image_ids.txt"
        if listed.is_file():
            lines = listed.read_text(encoding="utf-8").split()
            bad = [line for line in lines if not line.isdigit()]
            if bad:
                raise BenchmarkDataError(f"{listed}: not a COCO image id: {bad[0]!r}")
            return [str(int(line)) for line in lines]
        annotated = sorted(self._instances(), key=int)
        if len(annotated) <= NUM_IMAGES:
            return annotated
        return random.Random(0).sample(annotated, NUM_IMAGES)

    def questions(self) -> list[BenchmarkQuestion]:
        folder = self.root / self.split
        return [
            BenchmarkQuestion(
                question_id=int(image_id),
                text=PROMPT,
                image=folder / f"COCO_{self.split}_{int(image_id):012d}.jpg",
            )
            for image_id in self.image_ids()
        ]

    def score(self, answers: Mapping[QuestionId, str]) -> BenchmarkReport:
        """CHAIRs and CHAIRi over the captions (question ids are COCO image ids)."""
        image_ids = self.image_ids()
        check_answers(self.name, image_ids, answers)
        captions = by_string_id(answers)
        metrics, mentioned = chair_metrics(captions, self._truth(set(image_ids)))
        metrics["mentions"] = float(mentioned)
        return BenchmarkReport(self.name, metrics, {}, len(captions))
