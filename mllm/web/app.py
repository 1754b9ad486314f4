"""The Gradio page of ``mllm web``: image upload, a streamed multi-turn chat with sampling
controls, stop / regenerate / clear, example images and questions, and the model card.

The page only wires components to :mod:`mllm.web.conversation`, which answers through
``mllm chat``'s :class:`~mllm.inference.chat.ChatSession`. A new image starts a new
conversation (one image per chat, as in ``mllm chat``). One answer is generated at a time,
for every tab together: they share one model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import gradio as gr

from mllm.checkpoint import LoadedModel
from mllm.data.images import ImageLoadError
from mllm.inference.generate import SamplingSettings
from mllm.inference.inputs import read_image
from mllm.web.conversation import (
    Conversation,
    Messages,
    NothingToRegenerate,
    mark_stopped,
    stream_answer,
    take_back_last,
)
from mllm.web.examples import Example
from mllm.web.model_card import model_card_markdown

#: Demo images are small (32-64 px): scale them up without blurring.
CSS = (
    "#image img, #examples img { image-rendering: pixelated; }"
    " #image img { width: 100%; height: 100%; object-fit: contain; }"
)
#: Generation events share this concurrency group, limited to one at a time.
GENERATE = "generate"


def _controls(busy: bool) -> tuple[dict, ...]:
    """Updates of Send, Stop, Regenerate and Clear: only Stop while an answer streams.

    Only the generation steps set them (not chained events), at their first and last
    output, so the page is busy exactly while an answer is generated.
    """
    idle = gr.update(interactive=not busy)
    return idle, gr.update(visible=busy, interactive=True), idle, idle


class _Answering:
    """The page's generation steps for one model; each yields the chat, the question box and
    the controls."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def ask(
        self,
        image_path: str | None,
        question: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        conversation: Conversation,
    ) -> Iterator[tuple]:
        if not question.strip():
            gr.Warning("Type a question first.")
            return
        conversation.switch_image(image_path)
        sampling = (temperature, top_p, max_tokens)
        yield from self._stream(conversation, image_path, question.strip(), sampling, True)

    def regenerate(
        self,
        image_path: str | None,
        temperature: float,
        top_p: float,
        max_tokens: float,
        conversation: Conversation,
    ) -> Iterator[tuple]:
        conversation.switch_image(image_path)  # another image: nothing to regenerate
        try:
            question = take_back_last(conversation)
        except NothingToRegenerate:
            gr.Warning("Nothing to regenerate: ask a question first.")
            return
        sampling = (temperature, top_p, max_tokens)
        yield from self._stream(conversation, image_path, question, sampling, False)

    def _stream(
        self,
        conversation: Conversation,
        image_path: str | None,
        question: str,
        sampling: tuple[float, float, float],
        from_box: bool,
    ) -> Iterator[tuple]:
        """Stream the answer; a question typed in the box (``from_box``) leaves it at once,
        and comes back if the model cannot take it."""
        temperature, top_p, max_tokens = sampling
        try:
            settings = SamplingSettings(int(max_tokens), float(temperature), float(top_p))
            image = read_image(image_path) if image_path else None  # as mllm chat reads it
        except (ValueError, ImageLoadError) as exc:
            raise gr.Error(str(exc)) from None
        box = "" if from_box else gr.skip()  # then the user may type the next one
        try:
            for shown in stream_answer(self.loaded, conversation, image, question, settings):
                yield shown, box, *_controls(busy=True)
                box = gr.skip()
        except ValueError as exc:  # ConversationError too: a prompt the model cannot take
            yield conversation.shown, question if from_box else gr.skip(), *_controls(busy=False)
            raise gr.Error(str(exc)) from None
        # The conversation's messages: this answer's, or those of a step that ended it.
        yield conversation.shown, gr.skip(), *_controls(busy=False)


def _on_image(image_path: str | None, conversation: Conversation) -> Messages:
    """A new image starts a new conversation (unless an answer about it already did)."""
    return conversation.shown if conversation.switch_image(image_path) else gr.skip()


def _clear(conversation: Conversation) -> Messages:
    conversation.restart()
    return conversation.shown


