"""Write the fixtures of tests/test_llava_parity_labels.py: tiny tokenizers, a hard corpus,
and the input_ids/labels that LLaVA's own preprocessing gives for it (and its prompt ids).

The reference comes from ``llava.train.train.preprocess_v1`` / ``preprocess_plain`` of PyPI
``llava-torch==1.2.2.post1``, which needs transformers 4.36, so it runs in a side venv
(``scripts/llava_label_driver.py``); the tokenizers are trained here, in mllm's venv, with
``mllm.tiny.train_tiny_tokenizer``. Regenerate (seconds, once the side venv exists)::

    bash scripts/make_llava_side_venv.sh /tmp/llava-venv   # torch 2.13.0 first, then pins
    . .venv/bin/activate
    python scripts/make_llava_label_fixtures.py --llava-python /tmp/llava-venv/bin/python

(pillow because ``llava.train.train`` imports PIL.) The output is deterministic; if a change
here or in ``train_tiny_tokenizer`` changes it, update the test's ``EXPECTED`` counts after
reading why they moved.

Tokenizers (``tokenizers/<name>/``: ``tokenizer.model`` + a Vicuna-v1.5-like
``tokenizer_config.json``), because LLaVA's arithmetic depends on both:

- ``general-legacy_false`` / ``general-legacy_true``: trained on general text only, so the
  corpus tokenizes as real data does (lone ``'▁'`` before digits, byte-fallback pieces);
  ``legacy: False`` is Vicuna-v1.5's setting, under which LLaVA subtracts one token per
  later round;
- ``vicuna_words-legacy_false`` / ``-legacy_true``: the same plus lines of Vicuna's
  scaffolding, so that ``"▁USER"`` is one piece, as words are in a real vocabulary, and
  ``"USER"`` right after ``"</s>"`` (no dummy prefix under ``legacy: False``) is not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from mllm.tiny import train_tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "llava_labels"
DRIVER = ROOT / "scripts" / "llava_label_driver.py"

VICUNA_WORDS = ["USER: Hello there. ASSISTANT: Hi, how can I help?"] * 200
TOKENIZERS = {"general": [], "vicuna_words": VICUNA_WORDS}

# Replies a small tokenizer trained on general text splits in every awkward way.
REPLIES = [
    "2",
    "3 apples and 12 oranges.",
    "There are 1,024 tiles; 17 are red.",
    "It was built in 1889 and restored in 2004.",
    "1999",
    "B",
    "(C) Paris",
    "A. The red one.",
    "D",
    "这是一只猫。",
    "東京タワーは1958年に完成しました。",
    "🐱 A cat!",
    "👍",
    "Café crème, naïve façade, Ångström.",
    "Über alles? Élan and Œuvre.",
    "Quetzalcoatlus and Zyzzyva are rare words.",
    "NASA's XKCD-style McDonald's sign.",
    "...and then it stopped.",
    '"Yes," she said.',
    "(maybe)",
    "- first\n- second",
    "$5.99 each",
    "#1 in the list",
    "?",
    "\nA newline first.",
    "\n\n1. one\n2. two",
    " A leading space.",
    "Trailing newline.\n",
    "3.14159 is pi; e is 2.71828.",
    "-40 degrees",
    "10%",
    "YES",
    "Ω ≈ 42 µm",
]
QUESTIONS = [
    "How many are there?",
    "What year was it built?",
    "Answer with the option's letter from the given choices directly.\nA. red\nB. blue\nC. green",
    "Describe it in one word.",
    "这是什么？",
    "Was ist das?",
    "Count to 3.",
    "What does the sign say? ",
    "Zyzzyva?",
    "List two items.",
]
CAPTIONS = [
    "2 dogs on a sofa.",
    "1999 Ford Mustang",
    "A red circle.",
    "a cat sleeping",
    "Zyzzyva on a leaf",
    "这是一只猫",
    "🐱 on a mat",
    "Café in Paris",
    '"Quoted" caption',
    "(a photo)",
    "...",
    "\nnewline first",
    " leading space",
    "The Eiffel Tower in 1889.",
    "XKCD comic #353",
    "Über den Wolken",
]
LONG_PARAGRAPH = (
    "The museum opened in 1902 with 340 paintings; by 2019 it held 12,875 works, "
    "including 47 by Vermeer's contemporaries. Visitors (about 1.2 million a year) "
    "come from 96 countries. "
) * 3


def turns(*messages: str) -> list[dict[str, str]]:
    """LLaVA turns, alternating human/gpt."""
    return [{"from": "gpt" if i % 2 else "human", "value": m} for i, m in enumerate(messages)]


def record(name: str, conversation: list[dict[str, str]]) -> dict:
    """A LLaVA data record; it has an ``image`` key iff a turn has the marker (as LLaVA's)."""
    out: dict = {"id": name, "conversations": conversation}
    if any("<image>" in turn["value"] for turn in conversation):
        out["image"] = f"{name}.jpg"
    return out


def vicuna_corpus() -> list[dict]:
    """Single-turn, multi-turn and long conversations, with and without an image."""
    records = []
    for i, reply in enumerate(REPLIES):
        question = QUESTIONS[i // 2 % len(QUESTIONS)]
        if i % 2 == 0:  # LLaVA's data (after preprocess_multimodal): the marker, then "\n"
            question = "<image>\n" + question
        records.append(record(f"single-{i:02d}", turns(question, reply)))
    for rounds in (2, 3, 5):
        for image in (False, True):
            messages = []
            for r in range(rounds):
                question = QUESTIONS[(r + rounds) % len(QUESTIONS)]
                if image and r == 0:
                    question = "<image>\n" + question
                messages += [question, REPLIES[(7 * r + rounds + image) % len(REPLIES)]]
            records.append(
                record(f"multi{rounds}-{'image' if image else 'text'}", turns(*messages))
            )
    long_turns = []
    for r, reply in enumerate(REPLIES[:12]):
        question = LONG_PARAGRAPH if r == 1 else QUESTIONS[r % len(QUESTIONS)]
        long_turns += ["<image>\n" + question if r == 0 else question, reply]
    records.append(record("long-12-rounds", turns(*long_turns)))
    records.append(record("long-reply", turns("Tell me about the museum.", LONG_PARAGRAPH)))
    # LLaVA splits each round at " ASSISTANT: "; a message that contains it breaks the split.
    quote = 'Transcripts write " ASSISTANT: " before each answer. Why?'
    records.append(record("separator-in-message", turns(quote, "To mark the speaker.")))
    return records


def plain_corpus() -> list[dict]:
    """LLaVA pretraining captions; plain keeps only the image of the human turn."""
    prompts = ["<image>\n", "<image>", "Describe the image.\n<image>"]
    return [
        record(f"caption-{i:02d}", turns(prompts[i % len(prompts)], caption))
        for i, caption in enumerate(CAPTIONS)
    ]


def prompt_corpus(conversations: list[dict]) -> list[dict]:
    """Generation prompts: some conversations without their last reply, odd image places."""
    chosen = [
        r for r in conversations if not r["id"].startswith("single-") or r["id"] < "single-08"
    ]
    records = [record(r["id"], r["conversations"][:-1]) for r in chosen]
    odd = ["<image> What is shown?", "What is shown?\n<image>", "<image>\n<image>\nCompare."]
    return records + [record(f"prompt-{i}", turns(text)) for i, text in enumerate(odd)]


def write_tokenizers(out: Path) -> None:
    """Train each tokenizer once and write it with a legacy False and a legacy True config."""
    for name, extra_text in TOKENIZERS.items():
        with tempfile.TemporaryDirectory() as tmp:
            model = train_tiny_tokenizer(Path(tmp), extra_text=extra_text) / "tokenizer.model"
            model_bytes = model.read_bytes()
        for legacy in (False, True):
            folder = out / "tokenizers" / f"{name}-legacy_{str(legacy).lower()}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "tokenizer.model").write_bytes(model_bytes)
            config = {  # Vicuna-v1.5's tokenizer_config.json, with this legacy
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": None,
                "clean_up_tokenization_spaces": False,
                "legacy": legacy,
                "model_max_length": 4096,
                "padding_side": "right",
                "sp_model_kwargs": {},
                "tokenizer_class": "LlamaTokenizer",
            }
            (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llava-python", default="/tmp/llava-venv/bin/python")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_tokenizers(args.out)
    vicuna = vicuna_corpus()
    corpus = {"vicuna_v1": vicuna, "plain": plain_corpus(), "prompts": prompt_corpus(vicuna)}
    text = json.dumps(corpus, ensure_ascii=False, indent=1)
    (args.out / "corpus.json").write_text(text + "\n", encoding="utf-8")
    env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin"}
    subprocess.run([args.llava_python, str(DRIVER), str(args.out)], check=True, env=env)


if __name__ == "__main__":
    main()
