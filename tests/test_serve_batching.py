"""``mllm serve`` under load: batched answers equal one-by-one answers, a full queue gets 503,
slow requests time out, and a client that leaves frees its place and stops its row."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace

import openai
import pytest
from test_serve import NAME, _client, _data_url, _messages, running

from mllm.serve.openai_api import ServerLimits
from mllm.serve.settings import BatchSettings, ServeSettings

TEXT = [{"role": "user", "content": "Describe the picture."}]


def _settings(**batching) -> ServeSettings:
    return ServeSettings(model_name=NAME, batching=BatchSettings(**batching))


def _wait_until(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not get there in time"
        time.sleep(0.02)


def _ask(client: openai.OpenAI, body: dict) -> str:
    """The answer's text, streamed or not as ``body`` says."""
    response = client.chat.completions.create(**body)
    if body.get("stream"):
        return "".join(c.choices[0].delta.content or "" for c in response if c.choices)
    return response.choices[0].message.content


def _ask_at_once(server, bodies: list[dict]) -> list[str]:
    """Send ``bodies`` together, from threads sharing one client (its pool opens a connection
    per request in flight)."""
    client = _client(server)
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: _ask(client, body), bodies))


def _bodies(trained_shapes) -> list[dict]:
    """Eight greedy requests of different lengths (so the batch is padded), half streamed."""
    questions = [_messages(_data_url(q.image), q.text) for q in trained_shapes.held_out[:6]] + [
        TEXT,
        [{"role": "user", "content": "What is in this picture, and what colour is it?"}],
    ]
    return [
        {"model": NAME, "messages": m, "temperature": 0, "max_tokens": 16, "stream": i % 2 == 1}
        for i, m in enumerate(questions)
    ]


@pytest.mark.parametrize("model", ["loaded", "untrained"])
def test_eight_requests_at_once_get_the_answers_they_get_one_by_one(model, trained_shapes, request):
    loaded = request.getfixturevalue(model)
    bodies = _bodies(trained_shapes)
    with running(loaded, _settings(max_batch=1)) as server:
        client = _client(server)
        alone = [_ask(client, body) for body in bodies]
        assert server.batcher.stats().batch_sizes == {1: 8}
    if model == "loaded":  # the trained model answers the image questions right
        assert alone[:6] == [q.answer for q in trained_shapes.held_out[:6]]
    with running(loaded, _settings(max_batch=8, window_s=5.0)) as server:
        together = _ask_at_once(server, bodies)
        assert server.batcher.stats().batch_sizes == {8: 1}  # one generate call
    assert together == alone


def test_requests_that_sample_differently_do_not_share_a_call(loaded, trained_shapes):
    body = _bodies(trained_shapes)[0]
    bodies = [body, {**body, "max_tokens": 8}, {**body, "temperature": 1.0, "seed": 1}, body]
    with running(loaded, _settings(max_batch=8, window_s=1.0)) as server:
        answers = _ask_at_once(server, bodies)
        assert server.batcher.stats().batch_sizes == {2: 1, 1: 2}
    assert answers[0] == answers[1] == answers[3] == trained_shapes.held_out[0].answer


def test_over_max_queue_a_request_gets_503_with_retry_after(loaded, trained_shapes):
    body = _bodies(trained_shapes)[0]
    settings = _settings(max_batch=8, window_s=1.0, max_queue=2)
    with running(loaded, settings) as server, ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(_ask, _client(server), body) for _ in range(2)]
        _wait_until(lambda: server.batcher.stats().waiting == 2)
        with pytest.raises(openai.InternalServerError) as raised:
            _ask(_client(server), body)
        assert [w.result() for w in waiting] == [trained_shapes.held_out[0].answer] * 2
    assert raised.value.status_code == 503 and "--max-queue" in raised.value.message
    assert int(raised.value.response.headers["Retry-After"]) >= 1


@contextmanager
def slowed(loaded) -> Iterator[None]:
    """Each forward pass of ``loaded``'s LLM takes 5 ms more, so that a 900-token answer lasts
    seconds on any machine (the tests below must act while it runs)."""
    hook = loaded.built.model.llm.register_forward_hook(lambda *_: time.sleep(0.005))
    try:
        yield
    finally:
        hook.remove()


def test_a_request_over_its_timeout_gets_504_and_stops(loaded, untrained, trained_shapes):
    # Waiting: the batch window outlasts the timeout.
    settings = replace(_settings(max_batch=8, window_s=60.0), request_timeout_s=0.5)
    with running(loaded, settings) as server:
        for body in _bodies(trained_shapes)[:2]:  # plain and streamed
            with pytest.raises(openai.APIStatusError, match="--request-timeout") as raised:
                _ask(_client(server), body)
            assert raised.value.status_code == 504
        assert server.batcher.stats().waiting == 0
    # Streaming: the answer outlasts the timeout; the stream ends with an error event. Each
    # forward pass is slowed to 5 ms so that 900 tokens take seconds on any machine.
    limits = ServerLimits(max_new_tokens=900)
    settings = replace(_settings(max_batch=2, window_s=0), limits=limits, request_timeout_s=0.5)
    with slowed(untrained), running(untrained, settings) as server:
        body = {"model": NAME, "messages": TEXT, "max_tokens": 900, "stream": True}
        with pytest.raises(openai.APIError, match="--request-timeout"):
            _ask(_client(server), body)
        _wait_until(lambda: server.batcher.stats().generating == 0)
        assert server.batcher.stats().completion_tokens < 900


def _post_raw(server, body: dict) -> http.client.HTTPConnection:
    """Send a request and leave its answer unread; close the connection to leave."""
    host, port = server.url.removeprefix("http://").removesuffix("/v1").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps(body).encode())
    return connection


def test_a_client_that_leaves_frees_its_place_and_stops_its_row(loaded, untrained):
    limits = ServerLimits(max_new_tokens=900)
    settings = replace(_settings(max_batch=2, window_s=0), limits=limits)
    with slowed(untrained), running(untrained, settings) as server:
        # Leaving mid-stream stops the generation (900 tokens would take seconds).
        body = {"model": NAME, "messages": TEXT, "max_tokens": 900, "stream": True}
        chunks = _client(server).chat.completions.create(**body)
        for count, _ in enumerate(chunks):
            if count == 2:
                break
        chunks.close()
        _wait_until(lambda: server.batcher.stats().generating == 0)
        assert server.batcher.stats().completion_tokens < 900
        answer = _client(server).chat.completions.create(model=NAME, messages=TEXT, max_tokens=4)
        assert answer.usage.completion_tokens == 4
    # Leaving while queued (here: in a long batch window) frees the place in the queue.
    with running(loaded, _settings(max_batch=8, window_s=60.0, max_queue=1)) as server:
        body = {"model": NAME, "messages": TEXT, "max_tokens": 4}
        leaving = _post_raw(server, body)
        _wait_until(lambda: server.batcher.stats().waiting == 1)
        with pytest.raises(openai.InternalServerError, match="--max-queue"):
            _ask(_client(server), body)
        leaving.close()
        _wait_until(lambda: server.batcher.stats().waiting == 0)
        staying = _post_raw(server, body)  # taken, not refused: the place is free again
        _wait_until(lambda: server.batcher.stats().waiting == 1)
        staying.close()
