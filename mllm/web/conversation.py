"""One browser tab's conversation with the model, apart from Gradio: what the model has been
told, what the page shows, and the answer, regenerate and stop steps of ``mllm web``.

Answers come from :class:`mllm.inference.chat.ChatSession` (the session of ``mllm chat``), so
the page and the terminal give the same answer to the same image and question. The page shows
Gradio's chat messages (``{"role": "user" | "assistant", "content": text}``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field

from PIL import Image

from mllm.checkpoint import LoadedModel
from mllm.data.conversation import ConversationError
from mllm.inference.chat import ChatSession
from mllm.inference.generate import SamplingSettings

#: What the page shows: Gradio chat messages, ``{"role": ..., "content": ...}``.
Messages = list[dict[str, str]]

STOPPED = "⏹ *stopped; not kept in the conversation*"

#: Guards every change of a conversation: an answer streams in one thread while the page's
#: stop, regenerate and clear steps run in others. Held for a few assignments, never while
#: generating; one lock for every tab, as the changes are that short.
_LOCK = threading.RLock()


class NothingToRegenerate(Exception):
    """Regenerate was asked for before any question."""


@dataclass
class Conversation:
    """A tab's state between events: plain data, so Gradio can copy it for each new tab.

    Gradio hands each event of a tab the same object, and the steps change it in place (under
    one lock), so the stop step sees what the answer step has streamed so far, and an answer
    sees that it was stopped, taken back or cleared, and ends.

    Attributes:
        image: the image file the conversation is about (``None``: none yet, or text only).
        turns: what the model has been told (``ChatSession.history``); an answer joins it
            once it is complete, so a stopped or failed answer is not part of it.
        shown: what the page shows, stopped answers included.
        last_question: the question regenerate asks again.
        last_kept: whether the answer to ``last_question`` is in ``turns`` (regenerate takes
            it back before asking again).
    """

    image: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    shown: Messages = field(default_factory=list)
    last_question: str | None = None
    last_kept: bool = False

    def restart(self) -> None:
        """Forget every turn and message (the image stays)."""
        with _LOCK:
            self.turns, self.shown = [], []
            self.last_question, self.last_kept = None, False

    def switch_image(self, image: str | None) -> bool:
        """Talk about ``image`` from now on: another image than the conversation's starts a
        new conversation (one image per chat, as in ``mllm chat``). Returns whether it did.

        Called both when the page's image changes and before each answer, so whichever of
        the two reaches the server first, an answer is about the image shown with it.
        """
        with _LOCK:
            if image == self.image:
                return False
            self.image = image
            self.restart()
            return True


def stream_answer(
    loaded: LoadedModel,
    conversation: Conversation,
    image: Image.Image | None,
    question: str,
    settings: SamplingSettings,
) -> Iterator[Messages]:
    """Ask ``question`` about ``image`` and yield the page's messages: the question at once,
    then the answer as it grows.

    ``conversation`` records the question at once and the answer when it is complete. Closing
    the iterator (Gradio does when the user stops) stops generation; so does a step that
    changes the page's messages meanwhile (:func:`mark_stopped`, :func:`take_back_last`,
    :meth:`Conversation.restart`), so a stopped answer that was slow to end cannot overwrite
    the next one.

    Raises:
        ConversationError, ValueError: the conversation cannot be prompted (too long for the
            model's context, for instance); ``conversation`` is then as it was.
    """
    session = ChatSession(loaded, settings, image=image, history=list(conversation.turns))
    with _LOCK:
        before = (conversation.shown, conversation.last_question, conversation.last_kept)
        conversation.last_question, conversation.last_kept = question, False
        mine = conversation.shown = [*before[0], _user(question)]
    yield mine
    answer = ""
    with closing(session.ask(question)) as pieces:  # closing it stops generation
        try:
            for piece in pieces:
                with _LOCK:
                    if conversation.shown is not mine:  # stopped, taken back or restarted
                        return
                    answer += piece
                    mine = conversation.shown = [*before[0], _user(question), _assistant(answer)]
                yield mine
        except (ConversationError, ValueError):
            with _LOCK:
                if conversation.shown is mine:
                    conversation.shown, conversation.last_question, conversation.last_kept = before
            raise
    with _LOCK:
        if conversation.shown is not mine:
            return
        conversation.turns, conversation.last_kept = session.history, True
        conversation.shown = [*before[0], _user(question), _assistant(answer)]
    yield conversation.shown


def take_back_last(conversation: Conversation) -> str:
    """Remove the last question and its answer from the page (and from ``turns`` if the answer
    was kept), so asking it again continues from the turns before it; returns the question.

    Raises:
        NothingToRegenerate: no question has been asked in this conversation.
    """
    with _LOCK:
        if conversation.last_question is None:
            raise NothingToRegenerate("ask a question first")
        if conversation.last_kept:
            del conversation.turns[-2:]
            conversation.last_kept = False
        users = [i for i, message in enumerate(conversation.shown) if message["role"] == "user"]
        conversation.shown = conversation.shown[: users[-1]] if users else []
        return conversation.last_question


def mark_stopped(conversation: Conversation) -> Messages:
    """Stop the answer being streamed: the page's messages with it marked as not kept (as they
    were if the answer was complete before the stop arrived). The answer's iterator sees the
    change at its next piece of text and ends generation."""
    with _LOCK:
        shown = conversation.shown
        if conversation.last_kept or not shown or shown[-1]["content"].endswith(STOPPED):
            return shown
        if shown[-1]["role"] == "assistant":
            answer = shown[-1]["content"]
            shown = [*shown[:-1], _assistant(f"{answer} {STOPPED}" if answer else STOPPED)]
        else:
            shown = [*shown, _assistant(STOPPED)]
        conversation.shown = shown
        return shown


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}
