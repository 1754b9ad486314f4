"""Batched generation from conversations with images, in the model's own template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from mllm.data.images import prepare_image
from mllm.data.templates import get_template
from mllm.inference.loading import LoadedModel


@dataclass
class GenerationRequest:
    """A conversation ending with a human turn; ``images`` fill its ``<image>`` markers in order."""

    conversation: list[dict[str, str]]
    images: list[Image.Image] = field(default_factory=list)


def _encode_prompt(loaded: LoadedModel, request: GenerationRequest) -> list[int]:
    model, tokenizer = loaded.built.model, loaded.built.tokenizer
    image_token = loaded.recipe.model.image_token
    text = get_template(loaded.template).generation_prompt(
        request.conversation, image_token=image_token
    )
    markers = text.count(image_token)
    if markers != len(request.images):
        raise ValueError(
            f"the conversation has {markers} {image_token} markers but {len(request.images)} images"
        )
    ids: list[int] = []
    for token_id in tokenizer(text, add_special_tokens=True)["input_ids"]:
        ids.extend(
            [token_id] * model.num_image_tokens if token_id == model.image_token_id else [token_id]
        )
    return ids


def _stop_token_ids(loaded: LoadedModel) -> list[int]:
    tokenizer = loaded.built.tokenizer
    vocab = tokenizer.get_vocab()
    stops = {tokenizer.eos_token_id}
    stops.update(vocab[s] for s in get_template(loaded.template).stop_strings if s in vocab)
    return sorted(i for i in stops if i is not None)


@torch.no_grad()
def generate(
    loaded: LoadedModel,
    requests: Sequence[GenerationRequest],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[str]:
    """Answer each request; greedy when ``temperature`` is 0.

    Prompts are left-padded into one batch, so the KV cache of ``generate`` serves all of them.

    Returns:
        The decoded answers, cut at the template's stop strings.
    """
    model, tokenizer = loaded.built.model, loaded.built.tokenizer
    device = next(model.llm.parameters()).device
    encoded = [_encode_prompt(loaded, r) for r in requests]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=device)
    attention_mask = torch.tensor(
        [[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device
    )
    images = [img for r in requests for img in r.images]
    processor = loaded.built.image_processor
    pixel_values = (
        torch.stack(
            [prepare_image(img, processor, loaded.image_aspect_ratio) for img in images]
        ).to(device)
        if images
        else None
    )
    inputs_embeds = model.embed(input_ids, pixel_values)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    vocab = tokenizer.get_vocab()
    # Stop strings that are not one token ("###", "\n" in some vocabularies) end generation too.
    multi_token_stops = [s for s in get_template(loaded.template).stop_strings if s not in vocab]
    if multi_token_stops:
        sampling.update(stop_strings=multi_token_stops, tokenizer=tokenizer)
    output = model.llm.generate(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=_stop_token_ids(loaded),
        pad_token_id=pad,
        **sampling,
    )
    answers = []
    stop_strings = get_template(loaded.template).stop_strings
    for row in output:
        text = tokenizer.decode(row, skip_special_tokens=False)
        for stop in (*stop_strings, tokenizer.eos_token or ""):
            if stop and stop in text:
                text = text[: text.index(stop)]
        text = text.replace(tokenizer.pad_token or "\0", "")
        answers.append(text.strip())
    return answers
