"""Reference labels from LLaVA's own preprocessing; run by make_llava_label_fixtures.py.

Runs in the side venv with ``llava-torch`` and transformers 4.36 (never imports mllm). For each
tokenizer folder under ``FIXTURES/tokenizers`` it loads the slow tokenizer as LLaVA's
``train.py`` does and writes ``FIXTURES/reference/<folder>.json`` with, per corpus record, the
``input_ids`` of ``preprocess_v1`` (``conv_vicuna_v1``) or ``preprocess_plain``
(``conv_llava_plain``), image index -200 kept, its labels as a string (``"."`` for -100, ``"="``
for a label equal to the input id, the only two kinds LLaVA writes: checked here), and whether
LLaVA printed its "tokenization mismatch" warning; and for each prompt (a conversation ending
with a human turn) the ids LLaVA's inference builds: ``conv.get_prompt()`` after
``append_message(roles[1], None)``, through ``tokenizer_image_token``.

    python scripts/llava_label_driver.py tests/fixtures/llava_labels
"""

import contextlib
import copy
import io
import json
import sys
from pathlib import Path

import transformers
from llava import conversation as conversation_lib
from llava.mm_utils import tokenizer_image_token
from llava.train import train as llava_train

MODEL_MAX_LENGTH = 4096


def load_tokenizer(folder: Path) -> transformers.PreTrainedTokenizer:
    """As LLaVA's train.py: slow tokenizer, right padding, pad = unk (v1 and plain alike)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        folder, model_max_length=MODEL_MAX_LENGTH, padding_side="right", use_fast=False
    )
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def run(preprocess, record: dict, **kwargs) -> dict:
    """One record through ``preprocess``; LLaVA mutates its input, so it gets a copy."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        out = preprocess([copy.deepcopy(record["conversations"])], **kwargs)
    input_ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    assert all(label in (-100, token) for token, label in zip(input_ids, labels, strict=True))
    return {
        "id": record["id"],
        "input_ids": input_ids,
        "labels": "".join("." if label == -100 else "=" for label in labels),
        "mismatch": "tokenization mismatch" in printed.getvalue(),
    }


def prompt_ids(record: dict, tokenizer: transformers.PreTrainedTokenizer) -> dict:
    """The generation prompt's ids as LLaVA's eval scripts (run_llava.py) build them."""
    conv = conversation_lib.conv_templates["vicuna_v1"].copy()
    for turn in record["conversations"]:
        conv.append_message(conv.roles[1 if turn["from"] == "gpt" else 0], turn["value"])
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    return {"id": record["id"], "input_ids": tokenizer_image_token(prompt, tokenizer)}


def main(fixtures: Path) -> None:
    corpus = json.loads((fixtures / "corpus.json").read_text())
    (fixtures / "reference").mkdir(exist_ok=True)
    for folder in sorted((fixtures / "tokenizers").iterdir()):
        tokenizer = load_tokenizer(folder)
        conversation_lib.default_conversation = conversation_lib.conv_templates["vicuna_v1"]
        v1 = [
            run(
                llava_train.preprocess_v1,
                record,
                tokenizer=tokenizer,
                has_image="image" in record,  # LazySupervisedDataset's rule
            )
            for record in corpus["vicuna_v1"]
        ]
        conversation_lib.default_conversation = conversation_lib.conv_templates["plain"]
        plain = [
            run(llava_train.preprocess_plain, record, tokenizer=tokenizer)
            for record in corpus["plain"]
        ]
        prompts = [prompt_ids(record, tokenizer) for record in corpus["prompts"]]
        reference = {
            "tokenizer": folder.name,
            "legacy": tokenizer.legacy,
            "versions": {
                "transformers": transformers.__version__,
                "tokenizers": llava_train.tokenizers.__version__,
            },
            "vicuna_v1": v1,
            "plain": plain,
            "prompts": prompts,
        }
        text = json.dumps(reference, ensure_ascii=False, separators=(",", ":"))
        (fixtures / "reference" / f"{folder.name}.json").write_text(text + "\n")
        dropped = sum(sample["mismatch"] for sample in v1 + plain)
        print(f"{folder.name}: {len(v1)} v1 + {len(plain)} plain samples, {dropped} mismatches")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
