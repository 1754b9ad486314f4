"""Batched generation from conversations with images, in the model's own template.

One code path serves every caller: prompts are left-padded into one batch for transformers'
``generate`` (KV cache on), and every generated token goes through a
:class:`~mllm.inference.decoding.StopStringDecoder` per row, right after it is chosen (as a
stopping criterion, so a row ends at the token that completes its stop string). :func:`generate`
returns the answers; :func:`stream` runs the same loop in a worker thread and yields text
deltas as they are decoded, so a streamed answer equals the plain one.

CPU-sized example (a trained checkpoint, one image)::

    loaded = mllm.load("runs/demo/shapes-mlp/instruct/final")
    request = GenerationRequest([{"from": "human", "value": "<image>\\nWhat color is it?"}],
                                [load_image("shape.png")])
    print(generate(loaded, [request])[0])
    for delta in stream(loaded, [request]):
        print(delta.text, end="", flush=True)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from mllm.data.anyres import ANYRES, AnyresSpec, anyres_spec, layout_tensors, prepare_anyres
from mllm.data.images import prepare_image
from mllm.data.tokenizer_template import resolve_template
from mllm.inference.decoding import FinishReason, StopStringDecoder
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


@dataclass(frozen=True)
class Completion:
    """One finished answer: its text, why it ended, and token counts (image tokens included)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TextDelta:
    """New text of the answer to request ``index`` of the batch."""

    index: int
    text: str


@dataclass
class _Prepared:
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


