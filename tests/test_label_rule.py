"""The labelling rule, checked independently of how tokenize.py implements it.

A reply's targets are the tokens the model must generate: those after its generation prompt's
tokens, up to the end of the reply's end-of-turn. That is computed here from nothing but the
tokenizer and the template's two renderings (generation prompt, training text), for every
template, three kinds of tokenizer and replies that real data has and that a tokenizer
trained on them would hide: numbers (a lone ``'▁'`` before the digits), capitalised and rare
words (byte-fallback pieces), CJK, emoji, accents, leading punctuation and newlines.
"""

from __future__ import annotations

import pytest
from conftest import with_template_tokens
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mllm.data import (
    IGNORE_INDEX,
    DroppedSample,
    Template,
    TokenizedSample,
    get_template,
    tokenize_conversation,
)
from mllm.tiny import train_tiny_tokenizer

HARD_REPLIES = (
    "2",
    "1999",
    "Purple",
    "Yellow",
    "Center",
    "C",
    "日本語です",
    "😀 yes",
    "Ærøskøbing, café",
    "(B) 12",
    ". Period first",
    "\nA new line",
    "A red circle.",
)
CHAT_TEMPLATES = (
    *("vicuna_v1", "llama3", "chatml", "minigpt4"),
    *("mistral", "llama3.1", "qwen2.5", "gemma2", "gemma3", "phi3"),
)


@pytest.fixture(scope="module")
def merged_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """Trained on the replies themselves: ``'▁Purple'`` is one piece, space and word merged."""
    lines = [" ".join(HARD_REPLIES).replace("\n", " ")] * 200
    folder = train_tiny_tokenizer(tmp_path_factory.mktemp("merged"), extra_text=lines)
    return with_template_tokens(AutoTokenizer.from_pretrained(folder))


@pytest.fixture(params=["sentencepiece", "byte_level", "merged"])
def any_tokenizer(request, tokenizer, llama3_tokenizer, merged_tokenizer):
    return {"sentencepiece": tokenizer, "byte_level": llama3_tokenizer}.get(
        request.param, merged_tokenizer
    )


def tokenize(conversation, template: Template, tokenizer, max_length: int = 4096):
    return tokenize_conversation(
        conversation,
        template,
        tokenizer,
        image_token="<image>",
        num_image_tokens=1,
        max_length=max_length,
    )


def expected_labels(conversation, template: Template, tokenizer) -> list[int]:
    """Labels from the rule: per exchange, the ids between its prompt and its reply's end."""
    ids = tokenizer("".join(segment.text for segment in template.render(conversation))).input_ids
    labels = [IGNORE_INDEX] * len(ids)
    offset = 1 if conversation[0]["from"] == "system" else 0
    for end in range(offset + 2, len(conversation) + 1, 2):
        prompt = tokenizer(template.generation_prompt(conversation[: end - 1])).input_ids
        through_reply = "".join(segment.text for segment in template.render(conversation[:end]))
        through_reply = through_reply.removesuffix(template.conversation_end)
        through_reply = through_reply.removesuffix(template.assistant_suffix)
        reply_end = len(tokenizer(through_reply).input_ids)
        # Prompts are token prefixes of the training text, so these positions line up.
        assert ids[: len(prompt)] == prompt, "generation prompt is not a token prefix"
        assert ids[:reply_end] == tokenizer(through_reply).input_ids
        labels[len(prompt) : reply_end] = ids[len(prompt) : reply_end]
    return labels


def conversation_with(reply: str, *, system: bool, image: bool) -> list[dict[str, str]]:
    turns = [{"from": "system", "value": "Answer briefly."}] if system else []
    return turns + [
        {"from": "human", "value": ("<image>\n" if image else "") + "What is shown?"},
        {"from": "gpt", "value": "Purple"},
        {"from": "human", "value": "And then?"},
        {"from": "gpt", "value": reply},
    ]


@pytest.mark.parametrize("name", CHAT_TEMPLATES)
@pytest.mark.parametrize("reply", HARD_REPLIES)
def test_targets_are_the_tokens_generated_after_the_prompt(
    any_tokenizer: PreTrainedTokenizerBase, name: str, reply: str
) -> None:
    template = get_template(name)
    if template.strip_content and reply != reply.strip():
        pytest.skip("the template trims messages (Llama-3, Gemma): the same as the stripped reply")
    for system in (False, True) if template.system_format else (False,):
        for image in (True, False):
            conversation = conversation_with(reply, system=system, image=image)
            sample = tokenize(conversation, template, any_tokenizer)
            assert isinstance(sample, TokenizedSample)
            assert sample.labels == expected_labels(conversation, template, any_tokenizer)


@pytest.mark.parametrize("reply", ["2", "1999", "Yellow", "日本語です", "(B) 12"])
def test_the_first_token_after_the_prompt_is_a_target(
    tokenizer: PreTrainedTokenizerBase, reply: str
) -> None:
    """The token LLaVA-1.5's prompt "ASSISTANT:" asks for first -- often a lone '▁'."""
    template = get_template("vicuna_v1")
    conversation = conversation_with(reply, system=False, image=True)[2:]
    conversation[0]["value"] = "<image>\n" + conversation[0]["value"]
    sample = tokenize(conversation, template, tokenizer)
    prompt = tokenizer(template.generation_prompt(conversation[:1])).input_ids
    first = sample.input_ids[len(prompt)]
    assert sample.labels[len(prompt)] == first
    assert sample.labels[len(prompt) - 1] == IGNORE_INDEX
    if reply[0].isdigit():
        assert tokenizer.convert_ids_to_tokens(first) == "▁"  # split digits: '▁', '2'


@pytest.mark.parametrize("reply", HARD_REPLIES)
def test_plain_trains_everything_after_the_image(
    any_tokenizer: PreTrainedTokenizerBase, reply: str
) -> None:
    conversation = [
        {"from": "human", "value": "<image>\nDescribe it."},
        {"from": "gpt", "value": reply},
    ]
    sample = tokenize(conversation, get_template("plain"), any_tokenizer)
    assert isinstance(sample, TokenizedSample)
    assert sample.labels[:2] == [IGNORE_INDEX] * 2  # BOS, image
    assert sample.labels[2:] == sample.input_ids[2:]
    assert any_tokenizer.decode(sample.input_ids[2:]) == reply + "\n"


@pytest.mark.parametrize("name", CHAT_TEMPLATES)
def test_truncation_keeps_the_rule(any_tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    template = get_template(name)
    conversation = conversation_with("1999 and 日本語です", system=False, image=True)
    full = tokenize(conversation, template, any_tokenizer)
    assert isinstance(full, TokenizedSample)
    for max_length in range(len(full.input_ids) - 6, len(full.input_ids)):
        cut = tokenize(conversation, template, any_tokenizer, max_length=max_length)
        if isinstance(cut, DroppedSample):
            assert all(label == IGNORE_INDEX for label in full.labels[1:max_length])
            continue
        assert cut.input_ids == full.input_ids[:max_length]
        assert cut.labels == full.labels[:max_length]
