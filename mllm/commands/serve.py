"""``mllm serve``: an OpenAI-compatible HTTP API for one model, on the standard library.

Endpoints: ``POST /v1/chat/completions`` (streamed as server-sent events with
``"stream": true``), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``. Requests
are parsed in parallel; generation runs one request at a time. The server listens on
127.0.0.1 unless told otherwise, caps request bytes, image pixels and new tokens, reads
images from data URLs only (``--allow-local-images FOLDER`` adds files under FOLDER), and
never downloads anything. CPU-sized command::

    mllm serve --model runs/demo/shapes-mlp/instruct/final --port 8000
    # then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from mllm.commands.model_options import ModelLoadError, add_model_arguments, load_model_from_args
from mllm.serve import openai_api as api
from mllm.serve.server import ServeSettings, make_server

logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mllm serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.allow_local_images is not None and not args.allow_local_images.is_dir():
        parser.exit(
            2, f"mllm serve: --allow-local-images {args.allow_local_images}: no such folder\n"
        )
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
    )
    if not _is_loopback(args.host) and args.api_key is None:
        logger.warning(
            "listening on %s without --api-key: anyone who can reach it may use it", args.host
        )
    server = make_server(loaded, settings, args.host, args.port)
    print(f"serving {settings.model_name!r} at {server.url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
