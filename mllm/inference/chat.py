"""A conversation with a model about an image, answers streamed as they come: the session, one
answer (:func:`say`) and the interactive loop of ``mllm chat`` (``mllm.commands.chat``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from PIL import Image

from mllm.checkpoint import LoadedModel
from mllm.data.conversation import ConversationError
from mllm.data.images import ImageLoadError
from mllm.inference.generate import GenerationRequest, SamplingSettings, stream
from mllm.inference.inputs import image_question, read_image

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
            user = image_question(self.loaded, text)
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


def say(session: ChatSession, text: str, out: TextIO, err: TextIO) -> bool:
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
                session.set_image(read_image(argument.strip()))
            except ImageLoadError as exc:
                err.write(f"error: {exc}\n")
                continue
            err.write(f"[new conversation about {argument.strip()}]\n")
        elif command == "/help" or command.startswith("/"):
            err.write(f"{HELP}\n")
        else:
            say(session, line, out, err)
