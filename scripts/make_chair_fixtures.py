"""Write tests/fixtures/benchmarks/chair/: a tiny COCO val2014 layout (instance and caption
annotations, authored here), model captions full of the words that trip CHAIR scorers, and
what the reference scorer says about them, which ``tests/test_benchmarks_chair.py`` compares
mllm's CHAIR against.

The reference is Rohrbach et al.'s ``utils/chair.py`` in its Python 3 port
(github.com/tsunghan-wu/chair_eval_python3, the version the hallucination papers after CHAIR
run). It needs NLTK's ``punkt_tab`` data (for ``word_tokenize``) and pattern's
``singularize``; ``pattern3`` on PyPI no longer imports on Python 3.11 (a syntax error in a
module ``singularize`` does not use), so this script executes only the part of
``pattern3/text/en/inflect.py`` that defines it. The reference runs unchanged otherwise, fed
mllm's own synonym table (``coco_objects.txt``) written in its ``data/synonyms.txt`` format, so
the comparison is of the rules and not of the two word lists. Regenerate (seconds)::

    python3 -m venv /tmp/chair_side && /tmp/chair_side/bin/pip install nltk
    pip download --no-deps pattern3==3.0.0 && tar xzf pattern3-3.0.0.tar.gz
    # punkt_tab: nltk.download("punkt_tab"), or the copy inside llama-index-core's wheel
    NLTK_DATA=/path/to/nltk_data /tmp/chair_side/bin/python scripts/make_chair_fixtures.py \\
        --chair-py chair_eval_python3/utils/chair.py \\
        --pattern-inflect pattern3-3.0.0/pattern3/text/en/inflect.py \\
        [--official-synonyms chair_eval_python3/data/synonyms.txt]

With ``--official-synonyms`` it also prints where the reference's own word list and mllm's
name different objects in the fixture captions (information only; nothing is written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "benchmarks" / "chair"
TABLE = REPO / "mllm" / "eval" / "benchmarks" / "coco_objects.txt"

CATEGORIES = {1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 6: "bus", 7: "train", 13: "stop sign", 15: "bench", 17: "cat", 18: "dog", 21: "cow", 22: "elephant", 25: "giraffe", 27: "backpack", 32: "tie", 37: "sports ball", 41: "skateboard", 44: "bottle", 46: "wine glass", 47: "cup", 49: "knife", 51: "bowl", 54: "sandwich", 58: "hot dog", 59: "pizza", 62: "chair", 63: "couch", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 77: "cell phone", 81: "sink", 88: "teddy bear", 35: "skis", 43: "tennis racket"}  # fmt: skip

# image id -> (instance categories, human captions): the ground truth, authored here.
IMAGES = {
    139: (["person", "bus", "stop sign"], ["People wait at a stop sign as a city bus pulls up."]),
    285: (["bear"], ["A large brown bear sitting in the grass."]),
    632: (["bed", "book"], ["A bedroom with a neatly made bed and a shelf of books."]),
    724: (["stop sign"], ["A stop sign on a pole next to a quiet street."]),
    776: (["teddy bear"], ["Three teddy bears sit together on a couch."]),
    785: (["person", "skis"], ["A woman on skis poses on a snowy slope."]),
    802: (["oven", "refrigerator"], ["A kitchen with a stove and a refrigerator."]),
    872: (["person", "sports ball"], ["A baseball player swings at a ball."]),
    885: (["person", "tie"], ["A man in a suit and a red tie smiles."]),
    1000: (["person", "dining table", "wine glass", "knife"], ["Friends share a meal at a table."]),
    1268: (["elephant", "person"], ["A baby elephant walks next to its keeper."]),
    1296: (["person", "cell phone"], ["A man talks on his cell phone on the street."]),
    1353: (["person", "train"], ["Passengers board a passenger train at the platform."]),
    1425: (["toilet", "sink"], ["A small bathroom with a toilet and a sink."]),
    1490: (["person", "skateboard"], ["A skateboarder does a trick over a bench."]),
    1503: (["laptop", "tv", "cup"], ["A desk with a laptop computer, a monitor and a mug."]),
    1584: (["person", "tennis racket"], ["A tennis player holds up her racket."]),
    1761: (["person", "sports ball", "dog"], ["A boy and his dog play with a ball in a park."]),
}

# question id (= COCO image id) -> caption, as a model might write it: plurals regular and not,
# possessives, hyphens, two-word objects, several sentences, qualifiers, and objects absent.
CAPTIONS = {
    139: "The image shows a bus stopping at a stop-sign. Several people are waiting, and two buses are parked behind it. A man's backpack rests on a bench.",
    285: "A bear sits in tall grass. There are no people in the scene, but a dog's leash lies nearby.",
    632: "A bedroom with a bed, two pillows and a stack of books. A cat sleeps on the bed; a laptop is open on the desk.",
    724: "A red stop sign stands at the corner. Cars drive past, and a traffic light hangs above the road.",
    776: "Three teddy bears sit on a sofa. One teddy-bear wears a tie and holds a wine glass.",
    785: "A skier in a red jacket stands on her skis. Ski poles, snowboards and a dog are visible in the background.",
    802: "The kitchen has a stove top oven, a fridge and a microwave. Knives and glasses sit on the counter.",
    872: "A baseball player swings a baseball bat at the ball while the catcher crouches. Children watch from the stands.",
    885: "A man wearing a suit and a bow tie. Behind him, women in dresses hold glasses of wine.",
    1000: "Friends gather around a dining table with wine glasses, plates, forks and knives. A hot dog and a pizza sit in bowls (and a cake on a chair).",
    1268: "A baby elephant walks beside an adult elephant while a man follows. Giraffes graze in the distance.",
    1296: "A man talks on his cell-phone while walking. Two cellphones lie on a bench near parked motor bikes.",
    1353: "A passenger train waits at the station. Passengers carry suitcases; a bus and a truck are outside.",
    1425: "A bathroom with a toilet and a sink. The toilet seat is up, and a toothbrush sits by the mirror.",
    1490: "A skateboarder jumps over a bench at the skate park. Other kids ride bikes and scooters.",
    1503: "A desk with a laptop computer, a TV monitor, a cup of coffee and a mouse. A teddy bear sits on the chair.",
    1584: "Under clear skies, a tennis player grips her tennis racket. A glass of water and two ties lie on a bench.",
    1761: "A boy kicks a sports ball across the park while his puppy chases it. A baby puppy naps on the grass.",
}  # fmt: skip


def write_coco(folder: Path) -> None:
    """The fixture's COCO val2014 annotation files (and empty train2014 ones the reference reads)."""
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    names = {name: index for index, name in CATEGORIES.items()}
    categories = [{"id": i, "name": n} for i, n in sorted(CATEGORIES.items())]
    extra = sorted({n for objects, _ in IMAGES.values() for n in objects} - set(names))
    for offset, name in enumerate(extra):  # categories the table above left out
        names[name] = 100 + offset
        categories.append({"id": 100 + offset, "name": name})
    instances, captions = [], []
    for image_id, (objects, human) in IMAGES.items():
        for name in objects:
            instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": names[name]})  # fmt: skip
        for text in human:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
    images = [
        {"id": image_id, "file_name": f"COCO_val2014_{image_id:012d}.jpg"} for image_id in IMAGES
    ]
    common = {"info": {}, "licenses": [], "images": images}
    write_json(folder / "annotations" / "instances_val2014.json", {**common, "categories": categories, "annotations": instances})  # fmt: skip
    write_json(
        folder / "annotations" / "captions_val2014.json", {**common, "annotations": captions}
    )


