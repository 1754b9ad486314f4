"""``mllm web``: the page in a real headless Chromium gives ``mllm chat``'s answers, over several
turns, and its stop, regenerate, clear, examples and model card work; the conversation steps
behind it; and the command itself on loopback.

The browser is Debian's Chromium driven by Playwright (``mllm.web.page``); without it these
tests fail and say how to install it.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mllm.cli import main as cli
from mllm.commands.chat import main as chat_main
from mllm.inference import SamplingSettings
from mllm.inference.inputs import read_image
from mllm.web.app import build_app, launch
from mllm.web.conversation import (
    STOPPED,
    Conversation,
    NothingToRegenerate,
    mark_stopped,
    stream_answer,
    take_back_last,
)
from mllm.web.examples import read_examples
from mllm.web.page import ChromiumMissingError, DemoPage, chromium

GREEDY = SamplingSettings(max_new_tokens=256)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_line(text: str) -> str:
    """A question as one line of ``mllm chat``'s interactive input."""
    return text.replace("\n", " ")


@pytest.fixture(scope="module")
def web_url(loaded, trained_shapes):
    """The page of the trained model, served in this process on a free loopback port."""
    data = trained_shapes.image_folder.parent
    app = build_app(loaded, examples=read_examples(data))
    url = launch(app, port=_free_port(), allowed_paths=[data])
    yield url
    app.close()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (``MLLM_CHROMIUM`` names another); without it the tests fail."""
    missing = None
    try:
        with chromium() as launched:
            yield launched
    except ChromiumMissingError as exc:
        missing = str(exc)
    if missing is not None:
        pytest.fail(missing, pytrace=False)


@pytest.fixture
def page(browser, web_url):
    """A new tab (a new conversation) on the page."""
    tab = browser.new_page()
    yield DemoPage(tab, web_url)
    tab.close()


def _chat_prompt(checkpoint: Path, image: Path, question: str, capsys) -> str:
    """``mllm chat --prompt``'s answer."""
    capsys.readouterr()
    assert (
        cli(["chat", "--model", str(checkpoint), "--image", str(image), "--prompt", question]) == 0
    )
    return capsys.readouterr().out.removesuffix("\n")


def test_the_page_answers_as_mllm_chat_does(page, trained_shapes, capsys):
    question = next(q for q in trained_shapes.held_out if "color" in q.text)
    page.upload(question.image)
    answer = page.ask(question.text)
    assert answer == _chat_prompt(trained_shapes.checkpoint, question.image, question.text, capsys)
    assert answer == question.answer  # a real answer, not the output of random weights
    assert page.questions() == [question.text]


def test_a_conversation_over_several_turns_regenerate_and_clear(page, trained_shapes):
    colour = next(q for q in trained_shapes.held_out if "color" in q.text)
    count = next(q for q in trained_shapes.held_out if q.image == colour.image and q is not colour)
    questions = [_one_line(colour.text), _one_line(count.text)]
    out, err = io.StringIO(), io.StringIO()
    model = ["--model", str(trained_shapes.checkpoint), "--image", str(colour.image)]
    assert (
        chat_main(model, stdin=io.StringIO("\n".join(questions) + "\n"), stdout=out, stderr=err)
        == 0
    )
    expected = out.getvalue().splitlines()
    assert len(expected) == 2, err.getvalue()

    page.upload(colour.image)
    assert page.ask(questions[0]) == expected[0]
    assert page.ask(questions[1], press_enter=True) == expected[1]  # with the first in its history
    assert page.question_text() == ""
    assert page.regenerate() == expected[1]  # greedy: the same answer, in the same place
    assert page.questions() == questions
    assert page.answers() == expected
    page.clear()
    assert page.answers() == [] and page.questions() == []
    assert page.ask(questions[1]) == page.answers()[-1]  # a new conversation: one turn
    assert page.questions() == [questions[1]]


def test_stop_while_streaming_keeps_nothing_and_regenerate_asks_again(
    page, loaded, trained_shapes, capsys
):
    question = next(q for q in trained_shapes.held_out if "color" in q.text)
    page.upload(question.image)
    # Each forward pass of the LLM waits, so the answer takes seconds and Stop arrives first.
    slow = loaded.built.model.llm.register_forward_pre_hook(lambda *_: time.sleep(0.3))
    try:
        page.start(question.text)
        page.stop()
    finally:
        slow.remove()
    assert page.answers()[-1].endswith("stopped; not kept in the conversation")
    assert page.regenerate() == _chat_prompt(
        trained_shapes.checkpoint, question.image, question.text, capsys
    )
    assert page.questions() == [question.text]


