"""An OpenAI-compatible HTTP server for one model, on the standard library: the server behind
``mllm serve`` (``mllm.commands.serve``, whose help lists the endpoints and limits)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mllm.checkpoint import LoadedModel
from mllm.data.templates import ConversationError
from mllm.inference.generate import complete, stream
from mllm.serve import openai_api as api

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """How the server presents the model and what it accepts.

    Attributes:
        model_name: the id clients pass as ``model`` (and ``/v1/models`` lists).
        limits: per-request limits (tokens, image pixels, local image folder).
        max_request_bytes: request bodies above this are refused with 413 unread.
        api_key: when set, requests need ``Authorization: Bearer <api_key>``.
    """

    model_name: str
    limits: api.ServerLimits = api.ServerLimits()
    max_request_bytes: int = 20 * 1024 * 1024
    api_key: str | None = None


class ModelServer(ThreadingHTTPServer):
    """A threading HTTP server holding the model and the lock generation runs under."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], loaded: LoadedModel, settings: ServeSettings):
        super().__init__(address, _Handler)
        self.loaded = loaded
        self.settings = settings
        self.generation_lock = threading.Lock()
        self.created = api.now()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mllm-serve"
    timeout = 60  # seconds a client may take to send its request
    server: ModelServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        logger.info("%s %s", self.address_string(), format % args)

    # -- responses ---------------------------------------------------------------------------
    def _send_json(self, status: int, body: dict, *, close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: api.APIError, *, close: bool = False) -> None:
        self._send_json(error.status, error.body(), close=close)

    def _send_event(self, payload: dict | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.wfile.write(f"data: {text}\n\n".encode())
        self.wfile.flush()

    # -- routing -----------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        name, created = self.server.settings.model_name, self.server.created
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._send_json(200, {"status": "ok"})
        elif not self._authorized():
            return
        elif path == "/v1/models":
            self._send_json(200, api.models_response(name, created))
        elif path == f"/v1/models/{name}":
            self._send_json(200, api.model_object(name, created))
        elif path.startswith("/v1/models/"):
            message = (
                f"model {path.rsplit('/', 1)[1]!r} is not served here; this server serves {name!r}"
            )
            self._send_error(api.APIError(404, message, code="model_not_found"))
        elif path == "/v1/chat/completions":
            self._send_error(api.APIError(405, "use POST for /v1/chat/completions"))
        else:
            self._send_error(api.APIError(404, f"no such endpoint: GET {path}"))

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0].rstrip("/")
        if path != "/v1/chat/completions":
            self._send_error(api.APIError(404, f"no such endpoint: POST {path}"), close=True)
            return
        if not self._authorized():
            return
        try:
            request = self._read_request()
        except api.APIError as error:
            self._send_error(error, close=error.status in (411, 413))
            return
        with self.server.generation_lock:
            if request.stream:
                self._stream(request)
            else:
                self._complete(request)

    def _authorized(self) -> bool:
        key = self.server.settings.api_key
        if key is None or self.headers.get("Authorization", "") == f"Bearer {key}":
            return True
        error = api.APIError(401, "missing or wrong API key", code="invalid_api_key")
        self._send_error(error, close=True)
        return False

    def _read_request(self) -> api.ChatCompletionRequest:
        length = self.headers.get("Content-Length")
        if length is None:
            raise api.APIError(411, "the request needs a Content-Length header")
        if not length.isdigit():
            raise api.APIError(400, f"bad Content-Length {length!r}")
        limit = self.server.settings.max_request_bytes
        if int(length) > limit:
            raise api.APIError(
                413,
                f"the request is {length} bytes, over this server's limit of {limit} "
                "(--max-request-bytes)",
                code="request_too_large",
            )
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise api.APIError(400, f"the request body is not valid JSON: {exc}") from None
        loaded, settings = self.server.loaded, self.server.settings
        return api.parse_chat_request(
            body,
            model_name=settings.model_name,
            image_token=loaded.built.image_token,
            limits=settings.limits,
        )

    # -- generation --------------------------------------------------------------------------
    def _complete(self, request: api.ChatCompletionRequest) -> None:
        try:
            (completion,) = complete(self.server.loaded, [request.generation], request.settings)
        except (ConversationError, ValueError) as exc:
            self._send_error(api.APIError(400, str(exc), param="messages"))
            return
        except Exception:
            logger.exception("generation failed")
            self._send_error(api.APIError(500, "generation failed", error_type="server_error"))
            return
        body = api.completion_response(
            completion,
            response_id=api.completion_id(),
            model=self.server.settings.model_name,
            created=api.now(),
        )
        self._send_json(200, body)

    def _stream(self, request: api.ChatCompletionRequest) -> None:
        try:
            deltas = stream(self.server.loaded, [request.generation], request.settings)
        except (ConversationError, ValueError) as exc:
            self._send_error(api.APIError(400, str(exc), param="messages"))
            return
        ids = {
            "response_id": api.completion_id(),
            "model": self.server.settings.model_name,
            "created": api.now(),
        }
        with deltas:
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")  # the stream ends with the connection
                self.close_connection = True
                self.end_headers()
                self._send_event(api.chunk(**ids, delta={"role": "assistant", "content": ""}))
                for delta in deltas:
                    self._send_event(api.chunk(**ids, delta={"content": delta.text}))
                (completion,) = deltas.completions
                self._send_event(api.chunk(**ids, finish_reason=completion.finish_reason))
                if request.include_usage:
                    self._send_event(api.chunk(**ids, usage_counts=api.usage(completion)))
                self._send_event("[DONE]")
            except (BrokenPipeError, ConnectionResetError):
                logger.info("the client left; generation stopped")
            except Exception:
                logger.exception("generation failed while streaming")
                error = api.APIError(500, "generation failed", error_type="server_error")
                with contextlib.suppress(OSError):  # the client may be gone too
                    self._send_event(error.body())


def make_server(
    loaded: LoadedModel, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000
) -> ModelServer:
    """A server bound to ``host:port`` (port 0: any free port); call ``serve_forever``."""
    return ModelServer((host, port), loaded, settings)
