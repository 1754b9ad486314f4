"""tokenize_conversation: image placeholder expansion, truncation policy, labels, tokenizer checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mllm.data import (
    IGNORE_INDEX,
    ConversationError,
    DroppedSample,
    TokenizedSample,
    get_template,
    tokenize_conversation,
)

VICUNA = get_template("vicuna_v1")

TWO_IMAGES = [
    {"from": "human", "value": "Compare <image> with <image> please."},
    {"from": "gpt", "value": "Both show a red circle."},
]


def run(conversation, tokenizer, *, num_image_tokens=1, max_length=4096, template=VICUNA):
    return tokenize_conversation(
        conversation,
        template,
        tokenizer,
        image_token="<image>",
        num_image_tokens=num_image_tokens,
        max_length=max_length,
    )


def image_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.convert_tokens_to_ids("<image>")


def test_each_marker_becomes_n_placeholders_at_its_position(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    single = run(TWO_IMAGES, tokenizer, num_image_tokens=1)
    expanded = run(TWO_IMAGES, tokenizer, num_image_tokens=7)
    assert isinstance(single, TokenizedSample) and isinstance(expanded, TokenizedSample)
    assert single.num_images == expanded.num_images == 2
    # Expanding the one-placeholder sample by hand gives exactly the 7-placeholder sample.
    want_ids, want_labels = [], []
    for token, label in zip(single.input_ids, single.labels, strict=True):
        copies = 7 if token == image_id(tokenizer) else 1
        want_ids += [token] * copies
        want_labels += [label] * copies
    assert expanded.input_ids == want_ids
    assert expanded.labels == want_labels
    positions = [i for i, token in enumerate(expanded.input_ids) if token == image_id(tokenizer)]
    assert len(positions) == 14
    first = positions[0]
    assert positions[:7] == list(range(first, first + 7))  # one contiguous block per image
    assert all(expanded.labels[i] == IGNORE_INDEX for i in positions)


def test_truncation_keeps_image_blocks_whole(tokenizer: PreTrainedTokenizerBase) -> None:
    full = run(TWO_IMAGES, tokenizer, num_image_tokens=10)
    assert isinstance(full, TokenizedSample)
    last_image = max(i for i, t in enumerate(full.input_ids) if t == image_id(tokenizer))
    first_label = min(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)

    # A cut inside the reply: truncated, both image blocks whole, some labels left.
    cut = first_label + 2
    sample = run(TWO_IMAGES, tokenizer, num_image_tokens=10, max_length=cut)
    assert isinstance(sample, TokenizedSample)
    assert sample.input_ids == full.input_ids[:cut]
    assert sample.labels == full.labels[:cut]
    assert sample.input_ids.count(image_id(tokenizer)) == 20

    # A cut inside the second image block: dropped, with the reason.
    dropped = run(TWO_IMAGES, tokenizer, num_image_tokens=10, max_length=last_image - 3)
    assert isinstance(dropped, DroppedSample)
    assert dropped.kind == "cuts_image"
    assert "cut image 2 of 2" in dropped.reason
    assert f"> max_length {last_image - 3}" in dropped.reason

    # A cut after the images but before any target: dropped, not returned fully masked.
    dropped = run(TWO_IMAGES, tokenizer, num_image_tokens=10, max_length=first_label)
    assert isinstance(dropped, DroppedSample)
    assert dropped.kind == "no_targets_left"


def test_no_max_length_ever_yields_an_all_masked_sample(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    full = run(TWO_IMAGES, tokenizer, num_image_tokens=4)
    for max_length in range(1, len(full.input_ids) + 2):
        sample = run(TWO_IMAGES, tokenizer, num_image_tokens=4, max_length=max_length)
        if isinstance(sample, TokenizedSample):
            assert len(sample.input_ids) == len(sample.labels) <= max_length
            assert any(label != IGNORE_INDEX for label in sample.labels[1:])
            assert sample.input_ids.count(image_id(tokenizer)) == 8


def test_unicode_text_encodes_and_labels_exactly(tokenizer: PreTrainedTokenizerBase) -> None:
    reply = "Ça va, naïve café — 世界 🙂 Ωμέγα"
    conversation = [
        {"from": "human", "value": "Wie geht's? 你好吗？"},
        {"from": "gpt", "value": reply},
    ]
    for name in ("vicuna_v1", "chatml", "llama3"):
        sample = run(conversation, tokenizer, template=get_template(name))
        assert isinstance(sample, TokenizedSample)
        labelled = [label for label in sample.labels if label != IGNORE_INDEX]
        end = get_template(name).assistant_end
        assert tokenizer.decode(labelled) == reply + end
        assert tokenizer.unk_token_id not in sample.input_ids  # byte fallback, no <unk>


def test_marker_in_a_reply_is_rejected(tokenizer: PreTrainedTokenizerBase) -> None:
    conversation = [{"from": "human", "value": "Draw."}, {"from": "gpt", "value": "<image>"}]
    with pytest.raises(ConversationError, match="inside a gpt reply"):
        run(conversation, tokenizer)


def test_template_writing_bos_is_rejected(tokenizer: PreTrainedTokenizerBase) -> None:
    conversation = [{"from": "system", "value": "<s>"}, *TWO_IMAGES]
    with pytest.raises(ValueError, match="BOS twice"):
        run(conversation, tokenizer)


def test_sizes_must_be_positive(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ValueError, match="num_image_tokens"):
        run(TWO_IMAGES, tokenizer, num_image_tokens=0)


def test_missing_special_tokens_are_reported(tiny_tokenizer_dir: Path) -> None:
    bare = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    with pytest.raises(ValueError, match="'<image>' .* is not a single special token"):
        run(TWO_IMAGES, bare)
    bare.add_tokens(["<image>"], special_tokens=True)
    with pytest.raises(ValueError, match="'<\\|im_start\\|>' .*chatml"):
        run(TWO_IMAGES, bare, template=get_template("chatml"))


def test_slow_tokenizer_is_rejected() -> None:
    class SlowTokenizer:
        is_fast = False

        def __len__(self) -> int:
            return 3

    with pytest.raises(TypeError, match="offset mapping"):
        run(TWO_IMAGES, SlowTokenizer())
