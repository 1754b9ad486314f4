"""Each family's hand-written template renders what its official chat template renders, on
tiny tokenizers that carry those templates; ``template: tokenizer`` derives the same
template from them; labels are exactly the replies and their end-of-turn tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mllm.data import IGNORE_INDEX, TokenizedSample, get_template, tokenize_conversation
from mllm.data.tokenizer_template import (
    DATE_STRING,
    TokenizerTemplateError,
    resolve_template,
    template_from_tokenizer,
)
from mllm.models.families import get_family
from mllm.tiny.family_tokenizers import SHAPES, make_family_tokenizer

FAMILIES = sorted(SHAPES)
IMAGE = "<image>"
# What the model must write after each prompt: the reply, then the end-of-turn token.
END_OF_TURN = {
    "mistral": "</s>",
    "llama3": "<|eot_id|>",
    "llama3.1": "<|eot_id|>",
    "llama3.2": "<|eot_id|>",
    "qwen2": "<|im_end|>",
    "qwen2.5": "<|im_end|>",
    "gemma2": "<end_of_turn>",
    "gemma3": "<end_of_turn>",
    "phi3": "<|end|>",
    "phi3.5": "<|end|>",
}
SYSTEM = {"role": "system", "content": "Answer in one word. "}
TURNS = [
    {"role": "user", "content": f"{IMAGE}\nWhat is in the picture? "},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": "  Which colour is it?"},
    {"role": "assistant", "content": " Black, 1999. "},
    {"role": "user", "content": "日本語で?"},
    {"role": "assistant", "content": "黒"},
]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory) -> tuple[str, PreTrainedTokenizerBase]:
    folder = make_family_tokenizer(tmp_path_factory.mktemp(request.param), request.param)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([IMAGE], special_tokens=True)  # as the model builder adds it
    return request.param, tokenizer


def llava(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"from": roles[m["role"]], "value": m["content"]} for m in messages]


def official(tokenizer, messages, *, generation: bool = False, tokenize: bool = False):
    return tokenizer.apply_chat_template(
        messages,
        tokenize=tokenize,
        add_generation_prompt=generation,
        date_string=DATE_STRING,  # Llama-3.2 would write today's date
        return_dict=False,
    )


def conversations(name: str) -> list[list[dict[str, str]]]:
    takes_system = bool(get_template(get_family(name).template).system_format)
    return [TURNS[:2], TURNS, *([[SYSTEM, *TURNS]] if takes_system else [])]


def tokenize(messages, template, tokenizer) -> TokenizedSample:
    sample = tokenize_conversation(
        llava(messages), template, tokenizer, image_token=IMAGE, num_image_tokens=3, max_length=512
    )
    assert isinstance(sample, TokenizedSample)
    return sample


def test_hand_written_template_renders_the_official_text(family) -> None:
    name, tokenizer = family
    template = get_template(get_family(name).template)
    bos = tokenizer.bos_token if tokenizer("a").input_ids[0] == tokenizer.bos_token_id else ""
    for messages in conversations(name):
        ours = "".join(segment.text for segment in template.render(llava(messages)))
        assert official(tokenizer, messages) == bos + ours
        # ...and the tokens: the tokenizer adds the one BOS the official template writes.
        assert tokenizer(ours).input_ids == official(tokenizer, messages, tokenize=True)
        prompt = template.generation_prompt(llava(messages[:-1]))
        assert official(tokenizer, messages[:-1], generation=True) == bos + prompt


def test_tokenizer_template_labels_like_the_hand_written_one(family) -> None:
    name, tokenizer = family
    derived = resolve_template("tokenizer", tokenizer)
    assert derived is template_from_tokenizer(tokenizer)  # derived once per tokenizer
    hand_written = get_template(get_family(name).template)
    assert derived.stop_strings == (END_OF_TURN[name],)
    for messages in conversations(name):
        ours, theirs = (
            tokenize(messages, hand_written, tokenizer),
            tokenize(messages, derived, tokenizer),
        )
        assert (ours.input_ids, ours.labels) == (theirs.input_ids, theirs.labels)
        prompt = llava(messages[:-1])
        assert derived.generation_prompt(prompt) == hand_written.generation_prompt(prompt)


def test_labels_are_the_replies_and_their_end_of_turn_tokens(family) -> None:
    name, tokenizer = family
    template = get_template(get_family(name).template)
    sample = tokenize(TURNS, template, tokenizer)
    runs, run = [], []
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    runs += [run] if run else []
    replies = [m["content"] for m in TURNS if m["role"] == "assistant"]
    if template.strip_content:
        replies = [reply.strip() for reply in replies]
    # (decoding drops the space a sentencepiece run starts with)
    decoded = [tokenizer.decode(run).lstrip() for run in runs]
    assert decoded == [reply.lstrip() + END_OF_TURN[name] for reply in replies]
    assert tokenizer.convert_tokens_to_ids(IMAGE) not in [
        t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE_INDEX
    ]


def test_a_chat_template_with_logic_templates_cannot_express_is_refused(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(make_family_tokenizer(tmp_path, "mistral"))
    tokenizer.chat_template = (  # the third user turn differs: only verification sees it
        "{% for m in messages %}{% if m['role'] == 'user' %}{% if loop.index0 >= 4 %}Again: "
        "{% endif %}<q>{{ m['content'] }}{% else %}<a>{{ m['content'] }}</s>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    )
    with pytest.raises(TokenizerTemplateError, match="has logic mllm's templates cannot express"):
        template_from_tokenizer(tokenizer)
    tokenizer.chat_template = (  # numbers each turn: no fixed header fits
        "{% for m in messages %}{{ loop.index }}. {{ m['content'] }}{{ eos_token }}{% endfor %}"
    )
    with pytest.raises(TokenizerTemplateError, match="template 'tokenizer': "):
        template_from_tokenizer(tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(TokenizerTemplateError, match="has no chat_template"):
        resolve_template("tokenizer", tokenizer)


@pytest.fixture(scope="module")
def llama3_tokenizer(tmp_path_factory) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        make_family_tokenizer(tmp_path_factory.mktemp("llava_llama_3"), "llama3")
    )
    tokenizer.add_tokens([IMAGE], special_tokens=True)
    return tokenizer


def test_llava_llama_3_renders_llama3_s_template_under_llava_next_s_system_prompt(
    llama3_tokenizer,
) -> None:
    """LLaVA-NeXT's conv_llava_llama_3 sends its system prompt first through the chat template."""
    template = get_template("llava_llama_3")
    system = {"role": "system", "content": template.default_system}
    bos = llama3_tokenizer.bos_token
    for messages in (TURNS[:2], TURNS):
        ours = "".join(segment.text for segment in template.render(llava(messages)))
        assert official(llama3_tokenizer, [system, *messages]) == bos + ours
        tokens = official(llama3_tokenizer, [system, *messages], tokenize=True)
        assert llama3_tokenizer(ours).input_ids == tokens
        prompt = template.generation_prompt(llava(messages[:-1]))
        assert official(llama3_tokenizer, [system, *messages[:-1]], generation=True) == bos + prompt
    # a conversation's own system prompt replaces LLaVA-NeXT's, as for llama3
    ours = "".join(segment.text for segment in template.render(llava([SYSTEM, *TURNS])))
    assert official(llama3_tokenizer, [SYSTEM, *TURNS]) == bos + ours


