"""A bounded load test of ``mllm serve`` on 127.0.0.1 with the ``openai`` client.

Sends ``--requests`` chat completions from ``--concurrency`` clients (each keeps one
connection), each an image of ``--images`` and a question about it, and reports throughput
(requests/s, completion tokens/s), latency (p50/p95, and time to first token when streaming)
and errors. It is a script, not a timed test: numbers depend on the machine.

CPU-sized commands (the demo model of ``scripts/demo.sh``; about 10 s each on 2 cores)::

    python scripts/serve_load.py --model runs/demo/shapes-mlp/instruct/final \\
        --images runs/demo/data/images/test                      # batching on (--max-batch 8)
    python scripts/serve_load.py --model runs/demo/shapes-mlp/instruct/final \\
        --images runs/demo/data/images/test --max-batch 1        # one request at a time
    python scripts/serve_load.py --url http://127.0.0.1:8000/v1 --images DIR   # a running server

With ``--model`` the script starts ``mllm serve`` in a child process on a free port (with the
batching flags below; other flags such as ``--dtype`` are passed on) and stops it at the end;
with ``--url`` the server must already run. The first 16 requests warm up and are not counted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai

QUESTIONS = (
    "What color is the shape?\nAnswer the question using a single word or phrase.",
    "How many shapes are there?\nAnswer the question using a single word or phrase.",
)


@dataclass
class Result:
    seconds: float
    first_token_s: float | None
    completion_tokens: int
    error: str | None = None


def _messages(images: list[Path], index: int) -> list[dict]:
    question = QUESTIONS[index % len(QUESTIONS)]
    if not images:
        return [{"role": "user", "content": question}]
    data = base64.b64encode(images[index % len(images)].read_bytes()).decode()
    content = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        {"type": "text", "text": question},
    ]
    return [{"role": "user", "content": content}]


def _one(client: openai.OpenAI, model: str, messages: list[dict], args) -> Result:
    started = time.perf_counter()
    first = None
    try:
        options = {"model": model, "messages": messages, "temperature": 0}
        options["max_tokens"] = args.max_tokens
        if not args.stream:
            response = client.chat.completions.create(**options)
            tokens = response.usage.completion_tokens
        else:
            stream = client.chat.completions.create(
                **options, stream=True, stream_options={"include_usage": True}
            )
            tokens = 0
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
    except openai.APIError as exc:
        status = getattr(exc, "status_code", None)
        return Result(time.perf_counter() - started, None, 0, f"{type(exc).__name__} {status}")
    return Result(time.perf_counter() - started, first, tokens)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run_load(base_url: str, model: str, images: list[Path], args) -> dict:
    """Send the requests and summarise them."""
    local = threading.local()
    clients = []

    def client() -> openai.OpenAI:
        if not hasattr(local, "client"):
            local.client = openai.OpenAI(
                base_url=base_url, api_key=args.api_key, max_retries=0, timeout=args.timeout
            )
            clients.append(local.client)
        return local.client

    with ThreadPoolExecutor(args.concurrency) as pool:
        # Warm-up, not counted: every worker makes its client and connection, the server
        # its first batch.
        list(pool.map(lambda i: _one(client(), model, _messages(images, i), args), range(16)))
        started = time.perf_counter()
        results = list(
            pool.map(
                lambda i: _one(client(), model, _messages(images, i), args), range(args.requests)
            )
        )
        wall = time.perf_counter() - started
    for each in clients:
        each.close()
    ok = [r for r in results if r.error is None]
    latencies = [r.seconds for r in ok] or [float("nan")]
    firsts = [r.first_token_s for r in ok if r.first_token_s is not None]
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "seconds": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 2),
        "tokens_per_s": round(sum(r.completion_tokens for r in ok) / wall, 1),
        "completion_tokens": sum(r.completion_tokens for r in ok),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * _percentile(latencies, 0.95), 1),
        "first_token_p50_ms": round(1000 * statistics.median(firsts), 1) if firsts else None,
        "errors": dict(Counter(r.error for r in results if r.error is not None)),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="start `mllm serve --model MODEL` on a free port")
    where.add_argument("--url", help="a running server's base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--images", type=Path, help="folder of PNG images to ask about")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--stream", action="store_true", help="stream every answer")
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout, s")
    server = parser.add_argument_group(
        "the server started with --model (other options, e.g. --dtype, go to mllm serve)"
    )
    server.add_argument("--max-batch", type=int, default=8)
    server.add_argument("--batch-window-ms", type=float, default=10.0)
    server.add_argument("--max-queue", type=int, default=64)
    return parser


@contextlib.contextmanager
def served(args, extra: list[str]) -> Iterator[str]:
    """``mllm serve`` in a child process on a free loopback port; yields its base URL."""
    command = [sys.executable, "-m", "mllm", "serve", "--model", args.model, "--port", "0"]
    command += ["--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue)]
    command += ["--batch-window-ms", str(args.batch_window_ms), *extra]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in child.stderr:
            if match := re.search(r"serving .* at (http://\S+)", line):
                break
        else:
            raise SystemExit(f"mllm serve exited with {child.wait()} before serving")
        # Keep reading its log, so a full pipe never blocks the server.
        threading.Thread(target=lambda: [None for _ in child.stderr], daemon=True).start()
        yield match.group(1)
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.model is None:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not 1 <= args.requests <= 10_000 or not 1 <= args.concurrency <= 256:
        parser.error("--requests must be 1..10000 and --concurrency 1..256 (a bounded test)")
    images = sorted(args.images.glob("*.png")) if args.images else []
    if args.images and not images:
        parser.error(f"--images {args.images}: no .png files there")
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(served(args, extra))
        name = openai.OpenAI(base_url=url, api_key=args.api_key).models.list().data[0].id
        summary = run_load(url, name, images, args)
    print(json.dumps(summary, indent=2))
    batch = args.max_batch if args.model else "?"
    print(
        f"| {batch} | {args.requests} | {args.concurrency} | {summary['requests_per_s']} "
        f"| {summary['tokens_per_s']} | {summary['p50_ms']} | {summary['p95_ms']} "
        f"| {sum(summary['errors'].values())} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
