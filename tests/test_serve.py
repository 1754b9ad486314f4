"""``mllm serve``: the real ``openai`` client against a trained tiny model on loopback."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import openai
import pytest
from PIL import Image
from trained_shapes import answer_targets

from mllm.serve.openai_api import ServerLimits
from mllm.serve.server import ModelServer
from mllm.serve.settings import ServeSettings

NAME = "tiny-shapes"


@contextmanager
def running(loaded, settings: ServeSettings) -> Iterator[ModelServer]:
    with ModelServer(loaded, settings, host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture(scope="module")
def server(loaded) -> Iterator[ModelServer]:
    with running(loaded, ServeSettings(model_name=NAME)) as server:
        yield server


def _client(server: ModelServer, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=api_key, max_retries=0, timeout=60)


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _messages(image_url: str, text: str) -> list[dict]:
    """Image first, then the question: the order the model was trained with."""
    content = [
        {"type": "image_url", "image_url": {"url": image_url}},
        {"type": "text", "text": text},
    ]
    return [{"role": "user", "content": content}]


def test_the_client_gets_correct_answers_plain_and_streamed(server, loaded, trained_shapes):
    client = _client(server)
    assert [m.id for m in client.models.list()] == [NAME]
    for question in trained_shapes.held_out[:4]:
        messages = _messages(_data_url(question.image), question.text)
        response = client.chat.completions.create(model=NAME, messages=messages, temperature=0)
        choice = response.choices[0]
        assert choice.message.content == question.answer
        assert choice.finish_reason == "stop" and choice.message.role == "assistant"
        # The answer's tokens and </s>: exactly what training labels for it.
        targets = answer_targets(loaded, question, question.answer)
        assert response.usage.completion_tokens == len(targets)
        chunks = list(
            client.chat.completions.create(
                model=NAME,
                messages=messages,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == question.answer
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage == response.usage
        assert len({c.id for c in chunks}) == 1


def test_the_stream_ends_with_done_and_sampling_takes_a_seed(server, trained_shapes):
    question = trained_shapes.held_out[0]
    body = {
        "model": NAME,
        "messages": _messages(_data_url(question.image), question.text),
        "stream": True,
        "temperature": 1.0,
        "seed": 3,
    }
    request = urllib.request.Request(
        f"{server.url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    client = _client(server)
    messages = [{"role": "user", "content": "Describe the picture."}]
    answers = {
        client.chat.completions.create(
            model=NAME, messages=messages, temperature=1.5, seed=11, max_tokens=8
        )
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(answers) == 1


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"model": "gpt-4o"}, 404, "model 'gpt-4o' is not served here"),
        ({"n": 2}, 400, "n=2 is not supported"),
        ({"max_tokens": 100000}, 400, "max_tokens must be an integer from 1 to 512"),
        ({"temperature": -1}, 400, "temperature must be a number from 0.0 to 2.0"),
        ({"messages": []}, 400, "messages must be a non-empty list"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role is 'tool'"),
        (
            {"messages": [{"role": "assistant", "content": "red"}]},
            400,
            "messages[0]: the conversation must start with a user message",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hi"},
                ]
            },
            400,
            "the last message must be from the user",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be"}]},
            400,
            "messages[1]: system messages may only come first",
        ),
        (
            {"messages": [{"role": "user", "content": "<image> what?"}]},
            400,
            "messages[0].content: the text contains '<image>'",
        ),
        (
            {"messages": _messages("https://example.com/a.png", "What?")},
            400,
            "this server does not download images",
        ),
        ({"messages": _messages("/etc/hostname", "What?")}, 400, "--allow-local-images FOLDER"),
        (
            {"messages": _messages("data:image/png;base64,bm90IGEgcG5n", "What?")},
            400,
            "messages[0].content[0]: not a readable image",
        ),
    ],
)
def test_bad_requests_get_openai_style_errors(server, trained_shapes, change, status, message):
    question = trained_shapes.held_out[0]
    body = {"model": NAME, "messages": _messages(_data_url(question.image), question.text)}
    with pytest.raises(openai.APIStatusError) as raised:
        _client(server).chat.completions.create(**{**body, **change})
    assert raised.value.status_code == status
    error = raised.value.body
    assert message in error["message"], error
    assert error["type"] == "invalid_request_error"


def _raw(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_unknown_endpoints_bad_json_and_size_limits(loaded):
    limits = replace(ServerLimits(), max_image_pixels=1000)
    settings = ServeSettings(model_name=NAME, limits=limits, max_request_bytes=2000)
    with running(loaded, settings) as server:
        root = server.url.removesuffix("/v1")
        assert _raw(f"{root}/health") == (200, {"status": "ok"})
        status, body = _raw(f"{server.url}/embeddings", "POST", b"{}")
        assert status == 404 and "no such endpoint: POST /v1/embeddings" in body["error"]["message"]
        status, body = _raw(f"{server.url}/chat/completions")
        assert status == 405
        status, body = _raw(f"{server.url}/chat/completions", "POST", b"{not json")
        assert status == 400 and "not valid JSON" in body["error"]["message"]
        status, body = _raw(f"{server.url}/chat/completions", "POST", b" " * 2001)
        assert status == 413 and "over this server's limit of 2000" in body["error"]["message"]
        big = "data:image/png;base64," + base64.b64encode(_png(40, 30)).decode()
        with pytest.raises(openai.APIStatusError) as raised:
            _client(server).chat.completions.create(model=NAME, messages=_messages(big, "What?"))
        assert raised.value.status_code == 413
        assert "40x30 = 1200 pixels, over this server's limit of 1000" in raised.value.message
        assert _raw(f"{server.url}/models/{NAME}")[1]["id"] == NAME


def test_local_images_only_inside_the_allowed_folder(loaded, trained_shapes, tmp_path):
    question = trained_shapes.held_out[0]
    folder = trained_shapes.image_folder
    limits = replace(ServerLimits(), local_image_folder=folder)
    with running(loaded, ServeSettings(model_name=NAME, limits=limits)) as server:
        client = _client(server)
        relative = str(question.image.relative_to(folder))
        for url in (relative, str(question.image), question.image.as_uri()):
            response = client.chat.completions.create(
                model=NAME, messages=_messages(url, question.text), temperature=0
            )
            assert response.choices[0].message.content == question.answer
        outside = tmp_path / "outside.png"
        outside.write_bytes(_png(32, 32))
        for url in (str(outside), f"../../{outside.name}", outside.as_uri()):
            with pytest.raises(openai.BadRequestError, match="image folder"):
                client.chat.completions.create(model=NAME, messages=_messages(url, "What?"))


def test_an_api_key_is_required_when_set(loaded):
    with running(loaded, ServeSettings(model_name=NAME, api_key="sesame")) as server:
        with pytest.raises(openai.AuthenticationError):
            _client(server, "wrong").models.list()
        assert [m.id for m in _client(server, "sesame").models.list()] == [NAME]
