"""mllm's ids and labels against LLaVA's own preprocessing, and its prompts against LlavaProcessor.

The references in ``fixtures/llava_labels`` come from ``llava.train.train.preprocess_v1`` /
``preprocess_plain`` and ``llava.mm_utils.tokenizer_image_token`` (llava-torch 1.2.2.post1,
transformers 4.36, slow tokenizer), run by ``scripts/make_llava_label_fixtures.py`` on a hard
corpus with four tiny tokenizers (general text or with Vicuna's scaffolding words, each with
``legacy`` False and True). Here the same corpus goes through mllm with a fast tokenizer built
from the same ``tokenizer.model``. Everything must be equal except these named differences,
each undone or checked by the narrowest rule that explains it:

- ``image_prefix``: LLaVA tokenizes the text after each ``<image>`` as a separate text, so
  sentencepiece writes its dummy prefix there (``'▁', '<0x0A>'`` for v1's ``"\\n"``, ``'▁2'``
  or ``'▁', '2'`` for a caption); mllm tokenizes the whole text once, as LlavaProcessor does,
  and under ``legacy: False`` the text after a special token gets no prefix. Undone by
  replacing LLaVA's tokens that spell ``'▁'`` + mllm's tokens, if that makes the rest equal.
- ``image_prefix_before_space``: under ``legacy: True`` mllm's fast tokenizer writes the
  prefix after ``<image>`` too, but not before a space (tokenizers' Metaspace skips it there,
  sentencepiece writes ``'▁', '▁word'``). Same undoing; the text after the image must start
  with a space.
- ``dropped_user_after_eos``: LLaVA counts each later round as ``len(tokenize(round)) - 1``
  under ``legacy: False``, assuming ``"USER"`` right after ``"</s>"`` (no dummy prefix) is
  one token shorter than alone. Where it is not, LLaVA prints "tokenization mismatch" and
  sets every label to -100; mllm keeps the sample with its labels by the rule.
- ``dropped_separator_in_message``: LLaVA splits rounds at ``" ASSISTANT: "``; a message
  that contains it breaks the split, and LLaVA drops the sample the same way.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessorPil, LlavaProcessor

from mllm.data import (
    IGNORE_INDEX,
    TokenizedSample,
    get_template,
    render_text,
    tokenize_conversation,
)
from mllm.inference.prompts import GenerationRequest, encode_prompt
from mllm.interop.llava import llava_prompt_ids

FIXTURES = Path(__file__).parent / "fixtures" / "llava_labels"
CORPUS = json.loads((FIXTURES / "corpus.json").read_text(encoding="utf-8"))
VARIANTS = sorted(path.stem for path in (FIXTURES / "reference").glob("*.json"))
IMAGE = "<image>"
LLAVA_IMAGE_INDEX = -200
SEPARATOR = " ASSISTANT: "  # LLaVA's conv.sep + roles[1] + ": "

# Samples per category, per tokenizer and template, and v1 replies whose first target is a
# lone '▁' (before a digit or a byte-fallback word) in LLaVA's labels and in mllm's alike.
# A silent change on either side shows here.
EXPECTED = {
    "general-legacy_false": {
        "vicuna_v1": {"equal": 20, "image_prefix": 21, "dropped_separator_in_message": 1},
        "plain": {"image_prefix": 16},
        "lone_separator_targets": 40,
    },
    "general-legacy_true": {
        "vicuna_v1": {"equal": 41, "dropped_separator_in_message": 1},
        "plain": {"equal": 15, "image_prefix_before_space": 1},
        "lone_separator_targets": 40,
    },
    "vicuna_words-legacy_false": {
        "vicuna_v1": {
            "equal": 17,
            "image_prefix": 17,
            "dropped_user_after_eos": 3,
            "dropped_user_after_eos+image_prefix": 4,
            "dropped_separator_in_message": 1,
        },
        "plain": {"image_prefix": 16},
        "lone_separator_targets": 22,
    },
    "vicuna_words-legacy_true": {
        "vicuna_v1": {"equal": 41, "dropped_separator_in_message": 1},
        "plain": {"equal": 15, "image_prefix_before_space": 1},
        "lone_separator_targets": 40,
    },
}
# Prompts (LLaVA's inference ids vs mllm's): the text after an image starts with a space.
SPACE_AFTER_IMAGE_PROMPTS = {"prompt-0", "prompt-1"}


@functools.cache
def reference(variant: str) -> dict:
    return json.loads((FIXTURES / "reference" / f"{variant}.json").read_text(encoding="utf-8"))


@functools.cache
def fast_tokenizer(variant: str):
    """The fixture's tokenizer.model as mllm loads a real model's: fast, ``<image>`` added."""
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / variant)
    assert tokenizer.is_fast
    tokenizer.add_tokens([IMAGE], special_tokens=True)
    return tokenizer


def llava_sample(ref: dict, image_id: int) -> tuple[list[int], list[int]]:
    """LLaVA's ids (its -200 image index mapped to mllm's image id) and labels."""
    ids = [image_id if token == LLAVA_IMAGE_INDEX else token for token in ref["input_ids"]]
    labels = [
        IGNORE_INDEX if c == "." else token for c, token in zip(ref["labels"], ids, strict=True)
    ]
    return ids, labels


def spell(pieces: list[str]) -> str:
    """Sentencepiece pieces as text: ``'▁'`` is a space, ``<0xNN>`` pieces are UTF-8 bytes
    (a character cut between pieces comes out as surrogate escapes)."""
    out = b""
    for piece in pieces:
        byte = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
        out += bytes([int(byte[1], 16)]) if byte else piece.replace("▁", " ").encode()
    return out.decode(errors="surrogateescape")


def split_at(values: list[int], positions: list[int]) -> list[list[int]]:
    bounds = [-1, *positions, len(values)]
    return [values[start + 1 : end] for start, end in itertools.pairwise(bounds)]


def undo_image_prefix(llava_ids, llava_labels, mllm_ids, tokenizer, image_id):
    """Replace, after each image, LLaVA's tokens spelling ``'▁'`` + X by mllm's tokens for X.

    Only where the rest of that stretch (up to the next image) is then equal and LLaVA's
    replaced labels are all -100 or all targets. Returns the new ids, labels and the indices
    of the images after which a prefix was undone.
    """
    llava_images = [i for i, t in enumerate(llava_ids) if t == image_id]
    mllm_images = [i for i, t in enumerate(mllm_ids) if t == image_id]
    if len(llava_images) != len(mllm_images):
        return llava_ids, llava_labels, []
    id_chunks = split_at(llava_ids, llava_images)
    label_chunks = split_at(llava_labels, llava_images)
    mllm_chunks = split_at(mllm_ids, mllm_images)
    undone = []
    for k in range(1, len(id_chunks)):
        ours, theirs = mllm_chunks[k], id_chunks[k]
        for a, b in ((a, b) for a in range(1, 8) for b in range(8)):
            head = spell(tokenizer.convert_ids_to_tokens(theirs[:a]))
            if head != " " + spell(tokenizer.convert_ids_to_tokens(ours[:b])):
                continue
            if theirs[a:] != ours[b:]:
                continue
            head_labels = label_chunks[k][:a]
            if all(label == IGNORE_INDEX for label in head_labels):
                new_labels = [IGNORE_INDEX] * b
            elif head_labels == theirs[:a]:
                new_labels = ours[:b]
            else:
                break
            id_chunks[k] = ours[:b] + theirs[a:]
            label_chunks[k] = new_labels + label_chunks[k][a:]
            undone.append(k)
            break
    ids, labels = id_chunks[0], label_chunks[0]
    for k in range(1, len(id_chunks)):
        ids = [*ids, image_id, *id_chunks[k]]
        labels = [*labels, llava_labels[llava_images[k - 1]], *label_chunks[k]]
    return ids, labels, undone


def target_runs(sample: TokenizedSample, tokenizer) -> list[str]:
    """The text of each run of consecutive target tokens."""
    runs, current = [], []
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [spell(tokenizer.convert_ids_to_tokens(run)) for run in runs]


def rule_targets(record: dict, template: str, legacy: bool) -> list[str]:
    """What the labelling rule trains: v1's separator space + reply + "</s>"; plain's caption
    + "\\n", after the ``'▁'`` that a ``legacy: True`` tokenizer writes after ``<image>``
    (not before a space), which belongs to the caption's first token."""
    replies = [turn["value"] for turn in record["conversations"] if turn["from"] == "gpt"]
    if template == "vicuna_v1":
        return [f" {reply}</s>" for reply in replies]
    return [(" " if legacy and reply[0] != " " else "") + reply + "\n" for reply in replies]


