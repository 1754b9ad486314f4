"""Conversation -> token ids and labels, tokenizing the rendered text exactly once.

LLaVA tokenizes each round separately and counts tokens to place the label mask, which
breaks whenever merges across round boundaries differ (its "tokenization mismatch" warning,
after which every label of the sample is -100 and it trains on nothing). Here the template marks target
characters, the joined text is tokenized once with offsets, and **a token is a target iff its
characters overlap a target span** (the template's rule: everything the model writes after
its generation prompt, end-of-turn included). So the ids are the ones inference sees, and
every token of a reply's tokenization is a target: one that also carries the preceding space
(``"▁Blue"`` after ``"ASSISTANT:"``), and a separator piece the tokenizer emits alone right
before the reply (the ``'▁'`` of ``"▁", "2"`` or of ``"▁", "<0x50>", "ur"``), as LLaVA's
own preprocessing trains it. Tokens the tokenizer adds itself (BOS) have empty spans and stay
-100.

Each image marker (a special token of the tokenizer) becomes ``num_image_tokens`` copies of
its id, all -100, which the model replaces with projected image features; anyres images
(``mllm.data.anyres``) take a count per image instead, which depends on the image's size.

Over-long samples: the tail is cut to ``max_length`` only if every image block stays whole
(a cut block, or a lost image, would no longer match the sample's pixel values) and at least
one label remains at a position the loss uses (position 0 is never predicted). Otherwise the
sample is returned as :class:`DroppedSample` with the reason, for the dataset to exclude and
report; a sample whose labels are all -100 is never returned.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mllm.data.conversation import ConversationError
from mllm.data.templates import Template

if TYPE_CHECKING:  # annotations only: keeps `import mllm.data` from loading transformers
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True, slots=True)
class TokenizedSample:
    """A trainable sample: ``labels[i]`` is ``input_ids[i]`` or -100; same length."""

    input_ids: list[int]
    labels: list[int]
    num_images: int
    full_length: int  # tokens before truncation, image placeholders included


DropKind = Literal["cuts_image", "no_targets_left", "no_targets"]


@dataclass(frozen=True, slots=True)
class DroppedSample:
    """A sample that cannot be trained on as is: why, and a short ``kind`` for summaries.

    ``kind`` is ``cuts_image`` (truncation would cut an image block), ``no_targets_left``
    (truncation would leave no label) or ``no_targets`` (no label even untruncated).
    """

    reason: str
    kind: DropKind
    full_length: int  # tokens, image placeholders included


def render_text(
    conversation: Sequence[Mapping[str, Any]], template: Template, *, image_token: str
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation to one string and the ``[start, end)`` spans of its targets.

    Raises:
        ConversationError: if the template cannot render the conversation, or an image
            marker is inside a gpt reply.
    """
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for segment in template.render(conversation, image_token=image_token):
        if segment.is_target:
            if image_token in segment.text:
                raise ConversationError(
                    f"{image_token!r} is inside a gpt reply; images go in human turns"
                )
            spans.append((position, position + len(segment.text)))
        pieces.append(segment.text)
        position += len(segment.text)
    return "".join(pieces), spans


def check_tokenizer(
    tokenizer: PreTrainedTokenizerBase, template: Template, *, image_token: str
) -> int:
    """Check the tokenizer can serve ``template`` and return the image token's id.

    Raises:
        TypeError: for a slow (Python) tokenizer, which has no offset mapping.
        ValueError: if the image marker or a template token is not one unsplittable token
            (the model builder adds them; tests use ``tokenizer.add_tokens(...,
            special_tokens=True)``).
    """
    return _checked_image_token_id(tokenizer, len(tokenizer), template, image_token)


@functools.lru_cache(maxsize=32)
def _checked_image_token_id(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, template: Template, image_token: str
) -> int:
    # vocab_size is part of the cache key so that adding tokens re-runs the check.
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow tokenizer; label masking needs the offset "
            "mapping of a fast (Rust) tokenizer: load it with AutoTokenizer.from_pretrained"
        )
    for text in (image_token, *template.special_tokens):
        # Inside other text too: a plain vocabulary entry could still merge with neighbours.
        ids = tokenizer.encode(f"a{text}b", add_special_tokens=False)
        token_id = tokenizer.convert_tokens_to_ids(text)
        if token_id is None or token_id == tokenizer.unk_token_id or ids.count(token_id) != 1:
            raise ValueError(
                f"{text!r} (needed by the {template.name!r} template or as the image marker) "
                "is not a single special token of the tokenizer; add it with "
                f"tokenizer.add_tokens([{text!r}], special_tokens=True) and resize the "
                "embeddings"
            )
    return tokenizer.convert_tokens_to_ids(image_token)


