"""Write tests/fixtures/benchmarks/: tiny VQAv2, TextVQA, GQA and POPE inputs in their published
formats (authored here), and the numbers the official scorers give for them, which
``tests/test_benchmarks_vqa.py`` and ``tests/test_benchmarks_pope.py`` compare mllm's against.

The official scorers are LLaVA's ``llava/eval/m4c_evaluator.py`` (``EvalAIAnswerProcessor``,
``TextVQAAccuracyEvaluator``: VQA accuracy) and ``llava/eval/eval_pope.py`` (POPE's parsing
and metrics) from PyPI ``llava-torch==1.2.2.post1``. Both are loaded by file path in a side
venv (the package's ``__init__`` would import torch).

GQA's official scorer is GQA's own ``eval.py`` (the v1.2 release's, as LLaVA's
``scripts/v1_5/eval/gqa.sh`` runs it, with LLaVA's documented patch that tolerates the missing
test-dev scene graphs and choices), fed by LLaVA's ``scripts/convert_gqa_for_eval.py``; neither
is on PyPI, so pass their paths (copies of both are in github.com/SHI-Labs/VCoder at
``playground/data/eval/gqa/data/eval/eval.py`` and ``scripts/convert_gqa_for_eval.py``). They
run as ``gqa.sh`` runs them: the converter on a ``{"question_id", "text"}`` JSON-lines answers
file, then ``eval.py --tier testdev_balanced`` in the data folder; ``eval.py``'s ``scores`` are
read back through ``runpy`` rather than its two-decimal printout. Regenerate (seconds)::

    python3 -m venv /tmp/llava_side
    /tmp/llava_side/bin/pip install --no-deps llava-torch==1.2.2.post1
    /tmp/llava_side/bin/pip install numpy tqdm
    python scripts/make_benchmark_fixtures.py --llava-python /tmp/llava_side/bin/python \\
        --gqa-eval /path/to/gqa/eval.py --gqa-convert /path/to/convert_gqa_for_eval.py

Outputs: ``vqav2/`` and ``textvqa/`` (data roots), ``vqa_predictions.json`` (question id ->
prediction), ``gqa/`` (a data root and ``predictions.json``), ``pope/`` (a data root with three
splits and ``predictions.json``), and ``official.json`` (per-question VQA scores, overall
accuracies, GQA accuracy overall and per structural and semantic type, POPE metrics per split,
and the normaliser's output on ``NORMALISER_PROBES`` plus every contraction it knows).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "benchmarks"

# (question, answer_type, question_type, ten human answers, prediction)
VQA_ITEMS = [
    ("What color is the bus?", "other", "what color is the", ["red"] * 7 + ["Red.", "maroon", "dark red"], "Red"),
    ("How many dogs are there?", "number", "how many", ["2", "two", "2", "2", "3", "2", "two", "2", "2", "2"], "two"),
    ("Is it raining?", "yes/no", "is it", ["no"] * 10, "No."),
    ("What is he holding?", "other", "what is the", ["bat", "a bat", "baseball bat", "bat", "the bat", "stick", "baseball bat", "bat", "club", "wooden bat"], "baseball bat"),
    ("What time is it?", "other", "what time", ["3:00", "3 o'clock", "3 oclock", "afternoon", "3:00", "3", "three", "3:00 pm", "3 pm", "3:00"], "3:00"),
    ("Whose bike is this?", "other", "whose", ["man's", "mans", "the man's", "boy's", "man's", "his", "mans", "man's", "dont know", "don't know"], "dont know"),
    ("What does the sign say?", "other", "what does the", ["stop", "stop", "stop!", "STOP", "stop sign", "stop", "stop", "stop.", "stop", "stop"], "Stop!"),
    ("Is the man happy?", "yes/no", "is the man", ["yes", "yes", "no", "yes", "yes", "yes", "no", "yes", "yes", "yes"], "no"),
    ("What brand is it?", "other", "what brand", ["t-mobile", "t mobile", "tmobile", "t-mobile", "t-mobile", "t - mobile", "t-mobile", "nokia", "t-mobile", "t-mobile"], "t-mobile"),
    ("How much is it?", "number", "how much", ["$1.50", "1.50", "1.5", "$1.50", "1.50", "1.50", "150", "1,50", "$1.50", "1.50"], "1.50"),
    ("What is on the plate?", "other", "what is on the", ["pizza", "pizza", "food", "pizza", "pizza slice", "pizza", "pizza", "pizza", "pizza", "cheese"], "A slice of pizza."),
    ("Where is the cat?", "other", "where is the", ["on couch", "couch", "on the couch", "sofa", "on couch", "couch", "on couch", "on sofa", "couch", "on couch"], "on the couch"),
]  # fmt: skip
NORMALISER_PROBES = [
    "The Red.", "a  man's hat", "dont", "twas", "ow's'at", "somebody'd", "3.5", "3.", "e.g. cat",
    "t-mobile", "t - mobile", "(left)", "yes!", "Yes, it is.", "1,000", "none of them",
    "an apple", "tab\tand\nnewline", "hot-dog?", "x;y", "@home", "100%", "a/b", "a / b",
    "..." * 20, "won't", "youd've", "wasnt", "it's", "its", "He's", "I'm", "ten eleven",
]  # fmt: skip
# (question id, image id, question, gold answer, structural, semantic, detailed, global group,
#  prediction as the model wrote it)
GQA_ITEMS = [
    ("20968497", "n161313", "Is the sky blue?", "yes", "verify", "attr", "verifyAttr", None, "Yes."),
    ("20968498", "n161313", "What is on the table?", "laptop", "query", "rel", "relS", "electronic", "Laptop.."),
    ("20968499", "n161313", "Which color is the cup?", "white", "query", "attr", "chooseAttr", "color", "a white cup"),
    ("20968500", "n235859", "Are there both cars and trees?", "no", "logical", "obj", "and", None, "No "),
    ("20968501", "n235859", "Who is wearing the hat?", "man", "query", "rel", "relS", "person", "MAN."),
    ("20968502", "n235859", "Is the car to the left or right of the tree?", "left", "choose", "rel", "chooseRel", None, "left."),
    ("20968503", "n235859", "Is the dog smaller than the cat?", "yes", "compare", "attr", "compare", None, "yes, it is"),
    ("20968504", "n304512", "What kind of furniture is it?", "chair", "query", "cat", "categoryThat", "furniture", " chair"),
    ("20968505", "n304512", "Which place is it?", "beach", "query", "global", "place", "place", "Beach"),
    ("20968506", "n304512", "Are there any umbrellas?", "no", "verify", "obj", "exist", None, "no."),
]  # fmt: skip
GQA_DRIVER = r"""
import contextlib, io, json, os, runpy, subprocess, sys
eval_py, convert_py, work = sys.argv[1:4]
subprocess.run([sys.executable, convert_py, "--src", "answers.jsonl",
                "--dst", "testdev_balanced_predictions.json"], check=True, cwd=work)
