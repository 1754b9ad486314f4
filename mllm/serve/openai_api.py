"""OpenAI's chat-completions wire format: request validation in, response objects out.

A request's ``messages`` become one LLaVA-format conversation for the model's own template:
``system``/``developer`` -> system turn, ``user`` -> ``human``, ``assistant`` -> ``gpt``
(consecutive messages of one role are joined). Each ``image_url`` part of a user message becomes
an ``<image>`` marker where it stands among the text parts, and its image fills that marker.
Options the server cannot honour (``n`` > 1, tools, logprobs, penalties) are refused with a
400 that names them rather than silently ignored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mllm.inference.generate import Completion, GenerationRequest, SamplingSettings
from mllm.serve.image_input import ImageInputError, read_image_url

_ROLES = {"system": "system", "developer": "system", "user": "human", "assistant": "gpt"}
#: Options that change the answer in ways this server cannot reproduce, with their no-op values.
_UNSUPPORTED = {
    "n": (None, 1),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "audio": (None,),
}


class APIError(Exception):
    """A request the server answers with an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for.

    Attributes:
        max_new_tokens: the most tokens one answer may have (also the default).
        max_image_pixels: width x height limit per image.
        local_image_folder: the folder local image paths may point into; ``None``: no files.
    """

    max_new_tokens: int = 512
    max_image_pixels: int = 4096 * 4096
    local_image_folder: Path | None = None


@dataclass
class ChatCompletionRequest:
    """A validated request: the model's input, how to sample, and how to answer."""

    generation: GenerationRequest
    settings: SamplingSettings
    stream: bool
    include_usage: bool


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise APIError(
            400, f"{key} must be a number from {low} to {high}, got {value!r}", param=key
        )
    return float(value)


def _integer(body: dict, key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise APIError(
            400, f"{key} must be an integer from {low} to {high}, got {value!r}", param=key
        )
    return value


def _stop_strings(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > 4
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise APIError(400, "stop must be a string or a list of up to 4 strings", param="stop")
    return tuple(stops)


def _check_unsupported(body: dict) -> None:
    for key, neutral in _UNSUPPORTED.items():
        if key in body and body[key] not in neutral:
            raise APIError(400, f"{key}={body[key]!r} is not supported by this server", param=key)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise APIError(
            400, "response_format other than text is not supported", param="response_format"
        )


def _message_text(
    message: dict, where: str, image_token: str, limits: ServerLimits
) -> tuple[str, list[Image.Image]]:
    """The text of one message (images as markers) and its images in order."""
    content = message.get("content")
    if isinstance(content, str):
        parts: list = [{"type": "text", "text": content}]
    elif isinstance(content, list) and content:
        parts = content
    else:
        raise APIError(
            400, f"{where}.content must be a string or a non-empty list of parts", param=where
        )
    pieces: list[str] = []
    images: list[Image.Image] = []
    for index, part in enumerate(parts):
        at = f"{where}.content[{index}]" if isinstance(content, list) else f"{where}.content"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if image_token in part["text"]:
                raise APIError(
                    400,
                    f"{at}: the text contains {image_token!r}, the model's image marker; send "
                    "images as image_url parts",
                    param=at,
                )
            pieces.append(part["text"])
        elif kind == "image_url":
            if message["role"] != "user":
                raise APIError(400, f"{at}: only user messages may contain images", param=at)
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise APIError(400, f"{at}: image_url needs a url string", param=at)
            try:
                images.append(
                    read_image_url(
                        url,
                        at,
                        max_pixels=limits.max_image_pixels,
                        local_folder=limits.local_image_folder,
                    )
                )
            except ImageInputError as exc:
                raise APIError(exc.status, str(exc), param=at, code=exc.code) from exc
            pieces.append(image_token)
        else:
            raise APIError(
                400,
                f"{at}: unsupported content part {kind!r}; use text or image_url parts",
                param=at,
            )
    return "\n".join(pieces), images


def _conversation(
    messages: object, image_token: str, limits: ServerLimits
) -> tuple[list[dict[str, str]], list[Image.Image]]:
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    turns: list[dict[str, str]] = []
    images: list[Image.Image] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise APIError(
                400,
                f"{where}.role is {role!r}; use system, developer, user or assistant",
                param=f"{where}.role",
            )
        text, message_images = _message_text(message, where, image_token, limits)
        images += message_images
        role = _ROLES[message["role"]]
        if turns and turns[-1]["from"] == role:
            turns[-1]["value"] += f"\n\n{text}"
        elif role == "system" and turns:
            raise APIError(400, f"{where}: system messages may only come first", param=where)
        elif role == "gpt" and (not turns or turns[-1]["from"] == "system"):
            raise APIError(
                400, f"{where}: the conversation must start with a user message", param=where
            )
        else:
            turns.append({"from": role, "value": text})
    if turns[-1]["from"] != "human":
        raise APIError(
            400, "the last message must be from the user (the one to answer)", param="messages"
        )
    return turns, images


def parse_chat_request(
    body: object, *, model_name: str, image_token: str, limits: ServerLimits
) -> ChatCompletionRequest:
    """Validate a ``/v1/chat/completions`` body and read its images.

    Raises:
        APIError: 400 for anything malformed or unsupported (the message names the field),
            404 for another model's name, 413 for an image over the pixel limit.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    if body.get("model") != model_name:
        raise APIError(
            404,
            f"model {body.get('model')!r} is not served here; this server serves {model_name!r}",
            param="model",
            code="model_not_found",
        )
    _check_unsupported(body)
    turns, images = _conversation(body.get("messages"), image_token, limits)
    max_tokens = _integer(body, "max_completion_tokens", 1, limits.max_new_tokens)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, limits.max_new_tokens)
    stream = body.get("stream", False)
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise APIError(400, "stream must be true or false, stream_options an object")
    settings = SamplingSettings(
        max_new_tokens=max_tokens or limits.max_new_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
        seed=_integer(body, "seed", -(2**63), 2**63 - 1),
        stop=_stop_strings(body),
    )
    return ChatCompletionRequest(
        GenerationRequest(turns, images),
        settings,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def completion_response(
    completion: Completion, *, response_id: str, model: str, created: int
) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": usage(completion),
    }


def chunk(
    *,
    response_id: str,
    model: str,
    created: int,
    delta: dict[str, str] | None = None,
    finish_reason: str | None = None,
    usage_counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; with ``usage_counts`` the final usage-only chunk."""
    choices = (
        []
        if usage_counts is not None
        else [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    )
    body: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if usage_counts is not None:
        body["usage"] = usage_counts
    return body


def models_response(model: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(model, created)]}


def model_object(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "mllm"}


def now() -> int:
    return int(time.time())