def tokenize_conversation(
    conversation: Sequence[Mapping[str, Any]],
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_token: str,
    num_image_tokens: int,
    max_length: int,
) -> TokenizedSample | DroppedSample:
    """Render, tokenize once, label the target tokens and expand image markers.

    Args:
        conversation: LLaVA turns; image markers already where the images go.
        template: how to render the turns and which parts are targets.
        tokenizer: a fast tokenizer with ``image_token`` and ``template.special_tokens`` as
            single tokens; it adds its own BOS (templates never write one).
        image_token: the image marker string.
        num_image_tokens: placeholders per image (the projector's ``num_output_tokens``).
        max_length: longest sample kept, counted after image expansion.

    Returns:
        The sample, or a :class:`DroppedSample` if it is too long to truncate safely.

    Raises:
        ConversationError: for a conversation the template cannot render, or an image
            marker inside a gpt reply.
        TypeError, ValueError: for an unsuitable tokenizer (see :func:`check_tokenizer`),
            a tokenizer that doubles BOS, or a non-positive ``num_image_tokens`` /
            ``max_length``.
    """
    if num_image_tokens < 1 or max_length < 1:
        raise ValueError(
            f"num_image_tokens ({num_image_tokens}) and max_length ({max_length}) must be >= 1"
        )
    image_id = check_tokenizer(tokenizer, template, image_token=image_token)
    rendered = render_text(conversation, template, image_token=image_token)
    return tokenize_rendered(
        [rendered],
        tokenizer,
        image_token_id=image_id,
        num_image_tokens=num_image_tokens,
        max_length=max_length,
    )[0]


