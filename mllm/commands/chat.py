"""``mllm chat``: talk to a model about an image in the terminal, answers streamed as they come.

Interactive: each line you type is a question; the conversation keeps its history. Commands:
``/image PATH`` (start a new conversation about another image), ``/reset`` (forget the
history, keep the image), ``/help``, ``/quit`` (or end of input). With ``--prompt`` it
answers once and exits, printing only the answer on stdout (scriptable). CPU-sized command::

    mllm chat --model runs/demo/shapes-mlp/instruct/final \\
        --image runs/demo/data/images/test/000000.png --prompt "What color is the shape?"
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from mllm.commands.model_options import ModelLoadError, add_model_arguments, load_model_from_args
from mllm.data.images import ImageLoadError
from mllm.inference.chat import ChatSession, run_interactive, say
from mllm.inference.generate import SamplingSettings
from mllm.inference.inputs import read_image


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mllm chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--image", help="image to talk about (PNG, JPEG, ...)")
    parser.add_argument("--prompt", help="answer this one question and exit")
    parser.add_argument("--system", help="system prompt (default: the template's)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, help="makes sampling repeatable")
    return parser


def main(
    argv: list[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Command line; the streams are injectable so the interactive loop can be tested."""
    stdin, out, err = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_p, args.seed)
        image = read_image(args.image) if args.image else None  # before the slow part
    except (ValueError, ImageLoadError) as exc:
        err.write(f"mllm chat: {exc}\n")
        return 2
    try:
        loaded = load_model_from_args(args)
    except ModelLoadError as exc:
        err.write(f"mllm chat: {exc}\n")
        return 2
    session = ChatSession(loaded, settings, image=image, system=args.system)
    if args.prompt is not None:
        return 0 if say(session, args.prompt, out, err) else 1
    return run_interactive(session, stdin, out, err)
