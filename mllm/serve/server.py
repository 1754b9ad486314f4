"""Running the app: a uvicorn server on a socket bound before it starts, so the address (port
0: any free port) is known up front, in the foreground (``mllm serve``) or in a thread (tests,
``scripts/serve_load.py``)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from mllm.inference.loading import LoadedModel
from mllm.serve.app import create_app
from mllm.serve.batcher import Batcher
from mllm.serve.settings import ServeSettings

#: Seconds open connections get to finish when the server stops.
_GRACE_S = 5


class ModelServer:
    """The model's app, its batcher, and the uvicorn server that runs them.

    Args:
        loaded: the model.
        settings: what the server accepts and how it batches.
        host, port: where to listen (port 0: any free port; see :attr:`url`).
        log_level: uvicorn's (``"info"`` logs every request).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        settings: ServeSettings,
        host: str = "127.0.0.1",
        port: int = 8000,
        log_level: str = "warning",
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family)
        self.batcher = Batcher(loaded, settings.batching)
        self.app = create_app(loaded, settings, self.batcher)
        config = uvicorn.Config(
            self.app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=_GRACE_S
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (in the main thread) or :meth:`shutdown`, then stop generating."""
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self.batcher.close()
            self._socket.close()

    def start(self) -> ModelServer:
        """Serve from a background thread; returns once the server accepts requests."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="mllm-serve")
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server stopped while starting; see its log")
            time.sleep(0.01)
        return self

    def shutdown(self) -> None:
        """Stop a server started with :meth:`start` and wait for it."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
