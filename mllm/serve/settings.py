"""What ``mllm serve`` is told at start: how it presents the model, what it accepts, and how
it batches and sheds load. Checked here, so a bad flag fails before the model loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from mllm.serve.openai_api import ServerLimits


@dataclass(frozen=True)
class BatchSettings:
    """How waiting requests are gathered into one ``generate`` call.

    Attributes:
        max_batch: the most requests one batched call answers; 1 answers them one at a time.
        window_s: how long the oldest waiting request may wait for others to join its batch.
            A request that waited behind a running batch starts as soon as that one ends.
        max_queue: the most requests that may wait (not yet generating); more get a 503.
    """

    max_batch: int = 8
    window_s: float = 0.01
    max_queue: int = 64

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.window_s < 0:
            raise ValueError(f"the batch window must be >= 0 seconds, got {self.window_s}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {self.max_queue}")


@dataclass(frozen=True)
class ServeSettings:
    """How the server presents the model and what it accepts.

    Attributes:
        model_name: the id clients pass as ``model`` (and ``/v1/models`` lists).
        limits: per-request limits (tokens, image pixels, local image folder).
        max_request_bytes: request bodies above this are refused with 413 unread.
        api_key: when set, requests need ``Authorization: Bearer <api_key>``.
        batching: how requests share ``generate`` calls and how many may wait.
        request_timeout_s: the most seconds a request may take, waiting included; after it,
            the request gets a 504 (or, once streaming, an error event) and its row stops.
    """

    model_name: str
    limits: ServerLimits = ServerLimits()
    max_request_bytes: int = 20 * 1024 * 1024
    api_key: str | None = None
    batching: BatchSettings = field(default_factory=BatchSettings)
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.request_timeout_s <= 0:
            raise ValueError(f"the request timeout must be > 0 s, got {self.request_timeout_s}")
