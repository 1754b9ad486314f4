"""The server's generation queue: requests wait in a bounded queue, and one worker thread
answers them in batches of requests that can share a ``generate`` call.

Requests share a call only when they sample alike: one ``generate`` call has one temperature,
top-p, token budget and set of stop strings. Greedy requests differ only in those that change
their answer, so any greedy requests with the same budget and stops share. A sampling request
with a ``seed`` runs alone, since the seed fixes the random stream of the whole call and its
answer must not depend on who else is asking. Each request gets its own events (start, text
deltas, end) on its own asyncio queue; a request that is cancelled (its client left, or its
time ran out) leaves the queue, or stops its row of the running batch (the others go on).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass

from mllm.inference.generate import (
    Completion,
    GenerationRequest,
    GenerationStream,
    SamplingSettings,
    stream,
)
from mllm.inference.loading import LoadedModel
from mllm.serve.settings import BatchSettings

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting requests; try again after ``retry_after_s``."""

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"{waiting} requests are waiting, this server's limit (--max-queue)")
        self.retry_after_s = retry_after_s


class ServerStopping(Exception):
    """The server stopped before the request's batch started."""


@dataclass(frozen=True)
class Started:
    """The request's batch began generating (its row is ``row`` of ``batch_size``)."""

    row: int
    batch_size: int


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    completion: Completion


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Started | Delta | Finished | Failed


def batch_key(settings: SamplingSettings) -> SamplingSettings | None:
    """The settings a request's batch runs with; requests with equal keys may share a call.

    ``None`` (a seeded sampling request) shares with no one.
    """
    if settings.temperature == 0:  # greedy: the seed and top-p change nothing
        return dataclasses.replace(settings, seed=None, top_p=1.0)
    return None if settings.seed is not None else settings


class Ticket:
    """One request's place in the queue and the events it receives; made by
    :meth:`Batcher.submit`, read with :meth:`next_event` in the event loop that submitted it."""

    def __init__(self, request: GenerationRequest, settings: SamplingSettings) -> None:
        self.request = request
        self.settings = settings
        self.key = batch_key(settings)
        self.cancelled = False
        self.arrived = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    def shares_with(self, other: Ticket) -> bool:
        return self is other or (self.key is not None and self.key == other.key)

    def put(self, event: Event) -> None:
        """Hand ``event`` to the request (called from the worker thread)."""
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def next_event(self, timeout_s: float) -> Event:
        """The next event; raises ``TimeoutError`` if none comes within ``timeout_s``."""
        return await asyncio.wait_for(self._events.get(), max(timeout_s, 0.0))


@dataclass(frozen=True)
class BatcherStats:
    """What the batcher is doing and has done (for tests, logs and load checks).

    Attributes:
        waiting: requests in the queue.
        generating: rows of the running ``generate`` call (0 when none runs).
        batch_sizes: how many calls answered each number of requests so far.
        completion_tokens: tokens generated so far, rows cancelled midway included.
    """

    waiting: int
    generating: int
    batch_sizes: dict[int, int]
    completion_tokens: int


@dataclass
class _Running:
    """The batch being generated: its stream and its tickets by row."""

    generation: GenerationStream
    tickets: list[Ticket]


