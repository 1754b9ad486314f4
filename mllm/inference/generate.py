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
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from mllm.data.tokenizer_template import resolve_template
from mllm.inference.decoding import FinishReason, StopStringDecoder
from mllm.inference.loading import LoadedModel
from mllm.inference.prompts import (
    GenerationRequest,
    PreparedBatch,
    SamplingSettings,
    prepare_batch,
)

__all__ = [
    "Completion",
    "GenerationRequest",
    "GenerationStream",
    "SamplingSettings",
    "TextDelta",
    "complete",
    "generate",
    "stream",
]


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
    prepared: PreparedBatch,
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
    return _run(
        loaded, prepare_batch(loaded, requests, settings), settings, None, threading.Event()
    )


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
        self, loaded: LoadedModel, prepared: PreparedBatch, settings: SamplingSettings
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

    def _work(
        self, loaded: LoadedModel, prepared: PreparedBatch, settings: SamplingSettings
    ) -> None:
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
    return GenerationStream(loaded, prepare_batch(loaded, requests, settings), settings)