def write_json(path: Path, document: object) -> None:
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def table_as_synonyms_txt(table: Path) -> str:
    """mllm's ``category: word, ...`` lines in the reference's ``category, word, ...`` format."""
    lines = []
    for line in table.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            category, _, words = line.partition(":")
            lines.append(", ".join([category.strip()] + [w.strip() for w in words.split(",")]))
    return "\n".join(lines) + "\n"


def load_reference(chair_py: Path, inflect_py: Path) -> types.ModuleType:
    """The reference ``chair`` module, with pattern's ``singularize`` provided to its import."""
    source = inflect_py.read_text(encoding="utf-8")
    start, end = source.index("VERB, NOUN, ADJECTIVE, ADVERB"), source.index("class Verbs(")
    inflect: dict = {}
    exec("import re\n" + source[start:end], inflect)  # the singular/plural rules only
    en = types.ModuleType("pattern3.en")
    en.singularize = inflect["singularize"]
    sys.modules["pattern3"] = types.ModuleType("pattern3")
    sys.modules["pattern3.en"] = en
    misc = types.ModuleType("misc")  # chair.py's `from misc import *` wants only os
    misc.os = os
    sys.modules["misc"] = misc
    module = types.ModuleType("chair")
    module.__file__ = str(chair_py)
    exec(compile(chair_py.read_text(encoding="utf-8"), str(chair_py), "exec"), module.__dict__)
    return module


