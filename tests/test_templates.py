"""Templates: exact rendering, which tokens carry labels, system prompts, and role errors."""

from __future__ import annotations

import re

import pytest
from transformers import PreTrainedTokenizerBase

from mllm.data import (
    IGNORE_INDEX,
    TEMPLATES,
    ConversationError,
    TokenizedSample,
    get_template,
    render_text,
    tokenize_conversation,
)
from mllm.registry import UnknownComponentError

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

TWO_TURNS = [
    {"from": "human", "value": "<image>\nWhat color is the shape?"},
    {"from": "gpt", "value": "A red circle."},
    {"from": "human", "value": "Where is the shape?"},
    {"from": "gpt", "value": "top left"},
]
CAPTION = [
    {"from": "human", "value": "<image>\nDescribe the image briefly."},
    {"from": "gpt", "value": "A red circle."},
]


def tokenize(conversation, name: str, tokenizer: PreTrainedTokenizerBase) -> TokenizedSample:
    sample = tokenize_conversation(
        conversation,
        get_template(name),
        tokenizer,
        image_token="<image>",
        num_image_tokens=1,
        max_length=4096,
    )
    assert isinstance(sample, TokenizedSample)
    return sample


def decoded_runs(
    sample: TokenizedSample, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[str], list[str]]:
    """Decode the maximal runs of labelled and of unlabelled tokens (after BOS)."""
    assert sample.input_ids[0] == tokenizer.bos_token_id
    assert sample.labels[0] == IGNORE_INDEX
    labelled: list[str] = []
    unlabelled: list[str] = []
    run: list[int] = []
    run_is_target = None
    pairs = list(zip(sample.input_ids[1:], sample.labels[1:], strict=True))
    for token, label in [*pairs, (None, None)]:
        is_target = label is not None and label != IGNORE_INDEX
        if token is None or (run and is_target != run_is_target):
            (labelled if run_is_target else unlabelled).append(tokenizer.decode(run))
            run = []
        if token is not None:
            if is_target:
                assert label == token  # a label is always the token itself
            run.append(token)
            run_is_target = is_target
    return labelled, unlabelled


# --- exact text -------------------------------------------------------------------------


def test_vicuna_v1_renders_llavas_conv_vicuna_v1() -> None:
    text, spans = render_text(TWO_TURNS, get_template("vicuna_v1"), image_token="<image>")
    assert text == (
        f"{VICUNA_SYSTEM} USER: <image>\nWhat color is the shape? ASSISTANT: A red circle.</s>"
        "USER: Where is the shape? ASSISTANT: top left</s>"
    )
    # The space after "ASSISTANT:" is the model's to write: generation prompts end before it.
    assert [text[start:end] for start, end in spans] == [" A red circle.</s>", " top left</s>"]


def test_vicuna_v1_generation_prompt_ends_like_llava() -> None:
    prompt = get_template("vicuna_v1").generation_prompt(TWO_TURNS[:3])
    # LLaVA's get_prompt writes "ASSISTANT:" with no space for the message being generated.
    assert prompt.endswith("</s>USER: Where is the shape? ASSISTANT:")


def test_plain_keeps_only_the_image_and_the_caption() -> None:
    text, spans = render_text(CAPTION, get_template("plain"), image_token="<image>")
    assert text == "<image>A red circle.\n"
    assert [text[start:end] for start, end in spans] == ["A red circle.\n"]
    assert get_template("plain").generation_prompt(CAPTION[:1]) == "<image>"


def test_llama3_renders_the_instruct_format_without_bos() -> None:
    conversation = [{"from": "system", "value": "Be brief."}, *TWO_TURNS]
    text, _ = render_text(conversation, get_template("llama3"), image_token="<image>")
    assert text == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat color is the shape?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red circle.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhere is the shape?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\ntop left<|eot_id|>"
    )
    assert "<|begin_of_text|>" not in text  # the Llama-3 tokenizer adds it


def test_llama3_trims_messages_like_its_chat_template() -> None:
    conversation = [{"from": "human", "value": "  Hi \n"}, {"from": "gpt", "value": "\n yes  "}]
    text, _ = render_text(conversation, get_template("llama3"), image_token="<image>")
    assert "\n\nHi<|eot_id|>" in text
    assert text.endswith("\n\nyes<|eot_id|>")