def llava_next_preprocess_llama3(tokenizer, source: list[dict[str, str]], system: str):
    """LLaVA-NeXT's train.py ``preprocess_llama3``, restated: the system block through the chat
    template (BOS first), then each turn through it alone with its BOS dropped; replies train
    with their headers, and every BOS, header and <|eot_id|> token trains wherever it stands."""
    roles = {"human": "user", "gpt": "assistant"}

    def chat(messages: list[dict[str, str]]) -> list[int]:
        return tokenizer.apply_chat_template(messages, return_dict=False)

    input_ids = chat([{"role": "system", "content": system}])
    targets = [IGNORE_INDEX] * len(input_ids)
    for turn in source:
        role = roles[turn["from"]]
        encoded = chat([{"role": role, "content": turn["value"]}])[1:]
        input_ids += encoded
        targets += encoded if role == "assistant" else [IGNORE_INDEX] * len(encoded)
    unmask = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "\n\n")
    unmasked = {tokenizer.convert_tokens_to_ids(token) for token in unmask}
    targets = [i if i in unmasked else t for i, t in zip(input_ids, targets, strict=True)]
    return input_ids, targets


def test_llava_llama_3_ids_are_llava_next_s_training_ids(llama3_tokenizer) -> None:
    """The same ids as ``preprocess_llama3`` (one BOS); mllm trains the replies and their
    <|eot_id|> only, a subset of LLaVA-NeXT's labels, which also train the headers and BOS."""
    template = get_template("llava_llama_3")
    markers = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    special = set(llama3_tokenizer.convert_tokens_to_ids(list(markers)))
    for messages in (TURNS[:2], TURNS):
        source = llava(messages)
        sample = tokenize_conversation(
            source,
            template,
            llama3_tokenizer,
            image_token=IMAGE,
            num_image_tokens=1,
            max_length=512,
        )
        ids, labels = llava_next_preprocess_llama3(
            llama3_tokenizer, source, template.default_system
        )
        assert sample.input_ids == ids
        assert ids.count(llama3_tokenizer.bos_token_id) == 1
        extra = []
        for token, ours, theirs in zip(ids, sample.labels, labels, strict=True):
            assert ours in (IGNORE_INDEX, theirs)
            if ours == IGNORE_INDEX and theirs != IGNORE_INDEX and token not in special:
                extra.append(token)
        assert llama3_tokenizer.decode(extra).replace("assistant\n\n", "") == ""