def test_examples_fill_the_page_a_new_image_starts_a_new_chat_and_the_card_names_the_model(
    page, trained_shapes, capsys
):
    examples = read_examples(trained_shapes.image_folder.parent)
    assert len({e.image for e in examples}) == len(examples) > 1  # one question per image
    page.choose_example(0, examples[0].question)
    assert page.ask(examples[0].question) == _chat_prompt(
        trained_shapes.checkpoint, examples[0].image, examples[0].question, capsys
    )  # the example's image went with it
    page.choose_example(1, examples[1].question)
    page.wait_for_empty_chat()  # another image: a new conversation
    card = page.model_card()
    for line in (
        "Recipe: tiny",
        "Stage: instruct, step 1000; trained: vision (full), projector (full), llm (full)",
        "Vision tower: clip from",
        "Projector: mlp, 16 tokens per image",
        "LLM: llama from",
        "Template: vicuna_v1, images pad",
        "Format: mllm-checkpoint",
    ):
        assert line in card


def _generating() -> bool:
    return any(t.name == "mllm-generate" and t.is_alive() for t in threading.enumerate())


def test_conversation_steps_stream_stop_and_take_back(loaded, trained_shapes):
    question = next(q for q in trained_shapes.held_out if "color" in q.text)
    image = read_image(question.image)
    conversation = Conversation()
    steps = list(stream_answer(loaded, conversation, image, question.text, GREEDY))
    assert steps[0] == [{"role": "user", "content": question.text}]  # shown before any answer
    answers = [step[-1]["content"] for step in steps[1:]]
    assert answers[-1] == question.answer
    assert all(b.startswith(a) for a, b in zip(answers, answers[1:], strict=False))
    assert conversation.last_kept and len(conversation.turns) == 2
    assert conversation.turns[0]["value"] == f"<image>\n{question.text}"

    # Stopped (the iterator closed, as Gradio closes it): generation ends, nothing is kept.
    answering = stream_answer(loaded, conversation, image, "How many shapes are there?", GREEDY)
    next(answering)
    next(answering)  # generation is under way
    answering.close()
    assert not _generating()
    assert len(conversation.turns) == 2 and not conversation.last_kept
    shown = mark_stopped(conversation)
    assert shown[-1]["role"] == "assistant" and shown[-1]["content"].endswith(STOPPED)

    # Regenerate takes the stopped question back from the page only, a kept one from the turns.
    assert take_back_last(conversation) == "How many shapes are there?"
    assert len(conversation.shown) == 2 and len(conversation.turns) == 2
    conversation.last_question, conversation.last_kept = question.text, True
    assert take_back_last(conversation) == question.text
    assert conversation.shown == [] and conversation.turns == []
    with pytest.raises(NothingToRegenerate):
        take_back_last(Conversation())

    # Another image starts a new conversation; the same one (the page's and the answer's
    # steps both say which image) does not.
    conversation = Conversation(image="a.png", turns=[{}, {}], shown=[{}, {}], last_question="?")
    assert not conversation.switch_image("a.png") and len(conversation.turns) == 2
    assert conversation.switch_image("b.png")
    assert conversation == Conversation(image="b.png")


def test_a_prompt_the_model_cannot_take_leaves_the_conversation_as_it_was(loaded):
    conversation = Conversation()
    too_long = SamplingSettings(max_new_tokens=100_000)
    answering = stream_answer(loaded, conversation, None, "Hello?", too_long)
    assert next(answering) == [{"role": "user", "content": "Hello?"}]
    with pytest.raises(ValueError, match="context"):
        next(answering)
    assert conversation == Conversation()  # nothing to regenerate either


def test_mllm_web_listens_on_loopback_by_default(trained_shapes):
    port = _free_port()
    command = [sys.executable, "-m", "mllm.cli", "web", "--model", str(trained_shapes.checkpoint)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if line.startswith("mllm web: serving"):
                break
        assert lines and lines[-1] == f"mllm web: serving 'tiny' at http://127.0.0.1:{port}/\n", (
            "".join(lines[-20:])
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            assert json.loads(response.read())["title"] == "mllm · tiny"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_mllm_web_refuses_a_folder_without_demo_questions(tmp_path, trained_shapes, capsys):
    with pytest.raises(SystemExit) as done:
        cli(["web", "--model", str(trained_shapes.checkpoint), "--examples", str(tmp_path)])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/test/questions.jsonl: not found" in err
    assert f"mllm demo-data {tmp_path}" in err
