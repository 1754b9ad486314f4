"""``mllm serve``: an OpenAI-compatible HTTP API for one model, on FastAPI and uvicorn.

Endpoints: ``POST /v1/chat/completions`` (streamed as server-sent events with
``"stream": true``), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``. Requests
that arrive together are answered in one batched ``generate`` call (up to ``--max-batch``,
gathered for up to ``--batch-window-ms``); over ``--max-queue`` waiting requests the answer
is 503 with Retry-After, and a request over ``--request-timeout`` seconds gets a 504. The
server listens on 127.0.0.1 unless told otherwise, caps request bytes, image pixels and new
tokens, reads images from data URLs only (``--allow-local-images FOLDER`` adds files under
FOLDER), and never downloads anything. CPU-sized command::

    mllm serve --model runs/demo/shapes-mlp/instruct/final --port 8000
    # then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from mllm.commands.listening import add_address_arguments, is_loopback
from mllm.commands.model_options import ModelLoadError, add_model_arguments, load_model_from_args
from mllm.serve import openai_api as api
from mllm.serve.server import ModelServer
from mllm.serve.settings import BatchSettings, ServeSettings

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mllm serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    add_address_arguments(parser, port=8000)
    parser.add_argument("--model-name", help="id clients pass as model (default: recipe name)")
    parser.add_argument("--max-request-bytes", type=int, default=20 * 1024 * 1024)
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096)
    parser.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per answer")
    parser.add_argument(
        "--allow-local-images",
        type=Path,
        metavar="FOLDER",
        help="also accept image paths and file:// URLs inside FOLDER",
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("MLLM_API_KEY"), help="require this bearer key"
    )
    batching = parser.add_argument_group("batching and load")
    batching.add_argument(
        "--max-batch", type=int, default=8, help="most requests per generate call (1: one by one)"
    )
    batching.add_argument(
        "--batch-window-ms",
        type=float,
        default=10.0,
        help="how long the oldest waiting request waits for others to join its batch",
    )
    batching.add_argument(
        "--max-queue", type=int, default=64, help="most waiting requests; more get a 503"
    )
    batching.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="most seconds per request, waiting included; then 504",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.allow_local_images is not None and not args.allow_local_images.is_dir():
        parser.exit(
            2, f"mllm serve: --allow-local-images {args.allow_local_images}: no such folder\n"
        )
    for flag, value, least in (
        ("--max-batch", args.max_batch, 1),
        ("--max-queue", args.max_queue, 1),
        ("--batch-window-ms", args.batch_window_ms, 0),
    ):
        if value < least:
            parser.exit(2, f"mllm serve: {flag} must be at least {least}, got {value}\n")
    if args.request_timeout <= 0:
        parser.exit(2, f"mllm serve: --request-timeout must be > 0, got {args.request_timeout}\n")
    batch_settings = BatchSettings(args.max_batch, args.batch_window_ms / 1000, args.max_queue)
    try:
        loaded = load_model_from_args(args)
    except ModelLoadError as exc:
        parser.exit(2, f"mllm serve: {exc}\n")
    limits = api.ServerLimits(
        max_new_tokens=args.max_new_tokens,
        max_image_pixels=args.max_image_pixels,
        local_image_folder=args.allow_local_images,
    )
    settings = ServeSettings(
        model_name=args.model_name or loaded.recipe.name,
        limits=limits,
        max_request_bytes=args.max_request_bytes,
        api_key=args.api_key,
        batching=batch_settings,
        request_timeout_s=args.request_timeout,
    )
    if not is_loopback(args.host) and args.api_key is None:
        logger.warning(
            "listening on %s without --api-key: anyone who can reach it may use it", args.host
        )
    try:
        server = ModelServer(loaded, settings, args.host, args.port, log_level="info")
    except OSError as exc:
        parser.exit(2, f"mllm serve: cannot listen on {args.host}:{args.port}: {exc.strerror}\n")
    print(f"serving {settings.model_name!r} at {server.url}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops gracefully, then re-raises
        server.serve_forever()
    return 0