def _encode_prompt(loaded: LoadedModel, request: GenerationRequest) -> list[int]:
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
    spec = _anyres(loaded)
    counts = None
    if spec is not None:
        counts = [spec.token_count((image.height, image.width)) for image in request.images]
    return encode_rendered(loaded, text, counts)


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
        if image_counts is not None:
            raise ValueError("anyres images in LLaVA's prompt tokenization are not supported yet")
        # Original LLaVA checkpoints saw prompts tokenized piece by piece around each image.
        from mllm.interop.llava import llava_prompt_ids

        return llava_prompt_ids(
            tokenizer,
            text,
            image_token=image_token,
            image_token_id=model.image_token_id,
            num_image_tokens=model.num_image_tokens,
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
    _check_room(loaded, len(_encode_prompt(loaded, request)), settings)


def _prepare(
    loaded: LoadedModel, requests: Sequence[GenerationRequest], settings: SamplingSettings
) -> _Prepared:
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
    encoded = [_encode_prompt(loaded, r) for r in requests]
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
    processor = loaded.built.image_processor
    lengths = [len(ids) for ids in encoded]
    spec = _anyres(loaded)
    if spec is not None and images:
        prepared = [prepare_anyres(img, processor, spec.pinpoints) for img in images]
        tiles, layouts = zip(*prepared, strict=True)
        layout = {k: v.to(device) for k, v in layout_tensors(layouts).items()}
        pixel_values = torch.cat(tiles).to(device)  # [num_tiles, 3, H, W]
        return _Prepared(input_ids, attention_mask, pixel_values, lengths, **layout)
    pixel_values = (
        torch.stack(
            [prepare_image(img, processor, loaded.image_aspect_ratio) for img in images]
        ).to(device)
        if images
        else None
    )
    return _Prepared(input_ids, attention_mask, pixel_values, lengths)


def _stop_strings(loaded: LoadedModel, settings: SamplingSettings) -> tuple[str, ...]:
    tokenizer = loaded.built.tokenizer
    template = resolve_template(loaded.template, tokenizer)
    stops = (*template.stop_strings, *settings.stop, tokenizer.eos_token)
    return tuple(dict.fromkeys(s for s in stops if s))


def _stop_token_ids(loaded: LoadedModel, stop_strings: tuple[str, ...]) -> set[int]:
    tokenizer = loaded.built.tokenizer
    stops = {tokenizer.eos_token_id, *_single_token_ids(tokenizer, stop_strings)}
    return {i for i in stops if i is not None}


def _has_multi_token_stop(
    tokenizer: PreTrainedTokenizerBase, stop_strings: tuple[str, ...]
) -> bool:
    return len(_single_token_ids(tokenizer, stop_strings)) < len(stop_strings)


def _single_token_ids(tokenizer: PreTrainedTokenizerBase, texts: tuple[str, ...]) -> list[int]:
    """The ids of those ``texts`` that are one token of the vocabulary (looked up one by one:
    ``get_vocab()`` copies the whole vocabulary)."""
    ids = tokenizer.convert_tokens_to_ids(list(texts))
    return [
        i
        for text, i in zip(texts, ids, strict=True)
        if i is not None and tokenizer.convert_ids_to_tokens(i) == text
    ]


class _DecodeEachStep(StoppingCriteria):
    """``generate``'s stopping criterion: feeds each step's new tokens to the rows' decoders,
    hands their text to ``on_delta``, and ends the rows they finished (every row once the
    caller cancels). A row in ``cancelled_rows`` ends at the next step and says nothing more;
    ``generate`` stops once every row has ended. Criteria run right after a token is chosen,
    before the next forward pass.
    """

    def __init__(
        self,
        decoders: list[StopStringDecoder],
        on_delta: Callable[[TextDelta], None] | None,
        cancelled: threading.Event,
        device: torch.device,
        cancelled_rows: AbstractSet[int] = frozenset(),
    ) -> None:
        self._decoders = decoders
        self._on_delta = on_delta
        self._cancelled = cancelled
        self._cancelled_rows = cancelled_rows  # may grow from another thread
        self._done = torch.zeros(len(decoders), dtype=torch.bool, device=device)  # [batch]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self._cancelled.is_set():
            return torch.ones_like(self._done)
        for index, token_id in enumerate(input_ids[:, -1].tolist()):  # one new token per row
            decoder = self._decoders[index]
            if index in self._cancelled_rows:
                self._done[index] = True
            elif not decoder.done:
                self._emit(index, decoder.add(token_id))
                if decoder.done:
                    self._done[index] = True
        return self._done

    def replay(self, new_ids: torch.Tensor) -> None:
        """Feed a finished generation's new tokens [batch, new], as if step by step."""
        for index, row in enumerate(new_ids.tolist()):
            decoder = self._decoders[index]
            for token_id in row:
                if decoder.done:
                    break
                self._emit(index, decoder.add(token_id))

    def finish(self) -> None:
        """Generation ended: release every row's held-back text."""
        for index, decoder in enumerate(self._decoders):
            self._emit(index, decoder.finish())

    def _emit(self, index: int, text: str) -> None:
        if text and self._on_delta is not None and index not in self._cancelled_rows:
            self._on_delta(TextDelta(index, text))


@torch.no_grad()
def _run(
    loaded: LoadedModel,
    prepared: _Prepared,
    settings: SamplingSettings,
    on_delta: Callable[[TextDelta], None] | None,
    cancelled: threading.Event,
    cancelled_rows: AbstractSet[int] = frozenset(),
) -> list[Completion]:
    """The one generation loop behind :func:`generate` and :func:`stream`."""
    model, tokenizer = loaded.built.model, loaded.built.tokenizer
    stop_strings = _stop_strings(loaded, settings)
    stop_ids = _stop_token_ids(loaded, stop_strings)
    decoders = [
        StopStringDecoder(tokenizer, stop_ids, stop_strings) for _ in prepared.prompt_lengths
    ]
    inputs_embeds = model.embed(
        prepared.input_ids,
        prepared.pixel_values,
        image_sizes=prepared.image_sizes,
        image_grids=prepared.image_grids,
    )  # [batch, seq, hidden]
    sampling: dict = (
        {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
        if settings.temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    # Decoding each step is needed to stream, and to end a row at a stop string of several
    # tokens in the step that completes it (so generate needs no stop_strings of its own).
    # Otherwise generate's own stop ids end every row, and decoding the new ids afterwards
    # gives the same text and counts: it spares a decode call between forward passes
    # (~0.1 ms a token on a CPU), where it is slow because the tokenizer's code went cold.
    each_step = on_delta is not None or _has_multi_token_stop(tokenizer, stop_strings)
    decode = _DecodeEachStep(decoders, on_delta, cancelled, inputs_embeds.device, cancelled_rows)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    with model.modality_context(prepared.input_ids):  # the prompt's image positions
        new_ids = model.llm.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=prepared.attention_mask,
            max_new_tokens=settings.max_new_tokens,
            eos_token_id=sorted(stop_ids),
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            stopping_criteria=StoppingCriteriaList([decode] if each_step else []),
            **sampling,
        )  # [batch, new]: generate returns only the new tokens when given inputs_embeds
    if not each_step:
        decode.replay(new_ids)
    decode.finish()
    return [
        Completion(d.text, d.finish_reason or "length", length, d.num_tokens)
        for d, length in zip(decoders, prepared.prompt_lengths, strict=True)
    ]


def complete(
    loaded: LoadedModel, requests: Sequence[GenerationRequest], settings: SamplingSettings
) -> list[Completion]:
    """Answer each request (one batch); see :class:`Completion` for what comes back.

    Raises:
        ValueError: a conversation whose ``<image>`` markers and images differ in number.
        ConversationError: a conversation the template cannot render.
    """
    return _run(loaded, _prepare(loaded, requests, settings), settings, None, threading.Event())


def generate(
    loaded: LoadedModel,
    requests: Sequence[GenerationRequest],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[str]:
    """Answer each request; greedy when ``temperature`` is 0.

    Prompts are left-padded into one batch, so the KV cache of ``generate`` serves all of them.

    Returns:
        The decoded answers, cut at the template's stop strings and stripped.
    """
    settings = SamplingSettings(max_new_tokens, temperature, top_p, seed)
    return [c.text for c in complete(loaded, requests, settings)]


class GenerationStream:
    """Text deltas of a batch as they are generated; iterate it once.

    Generation runs in a worker thread from the moment the stream is created. After the
    iteration ends, :attr:`completions` holds the finished answers. :meth:`close` (or leaving
    a ``with`` block) stops generation early, e.g. when a client disconnects; :meth:`cancel`
    stops one request of the batch and lets the others go on.
    """

    _END = object()

    def __init__(
        self, loaded: LoadedModel, prepared: _Prepared, settings: SamplingSettings
    ) -> None:
        self.completions: list[Completion] | None = None
        self._queue: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._cancelled_rows: set[int] = set()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._work, args=(loaded, prepared, settings), daemon=True, name="mllm-generate"
        )
        self._thread.start()

    def _work(self, loaded: LoadedModel, prepared: _Prepared, settings: SamplingSettings) -> None:
        try:
            self.completions = _run(
                loaded, prepared, settings, self._queue.put, self._cancelled, self._cancelled_rows
            )
        except BaseException as exc:  # handed to the consuming thread
            self._error = exc
        finally:
            self._queue.put(self._END)

    def __iter__(self) -> Iterator[TextDelta]:
        while (item := self._queue.get()) is not self._END:
            yield item
        self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self, index: int) -> None:
        """Stop answering request ``index`` alone: it ends at the next token, yields no more
        deltas, and its completion counts the tokens made until then. Generation stops once
        every request is cancelled or finished; the others' answers are unchanged."""
        self._cancelled_rows.add(index)

    def close(self) -> None:
        """Stop generating (the current token finishes) and wait for the worker."""
        self._cancelled.set()
        self._thread.join()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def stream(
    loaded: LoadedModel, requests: Sequence[GenerationRequest], settings: SamplingSettings
) -> GenerationStream:
    """Start answering ``requests`` and return the stream of their text deltas.

    Prompts and images are prepared before this returns, so a bad request raises here
    (as in :func:`complete`) rather than in the middle of the stream.
    """
    return GenerationStream(loaded, _prepare(loaded, requests, settings), settings)