def lone_separator_targets(ids, labels, tokenizer) -> int:
    """Target runs whose first token is a lone ``'▁'`` (before a digit, byte-fallback word...)."""
    lone = tokenizer.convert_tokens_to_ids("▁")
    return sum(
        1
        for i in range(1, len(ids))
        if ids[i] == lone and labels[i] == lone and labels[i - 1] == IGNORE_INDEX
    )


def user_after_eos_extra(tokenizer) -> int:
    """How many more tokens ``"USER:"`` has alone than right after ``"</s>"``; LLaVA's round
    arithmetic assumes 1 under ``legacy: False`` and 0 under ``legacy: True``."""
    alone = tokenizer("USER:", add_special_tokens=False).input_ids
    after = tokenizer("</s>USER:", add_special_tokens=False).input_ids[1:]
    return len(alone) - len(after)


def prefix_kind(text: str, undone: list[int], legacy: bool) -> list[str]:
    """Name the image-prefix difference; under ``legacy: True`` only before a space."""
    if not undone:
        return []
    if not legacy:
        return ["image_prefix"]
    after = text.split(IMAGE)
    assert all(after[k].startswith(" ") for k in undone), text
    return ["image_prefix_before_space"]


def classify(variant: str, template: str, record: dict, ref: dict) -> tuple[str, int, int]:
    """Compare one sample; return its category and its lone-'▁' targets (LLaVA's, mllm's)."""
    tokenizer = fast_tokenizer(variant)
    legacy = reference(variant)["legacy"]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    conversation = record["conversations"]
    sample = tokenize_conversation(
        conversation,
        get_template(template),
        tokenizer,
        image_token=IMAGE,
        num_image_tokens=1,
        max_length=8192,
    )
    # mllm keeps every sample, with exactly the rule's targets.
    assert isinstance(sample, TokenizedSample), record["id"]
    assert target_runs(sample, tokenizer) == rule_targets(record, template, legacy), record["id"]
    llava_ids, llava_labels = llava_sample(ref, image_id)
    ids, labels, undone = undo_image_prefix(
        llava_ids, llava_labels, sample.input_ids, tokenizer, image_id
    )
    text, _ = render_text(conversation, get_template(template), image_token=IMAGE)
    kinds = prefix_kind(text, undone, legacy)
    assert ids == sample.input_ids, record["id"]
    later_rounds = len(conversation) > 2
    assumption_holds = user_after_eos_extra(tokenizer) == (0 if legacy else 1)
    if not ref["mismatch"]:
        assert labels == sample.labels, record["id"]
        assert assumption_holds or not later_rounds, record["id"]
        lone = (
            lone_separator_targets(llava_ids, llava_labels, tokenizer),
            lone_separator_targets(sample.input_ids, sample.labels, tokenizer),
        )
        return "+".join(kinds) or "equal", *lone
    assert all(label == IGNORE_INDEX for label in llava_labels), record["id"]
    if any(SEPARATOR in turn["value"] for turn in conversation):
        kinds.insert(0, "dropped_separator_in_message")
    else:
        assert later_rounds and not assumption_holds, record["id"]
        kinds.insert(0, "dropped_user_after_eos")
    return "+".join(kinds), 0, 0


