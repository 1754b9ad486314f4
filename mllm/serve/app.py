"""The FastAPI application behind ``mllm serve``: routes, keys, body limits and errors in
OpenAI's shape, with generation handed to a :class:`~mllm.serve.batcher.Batcher`.

Everything that costs CPU before generation (JSON, image decoding, the prompt check) runs in
the thread pool, so the event loop only moves bytes. A request waits for its batch to start
before its response begins, so a queue timeout or a failed start still gets a status code.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mllm.data.conversation import ConversationError
from mllm.inference.loading import LoadedModel
from mllm.inference.prompts import check_request
from mllm.serve import openai_api as api
from mllm.serve.batcher import (
    Batcher,
    Delta,
    Event,
    Failed,
    Finished,
    QueueFull,
    ServerStopping,
    Ticket,
)
from mllm.serve.settings import ServeSettings

logger = logging.getLogger(__name__)
#: How often a request waiting for its answer checks that its client is still there.
_POLL_S = 0.25


class _ClientGone(Exception):
    """The client closed its connection while its request waited."""


def _error_response(error: api.APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _timeout_error(settings: ServeSettings) -> api.APIError:
    return api.APIError(
        504,
        f"the request took over {settings.request_timeout_s:g} s, this server's limit "
        "(--request-timeout)",
        error_type="server_error",
        code="timeout",
    )


def _failure(error: BaseException) -> api.APIError:
    if isinstance(error, ConversationError | ValueError):
        return api.APIError(400, str(error), param="messages")
    if isinstance(error, ServerStopping):
        return api.APIError(503, str(error), error_type="server_error")
    return api.APIError(500, "generation failed", error_type="server_error")


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes ``limit`` bytes (before reading it,
    when its Content-Length says so)."""
    too_large = api.APIError(
        413,
        f"the request is over this server's limit of {limit} bytes (--max-request-bytes)",
        code="request_too_large",
    )
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise api.APIError(400, f"bad Content-Length {length!r}")
        if int(length) > limit:
            too_large.message = (
                f"the request is {length} bytes, over this server's limit of {limit} "
                "(--max-request-bytes)"
            )
            raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes, loaded: LoadedModel, settings: ServeSettings) -> api.ChatCompletionRequest:
    """Validate a request as it would be alone (thread pool: JSON, images and the prompt)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise api.APIError(400, f"the request body is not valid JSON: {exc}") from None
    request = api.parse_chat_request(
        body,
        model_name=settings.model_name,
        image_token=loaded.built.image_token,
        limits=settings.limits,
    )
    try:
        check_request(loaded, request.generation, request.settings)
    except (ConversationError, ValueError) as exc:
        raise api.APIError(400, str(exc), param="messages") from exc
    return request


async def _next(
    ticket: Ticket, deadline: float, settings: ServeSettings, request: Request | None
) -> Event:
    """The ticket's next event before ``deadline`` (loop time).

    Raises:
        APIError: 504 once the deadline passes.
        _ClientGone: the client left (checked every :data:`_POLL_S` when ``request`` is given;
            a streaming response learns it from Starlette, which cancels the stream).
    """
    loop = asyncio.get_running_loop()
    while (left := deadline - loop.time()) > 0:
        try:
            return await ticket.next_event(min(left, _POLL_S) if request else left)
        except TimeoutError:
            if request is not None and await request.is_disconnected():
                raise _ClientGone from None
    raise _timeout_error(settings)


def create_app(loaded: LoadedModel, settings: ServeSettings, batcher: Batcher) -> FastAPI:
    """The OpenAI-compatible app for one model; ``batcher`` generates for it."""
    app = FastAPI(title="mllm serve", docs_url=None, redoc_url=None, openapi_url=None)
    name, created = settings.model_name, api.now()

    @app.exception_handler(api.APIError)
    async def api_error(request: Request, error: api.APIError) -> JSONResponse:
        # An unread body or a wrong key ends the connection, as a refusal should.
        close = error.status in (401, 413)
        return _error_response(error, {"Connection": "close"} if close else None)

    @app.exception_handler(ServerStopping)
    async def stopping(request: Request, error: ServerStopping) -> JSONResponse:
        return _error_response(_failure(error))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        message = f"the server is busy: {error}; retry after {error.retry_after_s} s"
        busy = api.APIError(503, message, error_type="server_error", code="server_busy")
        return _error_response(busy, {"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client gets OpenAI's shape, not a text page.
        return _error_response(api.APIError(500, "internal error", error_type="server_error"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "another method")
            message = f"use {allowed} for {request.url.path}"
        elif error.status_code == 404:
            message = f"no such endpoint: {where}"
        else:
            message = f"{where}: {error.detail}"
        return _error_response(api.APIError(error.status_code, message), error.headers)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
            raise api.APIError(401, "missing or wrong API key", code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return api.models_response(name, created)

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict:
        authorize(request)
        if model_id != name:
            message = f"model {model_id!r} is not served here; this server serves {name!r}"
            raise api.APIError(404, message, code="model_not_found")
        return api.model_object(name, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorize(request)
        raw = await _read_body(request, settings.max_request_bytes)
        parsed = await run_in_threadpool(_parse, raw, loaded, settings)
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
        ticket = batcher.submit(parsed.generation, parsed.settings)
        streaming = False
        try:
            started = await _next(ticket, deadline, settings, request)
            if isinstance(started, Failed):
                raise _failure(started.error)
            if parsed.stream:
                streaming = True  # the stream cancels the ticket when it ends, however it ends
                return StreamingResponse(
                    _stream_events(ticket, parsed, deadline),
                    headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                    background=BackgroundTask(batcher.cancel, ticket),
                )
            return await _complete(ticket, deadline, request)
        except _ClientGone:
            logger.info("the client left before its answer; its request stopped")
            return Response(status_code=499)  # nobody reads it
        finally:
            if not streaming:
                batcher.cancel(ticket)  # frees its place or row; nothing if it finished

    async def _complete(ticket: Ticket, deadline: float, request: Request) -> JSONResponse:
        while not isinstance(event := await _next(ticket, deadline, settings, request), Finished):
            if isinstance(event, Failed):
                raise _failure(event.error)
        body = api.completion_response(
            event.completion, response_id=api.completion_id(), model=name, created=api.now()
        )
        return JSONResponse(body)

    async def _stream_events(
        ticket: Ticket, parsed: api.ChatCompletionRequest, deadline: float
    ) -> AsyncIterator[str]:
        ids = {"response_id": api.completion_id(), "model": name, "created": api.now()}
        try:
            yield _sse(api.chunk(**ids, delta={"role": "assistant", "content": ""}))
            while True:
                event = await _next(ticket, deadline, settings, None)
                if isinstance(event, Delta):
                    yield _sse(api.chunk(**ids, delta={"content": event.text}))
                elif isinstance(event, Finished):
                    completion = event.completion
                    yield _sse(api.chunk(**ids, finish_reason=completion.finish_reason))
                    if parsed.include_usage:
                        yield _sse(api.chunk(**ids, usage_counts=api.usage(completion)))
                    yield _sse("[DONE]")
                    return
                elif isinstance(event, Failed):
                    yield _sse(_failure(event.error).body())
                    return
        except api.APIError as error:  # the time ran out mid-answer
            yield _sse(error.body())
        finally:  # also when the client leaves: Starlette cancels the stream
            batcher.cancel(ticket)

    return app
