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
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
from PIL import Image

from mllm.data.images import ImageLoadError, load_image
from mllm.data.templates import ConversationError
from mllm.inference.generate import GenerationRequest, SamplingSettings, stream
from mllm.inference.loading import LoadedModel, load_model
from mllm.inference.quantize import QUANTIZE_MODES, QuantizationUnavailableError
from mllm.models.builder import DTYPES

HELP = "commands: /image PATH (new conversation about it), /reset, /help, /quit"


@dataclass
class ChatSession:
    """A conversation with one model about (at most) one image.

    The image goes into the first human turn as ``<image>\\n`` + text, the way LLaVA-style
    data puts it. Failed or interrupted turns leave the history as it was.
    """

    loaded: LoadedModel
    settings: SamplingSettings
    image: Image.Image | None = None
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.history.clear()

    def set_image(self, image: Image.Image | None) -> None:
        """Talk about ``image`` from now on, in a new conversation (one image per chat)."""
        self.image = image
        self.reset()

    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to ``text``; it joins the history once it is complete.

        Raises:
            ConversationError, ValueError: the conversation cannot be prompted (raised before
                the first piece of text, so nothing has been printed yet).
        """
        user = text
        if not self.history and self.image is not None:
            user = f"{self.loaded.built.image_token}\n{text}"
        turns = [*self.history, {"from": "human", "value": user}]
        if self.system is not None:
            turns.insert(0, {"from": "system", "value": self.system})
        images = [self.image] if self.image is not None else []
        answer = []
        with stream(self.loaded, [GenerationRequest(turns, images)], self.settings) as deltas:
            for delta in deltas:
                answer.append(delta.text)
                yield delta.text
        self.history += [
            {"from": "human", "value": user},
            {"from": "gpt", "value": "".join(answer)},
        ]


def _read_image(path: str) -> Image.Image:
    """The image at ``path`` as RGB; the error names the path and what is wrong with it."""
    if not Path(path).is_file():
        what = "is a folder, not an image" if Path(path).is_dir() else "does not exist"
        raise ImageLoadError(f"image {path!r} {what}")
    return load_image(path)


def _say(session: ChatSession, text: str, out: TextIO, err: TextIO) -> bool:
    """Stream one answer to ``out``; ``False`` if it could not be generated."""
    pieces = session.ask(text)
    try:
        for piece in pieces:
            out.write(piece)
            out.flush()
    except (ConversationError, ValueError) as exc:
        err.write(f"error: {exc}\n")
        return False
    except KeyboardInterrupt:
        pieces.close()  # stops generation
        out.write("\n")
        err.write("[stopped; the answer was not kept]\n")
        return False
    out.write("\n")
    out.flush()
    return True


def run_interactive(session: ChatSession, stdin: TextIO, out: TextIO, err: TextIO) -> int:
    """Read questions and commands line by line until ``/quit`` or the end of input."""
    prompt = "> " if stdin.isatty() else ""
    err.write(f"{HELP}\n")
    while True:
        if prompt:
            out.write(prompt)
            out.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            line = ""
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        command, _, argument = line.partition(" ")
        if command in ("/quit", "/exit"):
            return 0
        if command == "/reset":
            session.reset()
            err.write("[new conversation]\n")
        elif command == "/image":
            if not argument.strip():
                err.write("usage: /image PATH\n")
                continue
            try:
                session.set_image(_read_image(argument.strip()))
            except ImageLoadError as exc:
                err.write(f"error: {exc}\n")
                continue
            err.write(f"[new conversation about {argument.strip()}]\n")
        elif command == "/help" or command.startswith("/"):
            err.write(f"{HELP}\n")
        else:
            _say(session, line, out, err)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mllm chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="an mllm checkpoint or a LLaVA folder")
    parser.add_argument("--image", help="image to talk about (PNG, JPEG, ...)")
    parser.add_argument("--prompt", help="answer this one question and exit")
    parser.add_argument("--system", help="system prompt (default: the template's)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, help="makes sampling repeatable")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, help="LLM in 4/8 bits")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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
        image = _read_image(args.image) if args.image else None  # before the slow part
    except (ValueError, ImageLoadError) as exc:
        err.write(f"mllm chat: {exc}\n")
        return 2
    # bitsandbytes warns on every 8-bit matmul that fp32 inputs are cast to fp16.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    try:
        loaded = load_model(
            args.model, dtype=DTYPES[args.dtype], device=args.device, quantize=args.quantize
        )
    except (ValueError, OSError, QuantizationUnavailableError) as exc:
        err.write(f"mllm chat: cannot load --model {args.model}: {exc}\n")
        return 2
    session = ChatSession(loaded, settings, image=image, system=args.system)
    if args.prompt is not None:
        return 0 if _say(session, args.prompt, out, err) else 1
    return run_interactive(session, stdin, out, err)
