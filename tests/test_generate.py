"""Generation: stop strings, streaming equals plain generation, batching, sampling, loading.

The decoder itself (token ids -> text) is tested in ``test_decoding.py``."""

from __future__ import annotations

import pytest
import torch
import yaml
from trained_shapes import answer_targets
from training_utils import run_train, write_recipe

import mllm
from mllm.checkpoint import CheckpointError
from mllm.data.images import load_image
from mllm.data.templates import get_template
from mllm.inference import (
    GenerationRequest,
    LoadedModel,
    SamplingSettings,
    complete,
    generate,
    stream,
)
from mllm.inference import loading as loading_module
from mllm.inference.prompts import prepare_batch


def _colour_request(question) -> GenerationRequest:
    turn = {"from": "human", "value": f"<image>\n{question.text}"}
    return GenerationRequest([turn], [load_image(question.image)])


def _colour_questions(trained_shapes) -> list:
    return [q for q in trained_shapes.held_out if "color" in q.text]


def _mixed_requests(trained_shapes) -> list[GenerationRequest]:
    """Prompts of different lengths (so the batch is padded), with and without images."""
    first, second = trained_shapes.held_out[:2]
    multi_turn = [
        {"from": "human", "value": f"<image>\n{first.text}"},
        {"from": "gpt", "value": first.answer},
        {"from": "human", "value": "What is the shape?"},
    ]
    return [
        _colour_request(first),
        GenerationRequest([{"from": "human", "value": "Describe the picture."}]),
        GenerationRequest(multi_turn, [load_image(first.image)]),
        _colour_request(second),
    ]


def test_the_trained_model_answers_and_stops_at_the_template_end(loaded, trained_shapes):
    requests = [_colour_request(q) for q in trained_shapes.held_out]
    completions = complete(loaded, requests, SamplingSettings(max_new_tokens=16))
    # Numbers ("3": '▁', '3') and byte-fallback words ("Yellow": '▁', '<0x59>', ...) whole.
    assert [c.text for c in completions] == [q.answer for q in trained_shapes.held_out]
    # Each answer ended at </s> (vicuna_v1's end), after exactly its training targets.
    assert {c.finish_reason for c in completions} == {"stop"}
    for question, completion in zip(trained_shapes.held_out, completions, strict=True):
        targets = answer_targets(loaded, question, question.answer)
        assert completion.completion_tokens == len(targets)
    short = complete(loaded, requests[:1], SamplingSettings(max_new_tokens=1))[0]
    assert short.finish_reason == "length"


def test_the_first_generated_token_is_the_first_training_target(loaded, trained_shapes):
    """The same labelling rule at inference: the prompt ends at "ASSISTANT:", and the token the
    model writes first is the reply's first target -- for numbers a lone '▁'."""
    tokenizer = loaded.built.tokenizer
    questions = trained_shapes.held_out
    prepared = prepare_batch(loaded, [_colour_request(q) for q in questions], SamplingSettings())
    with torch.no_grad():
        embeds = loaded.built.model.embed(prepared.input_ids, prepared.pixel_values)
        logits = loaded.built.model.llm(
            inputs_embeds=embeds, attention_mask=prepared.attention_mask
        ).logits  # [batch, length, vocab]; prompts are left-padded, so the last is next
    first = logits[:, -1].argmax(-1).tolist()
    expected = [answer_targets(loaded, q, q.answer)[0] for q in questions]
    assert first == expected
    numbers = [token for q, token in zip(questions, first, strict=True) if q.answer.isdigit()]
    assert numbers and set(tokenizer.convert_ids_to_tokens(numbers)) == {"▁"}


@pytest.mark.parametrize("model", ["loaded", "untrained"])
def test_streaming_equals_plain_greedy_generation(model, trained_shapes, request):
    loaded = request.getfixturevalue(model)
    requests = _mixed_requests(trained_shapes)
    settings = SamplingSettings(max_new_tokens=24)
    plain = complete(loaded, requests, settings)
    with stream(loaded, requests, settings) as deltas:
        pieces = list(deltas)
    streamed = ["".join(d.text for d in pieces if d.index == i) for i in range(len(requests))]
    assert streamed == [c.text for c in plain]
    assert deltas.completions == plain
    if model == "untrained":  # long answers, streamed piece by piece
        assert [c.finish_reason for c in plain] == ["length"] * len(requests)
        assert len(pieces) > 10 * len(requests)


@pytest.mark.parametrize("model", ["loaded", "untrained"])
def test_a_batch_answers_as_its_requests_one_by_one(model, trained_shapes, request):
    loaded = request.getfixturevalue(model)
    requests = _mixed_requests(trained_shapes)
    batched = generate(loaded, requests, max_new_tokens=24)
    alone = [generate(loaded, [r], max_new_tokens=24)[0] for r in requests]
    assert batched == alone