def _stop(conversation: Conversation) -> tuple:
    """Mark the answer stopped; its step sees it at the next token, ends generation and makes
    the page idle. (Gradio's own cancelling is not used: when an event is slow to cancel, its
    page also cancels the answer asked for next.)"""
    return mark_stopped(conversation), gr.update(interactive=False)


def build_app(
    loaded: LoadedModel,
    *,
    examples: Sequence[Example] = (),
    max_new_tokens: int = 512,
    title: str | None = None,
) -> gr.Blocks:
    """The page for ``loaded``; :func:`launch` serves it.

    Args:
        loaded: the model (``mllm.load``).
        examples: example images and questions shown under the upload.
        max_new_tokens: the top of the max-tokens slider (it starts at 256, ``mllm chat``'s
            default, or at this if lower).
        title: the page's heading (default: ``mllm · RECIPE_NAME``).

    Returns:
        The Gradio Blocks; the elements ``mllm.web.page`` drives have ``elem_id``\\ s.
    """
    title = title or f"mllm · {loaded.recipe.name}"
    answering = _Answering(loaded)
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        conversation = gr.State(Conversation())
        question = gr.Textbox(  # rendered under the chat; the examples fill it
            label="Question",
            placeholder="Ask about the image (Enter sends, Shift+Enter a new line)",
            lines=1,  # Enter sends; Shift+Enter makes it grow (Gradio's keys)
            max_lines=6,
            elem_id="question",
            render=False,
        )
        gr.Markdown(f"# {title}\nUpload an image (a new image starts a new chat) and ask about it.")
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                image = gr.Image(
                    type="filepath",
                    image_mode=None,  # the file as uploaded: read_image converts it
                    label="Image",
                    height=240,
                    buttons=["download", "fullscreen"],
                    elem_id="image",
                )
                with gr.Accordion("Sampling", open=True):
                    temperature = gr.Slider(
                        0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)"
                    )
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                    max_tokens = gr.Slider(
                        1,
                        max_new_tokens,
                        value=min(256, max_new_tokens),
                        step=1,
                        label="Max new tokens",
                    )
                with gr.Accordion("Model card", open=True):
                    gr.Markdown(model_card_markdown(loaded), elem_id="model-card")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="Chat",
                    height=480,
                    elem_id="chat",
                    feedback_options=None,
                    buttons=["copy_all"],
                )
                question.render()
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", variant="stop", visible=False, elem_id="stop")
                    regenerate = gr.Button("Regenerate", elem_id="regenerate")
                    clear = gr.Button("Clear", elem_id="clear")
                if examples:
                    gr.Examples(
                        [[str(e.image), e.question] for e in examples],
                        inputs=[image, question],
                        label="Examples from the shapes demo data",
                        elem_id="examples",
                    )

        controls = [send, stop, regenerate, clear]
        sampling = [temperature, top_p, max_tokens, conversation]
        streamed = {"outputs": [chatbot, question, *controls], "concurrency_id": GENERATE}
        send.click(answering.ask, [image, question, *sampling], **streamed)
        question.submit(answering.ask, [image, question, *sampling], **streamed)
        regenerate.click(answering.regenerate, [image, *sampling], **streamed)
        stop.click(_stop, conversation, [chatbot, stop], queue=False)
        clear.click(_clear, conversation, chatbot, queue=False)
        chatbot.clear(_clear, conversation, chatbot, queue=False)
        image.change(_on_image, [image, conversation], chatbot, queue=False)
    return app


def launch(
    app: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    allowed_paths: Sequence[Path] = (),
) -> str:
    """Start serving ``app`` on ``host``:``port`` (loopback by default) in a background
    thread; returns the page's URL once the server is up. ``app.block_thread()`` waits for
    Ctrl-C, ``app.close()`` stops it.

    ``allowed_paths`` are folders whose files the page may serve (the example images).
    """
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        allowed_paths=[str(p) for p in allowed_paths],
        prevent_thread_lock=True,
        show_error=True,
        quiet=True,
        footer_links=[],
        css=CSS,
    )
    return url