def test_chatml_renders_qwen_format_with_default_system() -> None:
    text, spans = render_text(TWO_TURNS, get_template("chatml"), image_token="<image>")
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat color is the shape?<|im_end|>\n"
        "<|im_start|>assistant\nA red circle.<|im_end|>\n"
        "<|im_start|>user\nWhere is the shape?<|im_end|>\n"
        "<|im_start|>assistant\ntop left<|im_end|>\n"
    )
    assert [text[start:end] for start, end in spans] == [
        "A red circle.<|im_end|>",
        "top left<|im_end|>",
    ]


# --- labels, token by token ------------------------------------------------------------


def test_vicuna_v1_labels_replies_and_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    labelled, unlabelled = decoded_runs(tokenize(TWO_TURNS, "vicuna_v1", tokenizer), tokenizer)
    assert labelled == ["A red circle.</s>", "top left</s>"]
    assert unlabelled == [
        f"{VICUNA_SYSTEM} USER: <image>\nWhat color is the shape? ASSISTANT:",
        "USER: Where is the shape? ASSISTANT:",
    ]


def test_plain_labels_caption_and_newline(tokenizer: PreTrainedTokenizerBase) -> None:
    labelled, unlabelled = decoded_runs(tokenize(CAPTION, "plain", tokenizer), tokenizer)
    assert labelled == ["A red circle.\n"]
    assert unlabelled == ["<image>"]


def test_llama3_labels_replies_and_eot(tokenizer: PreTrainedTokenizerBase) -> None:
    labelled, unlabelled = decoded_runs(tokenize(TWO_TURNS, "llama3", tokenizer), tokenizer)
    assert labelled == ["A red circle.<|eot_id|>", "top left<|eot_id|>"]
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert unlabelled == [
        f"{header.format('user')}<image>\nWhat color is the shape?<|eot_id|>"
        f"{header.format('assistant')}",
        f"{header.format('user')}Where is the shape?<|eot_id|>{header.format('assistant')}",
    ]


