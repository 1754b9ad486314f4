"""Structural checks of one LLaVA record, shared by training (``ConversationDataset``) and
``mllm data check``, so both call the same record bad for the same reason.

:func:`check_record` returns either a :class:`RecordProblem` (a short ``kind`` for summaries,
the field and a reason) or the record's image paths and rendered text. It reads no files:
image files are checked when loaded (training) or by the checker's image pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mllm.data.conversation import ASSISTANT_ROLES, USER_ROLES, ConversationError
from mllm.data.images import unsafe_path_reason
from mllm.data.templates import Template
from mllm.data.tokenize import render_text

#: Every kind :func:`check_record` reports, with what it means (for ``--help`` and docs).
RECORD_KINDS: dict[str, str] = {
    "json_syntax": "a line of a .jsonl file is not valid JSON",
    "not_an_object": "the record is not a JSON object",
    "bad_image_field": "'image' is not a path or a list of paths",
    "image_path_unsafe": "an image path is absolute or contains '..'",
    "missing_field": "no 'conversations', or a turn without 'from'/'value'",
    "wrong_type": "'conversations' is not a list, a turn is not an object, or a value is "
    "not a string",
    "empty_conversation": "'conversations' has no human/gpt turns",
    "unknown_role": "a turn's 'from' is not human/user, gpt/assistant or system",
    "misplaced_system": "a system turn after the first turn",
    "role_order": "roles do not alternate human/gpt from human, or the last is not gpt",
    "empty_turn": "a human turn with no text and no image, or an empty gpt reply",
    "image_marker_mismatch": "the number of image markers differs from the number of images",
    "image_marker_in_reply": "an image marker inside a gpt reply",
    "template_mismatch": "the template cannot render the conversation",
}


@dataclass(frozen=True, slots=True)
class InvalidJson:
    """Stands in for a ``.jsonl`` line that does not parse, so later records keep their index."""

    line: int
    column: int
    message: str


@dataclass(frozen=True, slots=True)
class RecordProblem:
    """Why a record cannot be trained on: ``kind`` (a key of :data:`RECORD_KINDS`)."""

    kind: str
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class CheckedRecord:
    """A structurally valid record: its image paths and, with a template, its rendering."""

    images: list[str]
    rendered: tuple[str, list[tuple[int, int]]] | None


def check_record(
    record: Any, *, image_token: str, template: Template | None = None
) -> CheckedRecord | RecordProblem:
    """Check a record's fields, roles, turns and image markers; render it with ``template``.

    Args:
        record: one parsed JSON value from a data file.
        image_token: the image marker.
        template: render with it (the text training tokenizes); ``None`` checks the
            structure only.

    Returns:
        The image paths and rendering, or the first problem found.
    """
    if isinstance(record, InvalidJson):
        return RecordProblem(
            "json_syntax",
            "record",
            f"line {record.line} column {record.column}: invalid JSON: {record.message}",
        )
    if type(record) is not dict and not isinstance(record, Mapping):  # dict: the fast path
        return RecordProblem("not_an_object", "record", f"a {type(record).__name__}, not an object")
    images = _images(record)
    if isinstance(images, RecordProblem):
        return images
    conversation = record.get("conversations")
    if conversation is None:
        return RecordProblem("missing_field", "conversations", "the record has no 'conversations'")
    if not isinstance(conversation, list):
        return RecordProblem(
            "wrong_type",
            "conversations",
            f"expected a list of turns, got {type(conversation).__name__}",
        )
    problem = _check_turns(conversation)
    if problem is not None:
        return problem
    try:
        turns = place_image_markers(conversation, len(images), image_token)
    except ConversationError as err:
        return RecordProblem("image_marker_mismatch", "conversations", str(err))
    problem = _check_empty(turns)
    if problem is not None:
        return problem
    if template is None:
        return CheckedRecord(images, None)
    try:
        rendered = render_text(turns, template, image_token=image_token)
    except ConversationError as err:
        kind = "image_marker_in_reply" if "inside a gpt reply" in str(err) else "template_mismatch"
        return RecordProblem(kind, "conversations", str(err))
    return CheckedRecord(images, rendered)


def place_image_markers(
    conversation: Sequence[Mapping[str, Any]], num_images: int, image_token: str
) -> list[dict[str, Any]]:
    """Put image markers where LLaVA puts them (see the module docstring); returns a copy.

    Raises:
        ConversationError: if the number of markers differs from ``num_images``.
    """
    # A new list; only the turn whose marker moves is copied (the input is never modified).
    # Non-dict turns are kept as they are; the template's validation reports them.
    turns: list[Any] = list(conversation)
    count = 0
    for turn in turns:
        value = turn.get("value") if isinstance(turn, Mapping) else None
        if isinstance(value, str):
            count += value.count(image_token)
    if num_images == 1 and not count:
        first_human = next(
            (
                i
                for i, turn in enumerate(turns)
                if isinstance(turn, Mapping) and str(turn.get("from", "")).lower() != "system"
            ),
            None,
        )
        if first_human is not None and isinstance(turns[first_human].get("value"), str):
            value = turns[first_human]["value"]
            turns[first_human] = {**turns[first_human], "value": f"{image_token}\n{value}"}
            count = 1
    elif num_images == 1 and count == 1:
        for i, turn in enumerate(turns):
            value = turn.get("value") if isinstance(turn, Mapping) else None
            if isinstance(value, str) and image_token in value:
                moved = f"{image_token}\n{value.replace(image_token, '').strip()}"
                turns[i] = {**turn, "value": moved}
    if count != num_images:
        raise ConversationError(
            f"the conversation has {count} {image_token!r} markers but the record has "
            f"{num_images} image(s)"
        )
    return turns


def _images(record: Mapping[str, Any]) -> list[str] | RecordProblem:
    image = record.get("image")
    if image is None:
        return []
    paths = [image] if isinstance(image, str) else image
    if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
        return RecordProblem(
            "bad_image_field", "image", f"must be a path or a list of paths, got {image!r}"
        )
    for path in paths:
        reason = unsafe_path_reason(path)
        if reason is not None:
            kind = "bad_image_field" if not path.strip() else "image_path_unsafe"
            return RecordProblem(kind, "image", reason)
    return paths


def _check_turns(conversation: list[Any]) -> RecordProblem | None:
    """Types, roles and order, mirroring ``conversation.parse_conversation`` with kinds."""
    expected = "user"
    body = 0
    for index, turn in enumerate(conversation):
        field = f"conversations[{index}]"
        if type(turn) is not dict and not isinstance(turn, Mapping):
            return RecordProblem("wrong_type", field, f"a {type(turn).__name__}, not an object")
        for key in ("from", "value"):
            if key not in turn:
                return RecordProblem("missing_field", field, f"the turn has no {key!r}")
            if not isinstance(turn[key], str):
                return RecordProblem(
                    "wrong_type",
                    f"{field}.{key}",
                    f"a {type(turn[key]).__name__}, not a string",
                )
        role = turn["from"].lower()
        if role == "system":
            if index != 0:
                return RecordProblem(
                    "misplaced_system", field, f"turn {index} is a system turn; only turn 0 may be"
                )
            continue
        if role in USER_ROLES:
            actual = "user"
        elif role in ASSISTANT_ROLES:
            actual = "assistant"
        else:
            return RecordProblem(
                "unknown_role",
                f"{field}.from",
                f"unknown role {turn['from']!r}; use human/user, gpt/assistant or system",
            )
        if actual != expected:
            wanted = "human" if expected == "user" else "gpt"
            return RecordProblem(
                "role_order",
                f"{field}.from",
                f"turn {index} is from {turn['from']!r} but a {wanted!r} turn was expected "
                "(roles alternate human/gpt, starting with human)",
            )
        expected = "assistant" if actual == "user" else "user"
        body += 1
    if not body:
        return RecordProblem("empty_conversation", "conversations", "no human/gpt turns")
    if expected == "assistant":
        return RecordProblem(
            "role_order", "conversations", "the last turn is from human; it has no reply to learn"
        )
    return None


def _check_empty(turns: list[dict[str, Any]]) -> RecordProblem | None:
    """A human turn with neither text nor image, or a blank gpt reply."""
    for index, turn in enumerate(turns):
        role = turn["from"].lower()
        value = turn["value"]
        if role in ASSISTANT_ROLES and not value.strip():
            return RecordProblem(
                "empty_turn", f"conversations[{index}].value", "the gpt reply is empty"
            )
        if role in USER_ROLES and not value.strip():  # an image marker counts as content
            return RecordProblem(
                "empty_turn", f"conversations[{index}].value", "the human turn is empty"
            )
    return None