class Batcher:
    """A bounded queue of requests and the worker thread that answers them in batches.

    Args:
        loaded: the model.
        settings: batch size, gathering window and queue bound.
    """

    def __init__(self, loaded: LoadedModel, settings: BatchSettings) -> None:
        self._loaded = loaded
        self._settings = settings
        self._waiting: list[Ticket] = []
        self._running: _Running | None = None
        self._closed = False
        self._batch_sizes: Counter[int] = Counter()
        self._completion_tokens = 0
        self._changed = threading.Condition()
        self._batch_seconds = 1.0  # running mean of a batch's duration, for Retry-After
        self._thread = threading.Thread(target=self._work, daemon=True, name="mllm-batcher")
        self._thread.start()

    # -- the request side (event loop) ------------------------------------------------------
    def submit(self, request: GenerationRequest, settings: SamplingSettings) -> Ticket:
        """Queue a request; read its events from the returned ticket.

        Raises:
            QueueFull: ``max_queue`` requests are already waiting.
            ServerStopping: :meth:`close` was called.
        """
        ticket = Ticket(request, settings)
        with self._changed:
            if self._closed:
                raise ServerStopping("the server is stopping")
            if len(self._waiting) >= self._settings.max_queue:
                raise QueueFull(len(self._waiting), self._retry_after_s())
            self._waiting.append(ticket)
            self._changed.notify_all()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Stop answering ``ticket``: it leaves the queue, or its row of the batch stops."""
        with self._changed:
            if ticket.cancelled:
                return
            ticket.cancelled = True
            if ticket in self._waiting:
                self._waiting.remove(ticket)
                self._changed.notify_all()
            elif self._running is not None and ticket in self._running.tickets:
                self._running.generation.cancel(self._running.tickets.index(ticket))

    def stats(self) -> BatcherStats:
        with self._changed:
            running = self._running.tickets if self._running is not None else []
            return BatcherStats(
                len(self._waiting),
                len(running),
                dict(self._batch_sizes),
                self._completion_tokens,
            )

    def close(self) -> None:
        """Stop: waiting requests fail, the running batch stops, the worker ends."""
        with self._changed:
            self._closed = True
            waiting, self._waiting = self._waiting, []
            if self._running is not None:
                for row in range(len(self._running.tickets)):
                    self._running.generation.cancel(row)
            self._changed.notify_all()
        for ticket in waiting:
            ticket.put(Failed(ServerStopping("the server stopped before answering")))
        self._thread.join()

    def _retry_after_s(self) -> int:
        rounds = len(self._waiting) / self._settings.max_batch + 1
        return max(1, math.ceil(rounds * self._batch_seconds))

    # -- the worker side ---------------------------------------------------------------------
    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            started = time.monotonic()
            self._answer(batch)
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.monotonic() - started)

    def _next_batch(self) -> list[Ticket] | None:
        """Wait for a request, gather those that can share its call until the batch is full or
        the oldest has waited ``window_s``, and take them out of the queue (``None``: closed)."""
        max_batch, window_s = self._settings.max_batch, self._settings.window_s
        with self._changed:
            while not self._closed:
                if not self._waiting:
                    self._changed.wait()
                    continue
                oldest = self._waiting[0]
                batch = [t for t in self._waiting if t.shares_with(oldest)][:max_batch]
                left = oldest.arrived + window_s - time.monotonic()
                if len(batch) < max_batch and oldest.key is not None and left > 0:
                    self._changed.wait(left)  # more may come, or the oldest may be cancelled
                    continue
                for ticket in batch:
                    self._waiting.remove(ticket)
                return batch
            return None

    def _answer(self, batch: list[Ticket]) -> None:
        """Generate one batch and hand each ticket its events."""
        settings = batch[0].key or batch[0].settings
        try:
            generation = stream(self._loaded, [t.request for t in batch], settings)
        except Exception as exc:  # a request that passed its checks alone; answer each
            logger.exception("a batch of %d failed to start", len(batch))
            for ticket in batch:
                ticket.put(Failed(exc))
            return
        with self._changed:
            self._running = _Running(generation, batch)
            self._batch_sizes[len(batch)] += 1
            for row, ticket in enumerate(batch):
                if ticket.cancelled:  # cancelled between leaving the queue and now
                    generation.cancel(row)
        logger.debug("generating a batch of %d", len(batch))
        for row, ticket in enumerate(batch):
            ticket.put(Started(row, len(batch)))
        try:
            for delta in generation:
                batch[delta.index].put(Delta(delta.text))
            for ticket, completion in zip(batch, generation.completions or [], strict=True):
                ticket.put(Finished(completion))
        except Exception as exc:
            logger.exception("a batch of %d failed while generating", len(batch))
            for ticket in batch:
                ticket.put(Failed(exc))
        finally:
            generation.close()
            with self._changed:
                self._running = None
                counts = generation.completions or []
                self._completion_tokens += sum(c.completion_tokens for c in counts)
