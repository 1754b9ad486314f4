"""Write tests/fixtures/benchmarks/: tiny VQAv2, TextVQA and POPE inputs in their published
formats (authored here), and the numbers the official scorers give for them, which
``tests/test_benchmarks_vqa.py`` and ``tests/test_benchmarks_pope.py`` compare mllm's against.

The official scorers are LLaVA's ``llava/eval/m4c_evaluator.py`` (``EvalAIAnswerProcessor``,
``TextVQAAccuracyEvaluator``: VQA accuracy) and ``llava/eval/eval_pope.py`` (POPE's parsing
and metrics) from PyPI ``llava-torch==1.2.2.post1``. Both are loaded by file path in a side
venv (the package's ``__init__`` would import torch). Regenerate (seconds)::

    python3 -m venv /tmp/llava_side
    /tmp/llava_side/bin/pip install --no-deps llava-torch==1.2.2.post1
    /tmp/llava_side/bin/pip install numpy tqdm
    python scripts/make_benchmark_fixtures.py --llava-python /tmp/llava_side/bin/python

Outputs: ``vqav2/`` and ``textvqa/`` (data roots), ``vqa_predictions.json`` (question id ->
prediction), ``pope/`` (a data root with three splits and ``predictions.json``), and
``official.json`` (per-question VQA scores, overall accuracies, POPE metrics per split, and
the normaliser's output on ``NORMALISER_PROBES`` plus every contraction it knows).
"""

from __future__ import annotations

import argparse
import json
import subprocess
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llava-python", required=True, help="python of the side venv")
    args = parser.parse_args()
    job = write_inputs()
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
    for split, (label_file, _) in job["pope"].items():  # keep machine paths out of the fixture
        official["pope"][split]["label_file"] = Path(label_file).name
    (OUT / "official.json").write_text(json.dumps(official, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
