"""Requests as the model reads them: a conversation and its images turned into prompt ids in
the model's template (image markers expanded to each image's tokens) and prepared pixels, in
one left-padded batch. :mod:`mllm.inference.generate` answers such batches; a server checks
each request here before it joins one (:func:`check_request`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from mllm.data.anyres import ANYRES, AnyresSpec, anyres_spec, layout_tensors, prepare_anyres
from mllm.data.images import prepare_image
from mllm.data.tokenizer_template import resolve_template
from mllm.inference.loading import LoadedModel


@dataclass
class GenerationRequest:
    """A conversation ending with a human turn; ``images`` fill its ``<image>`` markers in order."""

    conversation: list[dict[str, str]]
    images: list[Image.Image] = field(default_factory=list)


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are chosen and when generation ends.

    Attributes:
        max_new_tokens: budget per answer (the stop token counts).
        temperature: 0 is greedy; above 0 samples from the softened distribution.
        top_p: nucleus sampling mass (only when sampling).
        seed: seeds torch's generator right before generating, so sampling repeats exactly.
        stop: extra stop strings on top of the template's.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class PreparedBatch:
    """A batch ready for ``generate``: left-padded ids, their mask and the images' pixels."""

    input_ids: torch.Tensor  # [batch, width]
    attention_mask: torch.Tensor  # [batch, width]
    pixel_values: torch.Tensor | None  # [num_images, 3, H, W]; anyres: [num_tiles, 3, H, W]
    prompt_lengths: list[int]
    image_sizes: torch.Tensor | None = None  # anyres: [num_images, 2]
    image_grids: torch.Tensor | None = None  # anyres: [num_images, 2]


def _anyres(loaded: LoadedModel) -> AnyresSpec | None:
    """The anyres tiling the model was trained with, or None for the single-tile modes."""
    if loaded.image_aspect_ratio != ANYRES:
        return None
    if not loaded.image_grid_pinpoints:
        raise ValueError("the model reads images as anyres but has no image_grid_pinpoints")
    built = loaded.built
    return anyres_spec(loaded.image_grid_pinpoints, built.image_processor, built.model)


def encode_prompt(loaded: LoadedModel, request: GenerationRequest) -> list[int]:
    """The prompt's ids in the model's template, each image marker expanded to its tokens."""
    image_token = loaded.built.image_token
    text = resolve_template(loaded.template, loaded.built.tokenizer).generation_prompt(
        request.conversation, image_token=image_token
    )
    markers = text.count(image_token)
    if markers != len(request.images):
        raise ValueError(
            f"the conversation has {markers} {image_token} markers but {len(request.images)} images"
        )
    return encode_rendered(loaded, text, image_token_counts(loaded, request.images))


def image_token_counts(loaded: LoadedModel, images: Sequence[Image.Image]) -> list[int] | None:
    """Image tokens of each image under an anyres model (they follow each image's size), or
    None where every image takes the model's fixed count."""
    spec = _anyres(loaded)
    if spec is None:
        return None
    return [spec.token_count((image.height, image.width)) for image in images]


def prepare_images(
    loaded: LoadedModel, images: Sequence[Image.Image], device: torch.device | str
) -> dict[str, torch.Tensor | None]:
    """The model's image inputs for ``images`` in prompt order: ``pixel_values``
    ([num_images, 3, H, W], None without images), and under anyres the tiles
    ([num_tiles, 3, H, W]) with ``image_sizes`` and ``image_grids`` [num_images, 2]."""
    if not images:
        return {"pixel_values": None}
    processor = loaded.built.image_processor
    dtype = next(loaded.built.model.vision.parameters()).dtype
    spec = _anyres(loaded)
    if spec is not None:
        tiles, layouts = zip(
            *(prepare_anyres(image, processor, spec.pinpoints) for image in images), strict=True
        )
        layout = {key: value.to(device) for key, value in layout_tensors(layouts).items()}
        return {"pixel_values": torch.cat(tiles).to(device=device, dtype=dtype), **layout}
    pixels = [prepare_image(image, processor, loaded.image_aspect_ratio) for image in images]
    return {"pixel_values": torch.stack(pixels).to(device=device, dtype=dtype)}