def run_reference(chair, coco: Path, synonyms_txt: str) -> dict:
    """The reference's per-caption objects and overall CHAIRs / CHAIRi on ``CAPTIONS``."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        Path("data").mkdir()
        Path("data/synonyms.txt").write_text(synonyms_txt, encoding="utf-8")
        annotations = Path("annotations")
        annotations.mkdir()
        for kind in ("instances", "captions"):
            val = json.loads((coco / "annotations" / f"{kind}_val2014.json").read_text())
            write_json(annotations / f"{kind}_val2014.json", val)
            empty = {**val, "images": [], "annotations": []}
            write_json(annotations / f"{kind}_train2014.json", empty)
        cap_file = Path("captions.json")
        entries = {str(i): {"image_id": i, "caption": c} for i, c in CAPTIONS.items()}
        write_json(cap_file, {"overall": {}, "imgToEval": entries})
        evaluator = chair.CHAIR(set(CAPTIONS), str(annotations))
        with contextlib.redirect_stdout(sys.stderr):
            evaluator.get_annotations()
        output = evaluator.compute_chair(str(cap_file))
    sentences = {
        str(s["image_id"]): {
            "mentions": s["mscoco_generated_words"],
            "hallucinated": [node for _, node in s["mscoco_hallucinated_words"]],
            "truth": sorted(s["mscoco_gt_words"]),
        }
        for s in output["sentences"]
    }
    overall = output["overall_metrics"]
    return {"chair_s": overall["CHAIRs"], "chair_i": overall["CHAIRi"], "captions": sentences}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chair-py", type=Path, required=True)
    parser.add_argument("--pattern-inflect", type=Path, required=True)
    parser.add_argument("--official-synonyms", type=Path)
    args = parser.parse_args()
    chair = load_reference(args.chair_py.resolve(), args.pattern_inflect.resolve())
    write_coco(OUT)
    write_json(OUT / "answers.json", {str(i): c for i, c in CAPTIONS.items()})
    reference = run_reference(chair, OUT, table_as_synonyms_txt(TABLE))
    write_json(OUT / "official.json", reference)
    print(f"reference on mllm's table: CHAIRs {reference['chair_s']:.4f} CHAIRi {reference['chair_i']:.4f}")  # fmt: skip
    if args.official_synonyms:
        own = run_reference(chair, OUT, args.official_synonyms.read_text(encoding="utf-8"))
        print(f"reference on its own list: CHAIRs {own['chair_s']:.4f} CHAIRi {own['chair_i']:.4f}")  # fmt: skip
        for image_id, entry in own["captions"].items():
            ours = reference["captions"][image_id]["mentions"]
            if sorted(entry["mentions"]) != sorted(ours):
                print(f"  {image_id}: its list {entry['mentions']} / mllm's {ours}")


if __name__ == "__main__":
    main()