os.chdir(work)
sys.argv = [eval_py, "--tier", "testdev_balanced"]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    scores = runpy.run_path(eval_py, run_name="__main__")["scores"]
with open("testdev_balanced_predictions.json") as f:
    converted = {p["questionId"]: p["prediction"] for p in json.load(f)}
per_type = lambda key: {t: value[0] / 100 for t, value in scores[key].items()}
json.dump({"accuracy": scores["accuracy"] / 100, "binary": scores["binary"] / 100,
           "open": scores["open"] / 100, "structural": per_type("accuracyPerStructuralType"),
           "semantic": per_type("accuracyPerSemanticType"), "converted": converted},
          sys.stdout, indent=1, sort_keys=True)
"""
POPE_SPLITS = {
    # split: [(object, label, prediction)]
    "random": [("dog", "yes", "Yes, there is a dog in the image."), ("kite", "no", "No."),
               ("car", "yes", "yes"), ("bench", "no", "There is not a bench."),
               ("cup", "yes", "No, there is no cup."), ("tie", "no", "Yes"),
               ("bird", "yes", "I think so"), ("horse", "no", "no, it is a zebra")],
    "popular": [("person", "yes", "Yes."), ("chair", "no", "Yes, a chair."),
                ("car", "yes", "Not sure."), ("dining table", "no", "NO"),
                ("cup", "yes", "There is a cup. No doubt."), ("bottle", "no", "No bottle")],
    "adversarial": [("fork", "yes", "no"), ("knife", "no", "no"), ("spoon", "yes", "nope"),
                    ("bowl", "no", "yes, no.")],
}  # fmt: skip

DRIVER = r"""
import importlib.util, io, json, os, sys, contextlib
root = sys.argv[1]
def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, name + ".py"))
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); return module
m4c, pope = load("m4c_evaluator"), load("eval_pope")
job = json.load(sys.stdin)
processor = m4c.EvalAIAnswerProcessor()
evaluator = m4c.TextVQAAccuracyEvaluator()
probes = job["probes"] + sorted(processor.CONTRACTIONS)
out = {"normalised": {p: processor(p) for p in probes}, "vqa": {}, "pope": {}}
for name, items in job["vqa"].items():
    scores = {qid: evaluator._compute_answer_scores(item["gt_answers"]).get(
        processor(item["pred_answer"]), 0.0) for qid, item in items.items()}
    with contextlib.redirect_stderr(io.StringIO()):
        accuracy = evaluator.eval_pred_list(list(items.values()))
    out["vqa"][name] = {"per_question": scores, "accuracy": accuracy}