def encode_rendered(
    loaded: LoadedModel, text: str, image_counts: Sequence[int] | None = None
) -> list[int]:
    """Ids of text already in the model's template (a generation prompt, possibly followed by
    the start of a reply), each image marker expanded to the model's image tokens (or to
    ``image_counts[i]`` for the i-th marker, as anyres images need), tokenized as the model
    saw its prompts in training (BOS included)."""
    model, tokenizer = loaded.built.model, loaded.built.tokenizer
    image_token = loaded.built.image_token
    if loaded.manifest.get("prompt_tokenization") == "llava":
        # Original LLaVA checkpoints saw prompts tokenized piece by piece around each image.
        from mllm.interop.llava_prompts import llava_prompt_ids

        return llava_prompt_ids(
            tokenizer,
            text,
            image_token=image_token,
            image_token_id=model.image_token_id,
            num_image_tokens=model.num_image_tokens if image_counts is None else image_counts,
            template=loaded.template,
        )
    ids: list[int] = []
    counts = iter(image_counts) if image_counts is not None else None
    for token_id in tokenizer(text, add_special_tokens=True)["input_ids"]:
        if token_id != model.image_token_id:
            ids.append(token_id)
            continue
        count = model.num_image_tokens if counts is None else next(counts, None)
        if count is None:
            raise ValueError(f"more image markers than the {len(image_counts)} image counts")
        ids.extend([token_id] * count)
    return ids


def _context_length(loaded: LoadedModel) -> int | None:
    config = loaded.built.model.llm.config.get_text_config()
    return getattr(config, "max_position_embeddings", None)


def _check_room(loaded: LoadedModel, prompt_length: int, settings: SamplingSettings) -> None:
    context = _context_length(loaded)
    if context is not None and prompt_length + settings.max_new_tokens > context:
        raise ValueError(
            f"the prompt is {prompt_length} tokens (images included) and up to "
            f"{settings.max_new_tokens} new tokens are asked for, over the model's context of "
            f"{context} tokens; shorten the conversation or ask for fewer new tokens"
        )


def check_request(
    loaded: LoadedModel, request: GenerationRequest, settings: SamplingSettings
) -> None:
    """Raise what :func:`stream` or :func:`complete` would raise for ``request`` on its own,
    without preparing its images: a server checks each request before it joins a batch, so
    one bad request is answered alone instead of failing the batch it would share.

    Raises:
        ValueError: markers and images that differ in number, or no room in the context.
        ConversationError: a conversation the template cannot render.
    """
    _check_room(loaded, len(encode_prompt(loaded, request)), settings)


def prepare_batch(
    loaded: LoadedModel, requests: Sequence[GenerationRequest], settings: SamplingSettings
) -> PreparedBatch:
    """Encode and pad every prompt and prepare every image (errors surface here, early).

    Raises:
        ValueError: no requests, markers and images that differ in number, or a prompt that
            leaves no room for ``max_new_tokens`` in the model's context.
        ConversationError: a conversation the template cannot render.
    """
    if not requests:
        raise ValueError("no requests to answer")
    model, tokenizer = loaded.built.model, loaded.built.tokenizer
    device = next(model.llm.parameters()).device
    encoded = [encode_prompt(loaded, r) for r in requests]
    longest = max(len(ids) for ids in encoded)
    _check_room(loaded, longest, settings)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor(
        [[pad] * (longest - len(ids)) + ids for ids in encoded], device=device
    )  # [batch, longest], left-padded
    attention_mask = torch.tensor(
        [[0] * (longest - len(ids)) + [1] * len(ids) for ids in encoded], device=device
    )
    images = [img for r in requests for img in r.images]
    lengths = [len(ids) for ids in encoded]
    return PreparedBatch(
        input_ids, attention_mask, prompt_lengths=lengths, **prepare_images(loaded, images, device)
    )