def test_fixtures_hold_every_tokenizer_and_sample() -> None:
    assert sorted(EXPECTED) == VARIANTS
    assert [len(CORPUS[name]) for name in ("vicuna_v1", "plain", "prompts")] == [42, 16, 20]


@pytest.mark.parametrize("variant", VARIANTS)
def test_ids_and_labels_equal_llava_but_for_named_differences(variant: str) -> None:
    lone = [0, 0]
    for template in ("vicuna_v1", "plain"):
        counts: dict[str, int] = {}
        for record, ref in zip(CORPUS[template], reference(variant)[template], strict=True):
            assert record["id"] == ref["id"]
            kind, llava_lone, mllm_lone = classify(variant, template, record, ref)
            counts[kind] = counts.get(kind, 0) + 1
            if template == "vicuna_v1":
                lone = [lone[0] + llava_lone, lone[1] + mllm_lone]
        assert counts == EXPECTED[variant][template], template
    expected_lone = EXPECTED[variant]["lone_separator_targets"]
    assert lone == [expected_lone, expected_lone]


def llava_processor(tokenizer, num_image_tokens: int) -> LlavaProcessor:
    """LlavaProcessor over a 64-pixel CLIP processor: ``(64 / patch) ** 2`` patches + CLS,
    less the CLS ("default" feature selection, LLaVA-1.5's)."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=int(64 / num_image_tokens**0.5),
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE,
    )


def images_for(text: str) -> list[Image.Image]:
    return [Image.new("RGB", (64, 64))] * text.count(IMAGE)


def inference_prompt_ids(tokenizer, conversation: list[dict], num_image_tokens: int) -> list[int]:
    """The ids mllm's generate() feeds a model trained by mllm, for a vicuna_v1 prompt."""
    model = SimpleNamespace(
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE), num_image_tokens=num_image_tokens
    )
    loaded = SimpleNamespace(
        built=SimpleNamespace(model=model, tokenizer=tokenizer, image_token=IMAGE),
        template="vicuna_v1",
        manifest={},
        image_aspect_ratio="pad",
        image_grid_pinpoints=None,
    )
    text = "".join(turn["value"] for turn in conversation)
    return encode_prompt(loaded, GenerationRequest(conversation, images_for(text)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_inference_prompt_ids_equal_llava_processor(variant: str) -> None:
    """mllm tokenizes a prompt once and expands each image id, as transformers does."""
    tokenizer = fast_tokenizer(variant)
    processor = llava_processor(tokenizer, num_image_tokens=4)
    for record in CORPUS["prompts"]:
        conversation = record["conversations"]
        text = get_template("vicuna_v1").generation_prompt(conversation, image_token=IMAGE)
        expected = processor(text=text, images=images_for(text) or None)["input_ids"][0]
        assert inference_prompt_ids(tokenizer, conversation, 4) == list(expected), record["id"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_inference_prompt_ids_equal_llava_but_for_image_prefix(variant: str) -> None:
    """Against LLaVA's eval ids: equal once its dummy prefixes after images are undone."""
    tokenizer = fast_tokenizer(variant)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    legacy = reference(variant)["legacy"]
    counts: dict[str, int] = {}
    for record, ref in zip(CORPUS["prompts"], reference(variant)["prompts"], strict=True):
        text = get_template("vicuna_v1").generation_prompt(record["conversations"])
        theirs = [image_id if t == LLAVA_IMAGE_INDEX else t for t in ref["input_ids"]]
        ours = inference_prompt_ids(tokenizer, record["conversations"], 1)
        ids, _, undone = undo_image_prefix(theirs, theirs, ours, tokenizer, image_id)
        assert ids == ours, record["id"]
        kind = "+".join(prefix_kind(text, undone, legacy)) or "equal"
        counts[kind] = counts.get(kind, 0) + 1
    # legacy False: every prompt with an image; legacy True: those with a space after one.
    prefixed = len(SPACE_AFTER_IMAGE_PROMPTS) if legacy else 11
    name = "image_prefix_before_space" if legacy else "image_prefix"
    assert counts == {"equal": len(CORPUS["prompts"]) - prefixed, name: prefixed}


def llava_prompt_ids_for(variant: str, record: dict) -> tuple[list[int], list[int]]:
    """mllm's ``llava_prompt_ids`` (for original LLaVA checkpoints) and LLaVA's own ids."""
    tokenizer = fast_tokenizer(variant)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    text = get_template("vicuna_v1").generation_prompt(record["conversations"])
    ours = llava_prompt_ids(
        tokenizer, text, image_token=IMAGE, image_token_id=image_id, num_image_tokens=1
    )
    ref = next(r for r in reference(variant)["prompts"] if r["id"] == record["id"])
    return ours, [image_id if t == LLAVA_IMAGE_INDEX else t for t in ref["input_ids"]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_llava_prompt_ids_equal_llava(variant: str) -> None:
    for record in CORPUS["prompts"]:
        if record["id"] not in SPACE_AFTER_IMAGE_PROMPTS:
            ours, theirs = llava_prompt_ids_for(variant, record)
            assert ours == theirs, record["id"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_llava_prompt_ids_equal_llava_with_space_after_image(variant: str) -> None:
    for record in CORPUS["prompts"]:
        if record["id"] in SPACE_AFTER_IMAGE_PROMPTS:
            ours, theirs = llava_prompt_ids_for(variant, record)
            assert ours == theirs, record["id"]