def tokenize_rendered(
    rendered: Sequence[tuple[str, list[tuple[int, int]]]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int,
    lengths_only: bool = False,
    encodings: Mapping[str, Any] | None = None,
    image_token_counts: Sequence[Sequence[int]] | None = None,
) -> list[TokenizedSample | DroppedSample]:
    """Tokenize texts from :func:`render_text` in one tokenizer call (parallel in Rust).

    The per-sample path of :func:`tokenize_conversation` after rendering; the dataset calls
    it directly with many samples to tokenize a whole data file quickly. The tokenizer must
    already have passed :func:`check_tokenizer`. ``lengths_only`` (for ``mllm data check``)
    makes the same decisions but returns samples with empty ``input_ids``/``labels``: only
    ``full_length``, ``num_images`` and the drops are meaningful then. ``encodings`` is
    :func:`encode_rendered`'s result for the same texts, for callers that also need the
    offsets (the label audit) and should not tokenize twice. ``image_token_counts`` gives,
    per text, the placeholders of each of its images in order (anyres, where they differ by
    image size) in place of ``num_image_tokens`` for all.

    Raises:
        ValueError: if the tokenizer doubles BOS, for non-positive sizes, or for counts that
            differ in number from a text's image markers.
    """
    if image_token_counts is not None and len(image_token_counts) != len(rendered):
        raise ValueError(f"{len(image_token_counts)} image token counts for {len(rendered)} texts")
    if num_image_tokens < 1 or max_length < 1:
        raise ValueError(
            f"num_image_tokens ({num_image_tokens}) and max_length ({max_length}) must be >= 1"
        )
    if not rendered:
        return []
    if encodings is None:
        encodings = encode_rendered(rendered, tokenizer)
    bos = tokenizer.bos_token_id
    samples: list[TokenizedSample | DroppedSample] = []
    per_text = image_token_counts or [None] * len(rendered)
    for ids_list, offsets, (_, spans), counts in zip(
        encodings["input_ids"], encodings["offset_mapping"], rendered, per_text, strict=True
    ):
        ids = np.fromiter(ids_list, dtype=np.int64, count=len(ids_list))  # [N]
        if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            raise ValueError(
                f"a sample starts with BOS twice: its text starts with {tokenizer.bos_token!r} "
                "and the tokenizer adds its own; templates must not write BOS"
            )
        labels = _label_targets(ids, offsets, spans)
        sizes = num_image_tokens if counts is None else counts
        fitted = _expand_and_fit(ids, labels, image_token_id, sizes, max_length)
        if isinstance(fitted, DroppedSample):
            samples.append(fitted)
        elif lengths_only:
            samples.append(TokenizedSample([], [], fitted.num_images, fitted.full_length))
        else:
            samples.append(fitted.materialize())
    return samples


def encode_rendered(
    rendered: Sequence[tuple[str, list[tuple[int, int]]]], tokenizer: PreTrainedTokenizerBase
) -> Mapping[str, Any]:
    """Token ids and character offsets of rendered texts, as training tokenizes them."""
    return tokenizer(
        [text for text, _ in rendered],
        add_special_tokens=True,
        return_offsets_mapping=True,
        return_attention_mask=False,
    )


def _label_targets(
    ids: np.ndarray, offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]
) -> np.ndarray:
    """``ids[i]`` where token i's characters overlap a target span, else -100. [N] -> [N]."""
    if not spans or not len(ids):
        return np.full_like(ids, IGNORE_INDEX)
    # [N, 2] character [start, end); fromiter is several times faster than asarray on tuples.
    flat = itertools.chain.from_iterable(offsets)
    bounds = np.fromiter(flat, dtype=np.int64, count=2 * len(ids)).reshape(-1, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    span_bounds = np.asarray(spans, dtype=np.int64)  # [S, 2], sorted and disjoint
    # The only span a token can overlap first is the first one that ends after it starts.
    candidate = np.searchsorted(span_bounds[:, 1], starts, side="right")  # [N]
    in_range = candidate < len(span_bounds)
    candidate_start = span_bounds[np.minimum(candidate, len(span_bounds) - 1), 0]
    # Tokens the tokenizer adds (BOS/EOS) have empty spans and never overlap.
    overlaps = in_range & (candidate_start < ends) & (starts < ends)
    return np.where(overlaps, ids, IGNORE_INDEX)


@dataclass(frozen=True, slots=True)
class _Fitted:
    """A trainable sample as arrays; lists are made only when needed."""

    input_ids: np.ndarray  # [L]
    labels: np.ndarray  # [L]
    num_images: int
    full_length: int

    def materialize(self) -> TokenizedSample:
        return TokenizedSample(
            self.input_ids.tolist(), self.labels.tolist(), self.num_images, self.full_length
        )


def _expand_and_fit(
    ids: np.ndarray,
    labels: np.ndarray,
    image_id: int,
    num_image_tokens: int | Sequence[int],
    max_length: int,
) -> _Fitted | DroppedSample:
    """Expand each image id into a block of placeholders (``num_image_tokens`` each, or a
    count per image in order), then truncate or drop."""
    is_image = ids == image_id  # [N]
    copies = np.ones_like(ids)  # [N]
    if isinstance(num_image_tokens, int):
        copies[is_image] = num_image_tokens
    else:
        if len(num_image_tokens) != int(is_image.sum()) or min(num_image_tokens, default=1) < 1:
            raise ValueError(
                f"{int(is_image.sum())} image markers but image token counts {num_image_tokens}"
            )
        copies[is_image] = num_image_tokens
    input_ids = np.repeat(ids, copies)  # [L]
    out_labels = np.repeat(labels, copies)  # [L]; markers are never targets (render_text)
    block_starts = (np.cumsum(copies) - copies)[is_image]  # [num_images]
    block_sizes = copies[is_image]  # [num_images]
    num_images = len(block_starts)
    length = len(input_ids)
    if length > max_length:
        cut = np.flatnonzero(block_starts + block_sizes > max_length)
        if len(cut):
            start, size = int(block_starts[cut[0]]), int(block_sizes[cut[0]])
            return DroppedSample(
                f"{length} tokens > max_length {max_length}, and truncating would cut image "
                f"{cut[0] + 1} of {num_images} (its tokens are "
                f"{start}..{start + size - 1})",
                "cuts_image",
                length,
            )
        input_ids = input_ids[:max_length]
        out_labels = out_labels[:max_length]
    # Position 0 is never predicted, so a label there alone would leave an empty loss.
    if not np.any(out_labels[1:] != IGNORE_INDEX):
        if length > max_length:
            return DroppedSample(
                f"{length} tokens > max_length {max_length}, and no target token would remain "
                f"in the first {max_length}",
                "no_targets_left",
                length,
            )
        return DroppedSample(
            "no target tokens (nothing to learn from this sample)", "no_targets", length
        )
    return _Fitted(input_ids, out_labels, num_images, length)