for split, (label_file, answers) in job["pope"].items():
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        pope.eval_pope([{"text": a} for a in answers], label_file)
    values = {}
    for line in printed.getvalue().splitlines():
        key, _, value = line.partition(": ")
        if key in ("Accuracy", "Precision", "Recall", "F1 score", "Yes ratio"):
            values[key] = float(value)
    out["pope"][split] = values
json.dump(out, sys.stdout, indent=1, sort_keys=True)
"""


def write_inputs() -> dict:
    """Write the fixture data roots; return the side scorer's job."""
    vqa_dir, text_dir, pope_dir = OUT / "vqav2", OUT / "textvqa", OUT / "pope"
    for folder in (vqa_dir, text_dir, pope_dir):
        folder.mkdir(parents=True, exist_ok=True)
    questions, annotations, text_data, predictions = [], [], [], {}
    for index, (question, answer_type, question_type, humans, prediction) in enumerate(VQA_ITEMS):
        qid, image_id = 1000 + index, 42 + index
        questions.append({"question_id": qid, "image_id": image_id, "question": question})
        annotations.append(
            {
                "question_id": qid,
                "image_id": image_id,
                "answer_type": answer_type,
                "question_type": question_type,
                "multiple_choice_answer": humans[0],
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": n + 1}
                    for n, a in enumerate(humans)
                ],
            }
        )
        text_data.append(
            {"question_id": qid, "image_id": f"img{index:04d}", "question": question, "answers": humans, "set_name": "val"}
        )  # fmt: skip
        predictions[str(qid)] = prediction
    dump = lambda path, value: path.write_text(json.dumps(value, indent=1) + "\n")  # noqa: E731
    dump(vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json", {"task_type": "Open-Ended", "data_subtype": "val2014", "questions": questions})  # fmt: skip
    dump(vqa_dir / "v2_mscoco_val2014_annotations.json", {"data_subtype": "val2014", "annotations": annotations})  # fmt: skip
    dump(text_dir / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": text_data})  # fmt: skip
    dump(text_dir / "TextVQA_Rosetta_OCR_v0.2_val.json", {"data": [{"image_id": "img0000", "ocr_tokens": ["BUS", "42"]}]})  # fmt: skip
    dump(OUT / "vqa_predictions.json", predictions)
    items = {
        str(1000 + i): {"pred_answer": item[4], "gt_answers": item[3]}
        for i, item in enumerate(VQA_ITEMS)
    }
    pope_job, pope_predictions = {}, {}
    for split, rows in POPE_SPLITS.items():
        path = pope_dir / f"coco_pope_{split}.json"
        records = [
            {"question_id": n + 1, "image": f"COCO_val2014_{n + 1:012d}.jpg", "text": f"Is there a {obj} in the image?", "label": label}
            for n, (obj, label, _) in enumerate(rows)
        ]  # fmt: skip
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        pope_job[split] = (str(path), [answer for _, _, answer in rows])
        pope_predictions.update({f"{split}/{n + 1}": row[2] for n, row in enumerate(rows)})
    dump(pope_dir / "predictions.json", pope_predictions)
    return {"probes": NORMALISER_PROBES, "vqa": {"vqav2": items}, "pope": pope_job}


def write_gqa() -> dict[str, dict]:
    """Write ``gqa/`` (questions in the published testdev_balanced format, and predictions)."""
    folder = OUT / "gqa"
    folder.mkdir(parents=True, exist_ok=True)
    questions, predictions = {}, {}
    for qid, image, question, answer, structural, semantic, detailed, group, said in GQA_ITEMS:
        questions[qid] = {
            "semantic": [
                {"operation": "select", "dependencies": [], "argument": "scene"},
                {"operation": structural, "dependencies": [0], "argument": detailed},
            ],
            "entailed": [],
            "equivalent": [qid],
            "question": question,
            "imageId": image,
            "isBalanced": True,
            "groups": {"global": group, "local": f"14-{detailed}"},
            "answer": answer,
            "semanticStr": f"select: scene ->{structural}: {detailed} [0]",
            "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"detailed": detailed, "semantic": semantic, "structural": structural},
            "fullAnswer": f"The answer is {answer}.",
        }
        predictions[qid] = said
    (folder / "testdev_balanced_questions.json").write_text(json.dumps(questions, indent=1) + "\n")
    (folder / "predictions.json").write_text(json.dumps(predictions, indent=1) + "\n")
    return questions


def run_gqa(python: str, eval_py: str, convert_py: str, questions: dict) -> dict:
    """GQA's eval.py on the fixture, after LLaVA's converter, as ``gqa.sh`` runs them."""
    with tempfile.TemporaryDirectory() as work:
        Path(work, "testdev_balanced_questions.json").write_text(json.dumps(questions))
        answers = "".join(
            json.dumps({"question_id": item[0], "prompt": item[2], "text": item[-1]}) + "\n"
            for item in GQA_ITEMS
        )
        Path(work, "answers.jsonl").write_text(answers)
        result = subprocess.run(
            [python, "-c", GQA_DRIVER, str(Path(eval_py).resolve()), str(Path(convert_py).resolve()), work],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llava-python", required=True, help="python of the side venv")
    parser.add_argument("--gqa-eval", required=True, help="GQA's eval.py")
    parser.add_argument("--gqa-convert", required=True, help="LLaVA's convert_gqa_for_eval.py")
    args = parser.parse_args()
    job = write_inputs()
    gqa_questions = write_gqa()
    where = subprocess.run(
        [args.llava_python, "-c", "import importlib.util as u; import os; "
         "print(os.path.join(os.path.dirname(u.find_spec('llava').origin), 'eval'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    result = subprocess.run(
        [args.llava_python, "-c", DRIVER, where],
        input=json.dumps(job),
        check=True,
        capture_output=True,
        text=True,
    )
    official = json.loads(result.stdout)
    official["gqa"] = run_gqa(args.llava_python, args.gqa_eval, args.gqa_convert, gqa_questions)
    for split, (label_file, _) in job["pope"].items():  # keep machine paths out of the fixture
        official["pope"][split]["label_file"] = Path(label_file).name
    (OUT / "official.json").write_text(json.dumps(official, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