def test_sampling_with_a_seed_repeats_and_streams_the_same(loaded, trained_shapes):
    requests = _mixed_requests(trained_shapes)[1:2]  # open-ended: sampling has room to vary
    settings = SamplingSettings(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    first = complete(loaded, requests, settings)
    assert complete(loaded, requests, settings) == first
    with stream(loaded, requests, settings) as deltas:
        assert "".join(d.text for d in deltas) == first[0].text
    others = {
        complete(loaded, requests, SamplingSettings(12, 1.5, 0.95, s))[0].text for s in range(4)
    }
    assert len(others | {first[0].text}) > 1  # the seed does change the answer


def _llm_input_lengths(loaded: LoadedModel, call) -> list[int]:
    """Positions the LLM's forward receives on each call while ``call()`` runs."""
    lengths: list[int] = []

    def record(module, args, kwargs) -> None:
        embeds = kwargs.get("inputs_embeds")
        lengths.append((embeds if embeds is not None else kwargs["input_ids"]).shape[1])

    handle = loaded.built.model.llm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return lengths


def test_extra_stop_strings_cut_inside_a_token(loaded, trained_shapes):
    question = trained_shapes.held_out[0]
    settings = SamplingSettings(max_new_tokens=8, stop=(question.answer[1:],))
    request = _colour_request(question)
    completions = []
    lengths = _llm_input_lengths(
        loaded, lambda: completions.extend(complete(loaded, [request], settings))
    )
    (completion,) = completions
    assert completion.text == question.answer[0] and completion.finish_reason == "stop"
    # The stop string ends with the answer's last token ("</s>" excluded); no pass after it.
    answer_tokens = len(answer_targets(loaded, question, question.answer)) - 1
    assert len(lengths) == completion.completion_tokens == answer_tokens


def test_each_new_token_is_one_forward_position_on_the_kv_cache(untrained, trained_shapes):
    request = _mixed_requests(trained_shapes)[0]
    completions = []
    settings = SamplingSettings(max_new_tokens=8)
    lengths = _llm_input_lengths(
        untrained, lambda: completions.extend(complete(untrained, [request], settings))
    )
    assert completions[0].completion_tokens == 8
    assert lengths == [completions[0].prompt_tokens] + [1] * 7


def test_answers_are_their_generated_ids_decoded_at_once(untrained, trained_shapes):
    """Random weights answer in stray byte tokens: runs of them that turn into invalid UTF-8
    only as later bytes join, which decoding token by token must not get wrong."""
    model, tokenizer = untrained.built.model, untrained.built.tokenizer
    requests = _mixed_requests(trained_shapes)
    settings = SamplingSettings(max_new_tokens=40)
    prepared = prepare_batch(untrained, requests, settings)
    with torch.no_grad():
        generated = model.llm.generate(
            inputs_embeds=model.embed(prepared.input_ids, prepared.pixel_values),
            attention_mask=prepared.attention_mask,
            max_new_tokens=40,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )  # [batch, new tokens]
    expected = []
    for row in generated.tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(row, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        expected.append(text.replace(tokenizer.pad_token, "").strip())
    assert [c.text for c in complete(untrained, requests, settings)] == expected
    assert any("\ufffd" in answer for answer in expected)  # the case is exercised


def test_bad_requests_fail_before_generating(loaded, trained_shapes):
    question = trained_shapes.held_out[0]
    no_image = GenerationRequest([{"from": "human", "value": f"<image>\n{question.text}"}])
    with pytest.raises(ValueError, match="1 <image> markers but 0 images"):
        stream(loaded, [no_image], SamplingSettings())
    with pytest.raises(ValueError, match="over the model's context of 1024 tokens"):
        complete(loaded, [_colour_request(question)], SamplingSettings(max_new_tokens=2000))
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=0)


@pytest.mark.parametrize("quantize", ["4bit", "8bit"])
def test_quantized_loading_still_answers(trained_shapes, quantize):
    loaded = mllm.load(trained_shapes.checkpoint, quantize=quantize)
    linear = type(loaded.built.model.llm.model.layers[0].mlp.up_proj).__name__
    assert linear == {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}[quantize]
    assert_answers_colours(loaded, trained_shapes, quantize)


def assert_answers_colours(loaded, trained_shapes, quantize: str | None = None) -> None:
    """Colour questions only. Full precision and 8-bit answer every one; NF4 on this 32-wide
    model answers most of them (all of the first 4 on an AMD EPYC, 10/12 on an Intel Xeon
    whose fp32 training gave slightly different weights) but loses some counts (7 of 12 when
    measured), so it is held to two thirds: chance is one sixth."""
    questions = _colour_questions(trained_shapes)
    answers = generate(loaded, [_colour_request(q) for q in questions], max_new_tokens=8)
    right = sum(a == q.answer for a, q in zip(answers, questions, strict=True))
    needed = -(-2 * len(questions) // 3) if quantize == "4bit" else len(questions)
    assert right >= needed, (quantize, right, answers)


def test_a_merged_model_loads_and_answers_the_same(loaded, trained_shapes, tmp_path):
    from mllm.merge import merge_checkpoint

    merged = mllm.load(merge_checkpoint(trained_shapes.checkpoint, tmp_path / "merged"))
    requests = _mixed_requests(trained_shapes)
    assert generate(merged, requests, max_new_tokens=12) == generate(
        loaded, requests, max_new_tokens=12
    )


def test_folders_that_are_not_checkpoints_get_clear_errors(trained_shapes, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no such model folder"):
        mllm.load(tmp_path / "missing")
    run_folder = trained_shapes.checkpoint.parent.parent
    with pytest.raises(CheckpointError, match="checkpoints inside it: ") as error:
        mllm.load(run_folder)  # neither layout: the foreign loaders' error, and a pointer
    assert str(trained_shapes.checkpoint) in str(error.value)  # points at the real checkpoint
    calls = []

    def load_llava_folder(folder, **options):
        calls.append((folder, options))
        raise ValueError(f"{folder}: no config.json")

    monkeypatch.setattr(loading_module, "load_llava_folder", load_llava_folder)
    with pytest.raises(ValueError, match="no config.json$"):
        mllm.load(tmp_path, dtype=torch.bfloat16, quantize=None)
    foreign = {"vision_tower_path": "tower", "base_llm": None, "template": "plain"}
    with pytest.raises(ValueError, match="no config.json$"):
        mllm.load(tmp_path, vision_tower_path="tower", template="plain")
    assert calls == [
        (
            tmp_path,
            {"dtype": torch.bfloat16, "device": "cpu", "quantize": None, **dict.fromkeys(foreign)},
        ),
        (tmp_path, {"dtype": torch.float32, "device": "cpu", "quantize": None, **foreign}),
    ]
    with pytest.raises(CheckpointError, match="vision_tower_path only apply to LLaVA"):
        mllm.load(trained_shapes.checkpoint, vision_tower_path="tower")
    with pytest.raises(CheckpointError, match="no config.json; checkpoints inside it: "):
        mllm.load(run_folder)


def test_closing_a_stream_stops_generation(untrained, trained_shapes):
    request = _mixed_requests(trained_shapes)[1]
    deltas = stream(untrained, [request], SamplingSettings(max_new_tokens=900))
    for count, _ in enumerate(deltas):
        if count == 2:
            break
    deltas.close()
    (completion,) = deltas.completions
    assert completion.completion_tokens < 900


def test_cancelling_one_request_of_a_batch_leaves_the_others_as_they_were(
    untrained, trained_shapes
):
    """What a server does when one client of a batch leaves: that row stops emitting and
    counting, the others answer as they would have; all rows cancelled stop the call."""
    requests = _mixed_requests(trained_shapes)[:2]
    settings = SamplingSettings(max_new_tokens=300)
    (alone,) = complete(untrained, requests[1:], settings)
    deltas = stream(untrained, requests, settings)
    texts = ["", ""]
    for delta in deltas:
        if delta.index == 0:
            deltas.cancel(0)
        texts[delta.index] += delta.text
    cancelled, kept = deltas.completions
    assert cancelled.completion_tokens < 300 and kept == alone and texts[1] == alone.text
    deltas = stream(untrained, requests, settings)
    for _ in deltas:
        deltas.cancel(0)
        deltas.cancel(1)
    assert all(c.completion_tokens < 300 for c in deltas.completions)


def test_a_lora_run_loads_unmerged_and_quantized(loaded, trained_shapes, tmp_path):
    """A LoRA stage on top of the trained model: its adapters load as trained, and merged
    before the LLM is quantised."""
    recipe = yaml.safe_load(trained_shapes.recipe.read_text())
    stage = recipe["stages"]["instruct"]
    stage.update(
        init_from=str(trained_shapes.checkpoint),
        train={"vision": "frozen", "projector": "frozen", "llm": "lora"},
        optim={"lr": 1e-4, "warmup_ratio": 0.0},
        max_steps=2,
    )
    recipe.update(output_dir=str(tmp_path / "run"), stages={"polish": stage})
    run_train([str(write_recipe(tmp_path / "recipe.yaml", recipe))])
    checkpoint = tmp_path / "run" / "polish" / "final"
    adapted = mllm.load(checkpoint)
    assert adapted.manifest["adapters"]["llm"]["mode"] == "lora"
    assert_answers_colours(adapted, trained_shapes)
    quantized = mllm.load(checkpoint, quantize="4bit")
    assert not any("lora" in name for name, _ in quantized.built.model.named_parameters())
    assert_answers_colours(quantized, trained_shapes, "4bit")


def test_original_llava_models_get_llava_s_prompt_tokenization(untrained, trained_shapes):
    from dataclasses import replace

    from mllm.inference.prompts import encode_prompt
    from mllm.interop.llava import llava_prompt_ids

    request = _mixed_requests(trained_shapes)[2]  # multi-turn, one image
    llava = replace(untrained, manifest={"prompt_tokenization": "llava"})
    model, tokenizer = untrained.built.model, untrained.built.tokenizer
    text = get_template("vicuna_v1").generation_prompt(request.conversation)
    expected = llava_prompt_ids(
        tokenizer,
        text,
        image_token="<image>",
        image_token_id=model.image_token_id,
        num_image_tokens=model.num_image_tokens,
    )
    assert encode_prompt(llava, request) == expected
    assert encode_prompt(untrained, request) != expected  # "▁" after the image in LLaVA's
