"""StopStringDecoder: answers equal ``tokenizer.decode`` of their ids cut at the first stop
string, and streamed pieces add up to that answer, for byte-fallback and byte-level tokenizers.
"""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mllm.inference.decoding import StopStringDecoder


def _feed(decoder: StopStringDecoder, ids: list[int]) -> list[str]:
    deltas = [decoder.add(i) for i in ids]
    deltas.append(decoder.finish())
    return deltas


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _decode(tokenizer, ids: list[int]) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text.replace(tokenizer.pad_token, "") if tokenizer.pad_token else text


def _reference(tokenizer, ids: list[int], stop_ids: set[int], stops: tuple[str, ...]):
    """``(answer, finish_reason, num_tokens)`` of generation that ends at the first token
    which is a stop id or whose decoded prefix holds a stop string: the ids up to there,
    decoded in one go, cut at the first stop string and stripped."""
    for count, token_id in enumerate(ids, start=1):
        if token_id in stop_ids:
            return _decode(tokenizer, ids[: count - 1]).strip(), "stop", count
        text = _decode(tokenizer, ids[:count])
        cuts = [i for i in (text.find(stop) for stop in stops) if i >= 0]
        if cuts:
            return text[: min(cuts)].strip(), "stop", count
    return _decode(tokenizer, ids).strip(), "length", len(ids)


def test_decoder_cuts_at_a_multi_token_stop_string_and_never_streams_part_of_it(tokenizer):
    decoder = StopStringDecoder(tokenizer, {tokenizer.eos_token_id}, ("###",))
    ids = _ids(tokenizer, "red###blue")
    through_stop = _ids(tokenizer, "red###")
    assert ids[: len(through_stop)] == through_stop and len(_ids(tokenizer, "###")) > 1
    deltas = _feed(decoder, ids)
    assert decoder.text == "red" and decoder.finish_reason == "stop"
    assert "".join(deltas) == "red"
    assert all("#" not in d for d in deltas)
    assert decoder.num_tokens == len(through_stop)  # "red" and the stop string's tokens


def test_decoder_holds_back_byte_runs_and_outer_whitespace(tokenizer):
    decoder = StopStringDecoder(tokenizer, {tokenizer.eos_token_id}, ())
    ids = _ids(tokenizer, "  red ŵ")  # "ŵ" is two byte-fallback tokens
    assert tokenizer.convert_ids_to_tokens(ids[-2:]) == ["<0xC5>", "<0xB5>"]
    deltas = [decoder.add(i) for i in ids]
    # "ŵ" could still turn into "\ufffd\ufffd\ufffd" if a third, invalid byte joined its run.
    assert "".join(deltas) == "red"
    assert decoder.add(tokenizer.eos_token_id) == " ŵ"
    assert decoder.text == "red ŵ" and decoder.finish_reason == "stop"
    assert decoder.add(5) == ""  # a finished row of a batch ignores its padding


def test_decoder_reports_length_when_no_stop_came(tokenizer):
    decoder = StopStringDecoder(tokenizer, {tokenizer.eos_token_id}, ("</s>",))
    deltas = _feed(decoder, _ids(tokenizer, "blue circle "))
    assert decoder.finish_reason == "length" and decoder.text == "blue circle"
    assert "".join(deltas) == decoder.text


def test_a_byte_run_that_turns_invalid_later_is_never_streamed_early(tokenizer):
    """<0x0B> <0x07> decode as "\\x0b\\x07" until <0xF7> joins their run, which makes all
    three bytes "\\ufffd": the decoder once streamed "\\x0b\\x07" and then dropped the rest."""
    pieces = ["in", "<0x01>", "▁the", "er", "<0x0B>", "<0x07>", "<0xF7>", "at"]
    ids = tokenizer.convert_tokens_to_ids(pieces)
    assert tokenizer.unk_token_id not in ids
    whole = "in\x01 theer\ufffd\ufffd\ufffdat"
    assert tokenizer.decode(ids) == whole
    assert tokenizer.decode(ids[:6]) == "in\x01 theer\x0b\x07"
    decoder = StopStringDecoder(tokenizer, {tokenizer.eos_token_id}, ("</s>",))
    deltas = _feed(decoder, ids)
    assert decoder.text == "".join(deltas) == whole
    assert deltas[:4] == ["in", "", "\x01 the", "er"]  # settled text still streams at once
    assert deltas[4:7] == ["", "", ""]  # the byte run waits until a non-byte token ends it


@pytest.fixture(scope="module")
def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE (GPT-2, Llama 3, Qwen style): half a character decodes to a
    trailing "\\ufffd" until the rest of its bytes arrive."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = ["a red circle ### at the top", "café naïve über", "你好，世界 😀🎉", "x\ny\n\nz"]
    tokenizer.train_from_iterator(lines * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


@pytest.fixture(params=["byte-fallback", "byte-fallback, <unk> padding", "byte-level"])
def any_tokenizer(request, tokenizer, tiny_tokenizer_dir, byte_level_tokenizer):
    if request.param == "byte-fallback":
        return tokenizer
    if request.param == "byte-level":
        return byte_level_tokenizer
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir, pad_token="<unk>")  # as llama pads


def _random_answers(tokenizer, count: int, seed: int) -> list[list[int]]:
    """Token sequences rich in what breaks incremental decoding: byte tokens of multi-byte and
    invalid UTF-8, whitespace, stop-string material, special tokens and the end token."""
    rng = random.Random(seed)
    vocab_size = len(tokenizer)
    tricky = "é你😀#\n ar"
    nasty = [f"<0x{b:02X}>" for b in (0x0B, 0x07, 0x80, 0xA9, 0xBD, 0xC3, 0xE4, 0xF0, 0xF7, 0xFF)]
    pieces = [i for i in tokenizer.convert_tokens_to_ids(nasty) if i != tokenizer.unk_token_id]
    for character in tricky:
        pieces.extend(_ids(tokenizer, character))
        pieces.extend(_ids(tokenizer, f"x{character}"))
    answers = []
    for _ in range(count):
        length = rng.randint(1, 40)
        answer = []
        for _ in range(length):
            roll = rng.random()
            if roll < 0.5:
                answer.append(rng.choice(pieces))
            elif roll < 0.97:
                answer.append(rng.randrange(vocab_size))
            else:
                answer.append(tokenizer.eos_token_id)
        answers.append(answer)
    return answers


@pytest.mark.parametrize("stops", [(), ("###",), ("###", "ar", "\n\n", "é", "</s>")])
def test_streamed_pieces_add_up_to_the_decoded_answer_cut_at_its_stop(any_tokenizer, stops):
    stop_ids = {any_tokenizer.eos_token_id}
    for ids in _random_answers(any_tokenizer, 300, seed=len(stops)):
        decoder = StopStringDecoder(any_tokenizer, stop_ids, stops)
        deltas = _feed(decoder, ids)
        answer, reason, count = _reference(any_tokenizer, ids, stop_ids, stops)
        assert "".join(deltas) == decoder.text == answer, ids
        assert (decoder.finish_reason, decoder.num_tokens) == (reason, count), ids