def test_chatml_labels_replies_and_im_end_not_the_newline(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    labelled, unlabelled = decoded_runs(tokenize(TWO_TURNS, "chatml", tokenizer), tokenizer)
    assert labelled == ["A red circle.<|im_end|>", "top left<|im_end|>"]
    assert unlabelled == [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat color is the shape?<|im_end|>\n<|im_start|>assistant\n",
        "\n<|im_start|>user\nWhere is the shape?<|im_end|>\n<|im_start|>assistant\n",
        "\n",
    ]


@pytest.mark.parametrize("name", TEMPLATES.names())
def test_generation_prompt_is_a_token_prefix_of_training(
    tokenizer: PreTrainedTokenizerBase, name: str
) -> None:
    """At inference the model sees exactly the tokens it was trained on, then the reply."""
    conversation = CAPTION if name == "plain" else TWO_TURNS
    template = get_template(name)
    sample = tokenize(conversation, name, tokenizer)
    prompt_ids = tokenizer(template.generation_prompt(conversation[:-1])).input_ids
    assert sample.input_ids[: len(prompt_ids)] == prompt_ids
    assert sample.labels[len(prompt_ids) - 1] == IGNORE_INDEX
    assert sample.labels[len(prompt_ids)] != IGNORE_INDEX  # the reply starts right there


@pytest.mark.parametrize("name", TEMPLATES.names())
def test_stop_and_special_tokens_are_single_tokens(
    tokenizer: PreTrainedTokenizerBase, name: str
) -> None:
    template = get_template(name)
    for text in template.special_tokens:
        assert len(tokenizer.encode(text, add_special_tokens=False)) == 1
    assert template.stop_strings  # every template says where generation ends


@pytest.mark.parametrize("name", ["vicuna_v1", "llama3", "chatml"])
def test_user_and_assistant_role_names_are_accepted(name: str) -> None:
    renamed = [
        {"from": "user" if turn["from"] == "human" else "assistant", "value": turn["value"]}
        for turn in TWO_TURNS
    ]
    template = get_template(name)
    assert template.render(renamed) == template.render(TWO_TURNS)


# --- system prompts ---------------------------------------------------------------------


def test_system_turn_overrides_the_default() -> None:
    conversation = [{"from": "system", "value": "Be brief."}, *TWO_TURNS]
    vicuna, _ = render_text(conversation, get_template("vicuna_v1"), image_token="<image>")
    assert vicuna.startswith("Be brief. USER: <image>\n")
    assert VICUNA_SYSTEM not in vicuna
    chatml, _ = render_text(conversation, get_template("chatml"), image_token="<image>")
    assert chatml.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_empty_system_turn_removes_the_system_block() -> None:
    conversation = [{"from": "system", "value": ""}, *TWO_TURNS]
    chatml, _ = render_text(conversation, get_template("chatml"), image_token="<image>")
    assert chatml.startswith("<|im_start|>user\n")
    llama3, _ = render_text(TWO_TURNS, get_template("llama3"), image_token="<image>")
    assert llama3.startswith("<|start_header_id|>user")  # Llama-3 has no default system


def test_system_turn_is_never_labelled(tokenizer: PreTrainedTokenizerBase) -> None:
    conversation = [{"from": "system", "value": "Be brief."}, *TWO_TURNS]
    labelled, _ = decoded_runs(tokenize(conversation, "chatml", tokenizer), tokenizer)
    assert labelled == ["A red circle.<|im_end|>", "top left<|im_end|>"]


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([], "no human/gpt turns"),
        ("hello", "list of turns"),
        ([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}], "turn 0 is from 'gpt'"),
        (
            [
                {"from": "human", "value": "q"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a"},
            ],
            "turn 1 is from 'human' but a 'gpt' turn was expected",
        ),
        (
            [
                {"from": "human", "value": "q"},
                {"from": "system", "value": "s"},
                {"from": "gpt", "value": "a"},
            ],
            "only turn 0 may be one",
        ),
        ([{"from": "bot", "value": "q"}], "unknown role 'bot'"),
        ([{"from": "human"}], "turn 0 has no 'value'"),
        ([{"from": "human", "value": 3}], "turn 0 'value' is a int"),
        (["q"], "turn 0 is a str"),
        ([{"from": "human", "value": "q"}], "must end with a gpt turn"),
        ([{"from": "system", "value": "s"}], "no human/gpt turns"),
    ],
)
def test_role_and_type_errors(conversation, message: str) -> None:
    with pytest.raises(ConversationError, match=message):
        get_template("vicuna_v1").render(conversation)


def test_generation_prompt_needs_a_final_human_turn() -> None:
    with pytest.raises(ConversationError, match="ends with human"):
        get_template("chatml").generation_prompt(TWO_TURNS)


def test_plain_rejects_what_llava_pretraining_cannot_use() -> None:
    plain = get_template("plain")
    with pytest.raises(ConversationError, match="exactly one human turn"):
        plain.render(TWO_TURNS)
    with pytest.raises(ConversationError, match="needs '<image>'"):
        plain.render([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}])
    with pytest.raises(ConversationError, match="no system prompt"):
        plain.render([{"from": "system", "value": "s"}, *CAPTION])


def test_image_marker_in_a_reply_is_an_error() -> None:
    conversation = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image>"}]
    with pytest.raises(ConversationError, match="inside a gpt reply"):
        render_text(conversation, get_template("vicuna_v1"), image_token="<image>")


def test_unknown_template_lists_the_choices() -> None:
    with pytest.raises(UnknownComponentError, match=re.escape(", ".join(TEMPLATES.names()))):
        get_template("vicuna")


def test_minigpt4_labels_replies_and_separators(tokenizer: PreTrainedTokenizerBase) -> None:
    sample = tokenize(TWO_TURNS, "minigpt4", tokenizer)
    labelled, _ = decoded_runs(sample, tokenizer)
    assert labelled == ["A red circle.###", "top left###"]
    text, _ = render_text(TWO_TURNS, get_template("minigpt4"), image_token="<image>")
    assert text.startswith("Give the following image: <Img>ImageContent</Img>.")
    assert "###Human: <image>\n" in text and "###Assistant: A red circle.###Human: " in text
