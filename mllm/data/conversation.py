"""LLaVA-format conversations: the roles, their order, and the exchanges they pair into.

A conversation is a list of ``{"from": ..., "value": ...}`` turns with roles ``human``/``gpt``
(``user``/``assistant`` are accepted too) alternating from ``human``; a leading ``system`` turn
replaces a template's default system prompt (an empty one removes it). What makes a
conversation well formed does not depend on any chat format, and more than templates need to
know it (validating a run's held-out records, the chat and serving front ends), so it is
parsed here once and templates render the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

USER_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "assistant"})
SYSTEM_ROLE = "system"


class ConversationError(ValueError):
    """A conversation that no template can render: bad roles, order, or types."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One user turn and the assistant reply to it (``None`` while it is being generated)."""

    user: str
    assistant: str | None


@dataclass(frozen=True, slots=True)
class ParsedConversation:
    """A validated conversation: the system override (``None`` = default) and its exchanges."""

    system: str | None
    exchanges: tuple[Exchange, ...]


def parse_conversation(
    conversation: Sequence[Mapping[str, Any]], *, for_generation: bool = False
) -> ParsedConversation:
    """Check roles and types and pair turns into exchanges.

    Args:
        conversation: LLaVA turns, ``{"from": role, "value": text}``.
        for_generation: the conversation must end with a user turn (the one to answer)
            instead of an assistant reply.

    Returns:
        The system override and the exchanges; the last exchange's ``assistant`` is ``None``
        when ``for_generation``.

    Raises:
        ConversationError: for a non-list, a turn without a string ``from``/``value``, an
            unknown role, a system turn after the first, roles that do not alternate
            human/gpt from human, or the wrong final role.
    """
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
        raise ConversationError(
            f"a conversation is a list of turns, got {type(conversation).__name__}"
        )
    turns: list[tuple[str, str]] = []
    for index, turn in enumerate(conversation):
        if not isinstance(turn, Mapping):
            raise ConversationError(f"turn {index} is a {type(turn).__name__}, not a dict")
        for key in ("from", "value"):
            if key not in turn:
                raise ConversationError(f"turn {index} has no {key!r} key")
            if not isinstance(turn[key], str):
                raise ConversationError(
                    f"turn {index} {key!r} is a {type(turn[key]).__name__}, not a string"
                )
        role = turn["from"].lower()
        if role in USER_ROLES:
            turns.append(("user", turn["value"]))
        elif role in ASSISTANT_ROLES:
            turns.append(("assistant", turn["value"]))
        elif role == SYSTEM_ROLE:
            if index != 0:
                raise ConversationError(f"turn {index} is a system turn; only turn 0 may be one")
            turns.append(("system", turn["value"]))
        else:
            raise ConversationError(
                f"turn {index} has unknown role {turn['from']!r}; use human/user, "
                "gpt/assistant, or system (first turn only)"
            )

    system = None
    offset = 0
    if turns and turns[0][0] == "system":
        system = turns[0][1]
        offset = 1
    body = turns[offset:]
    if not body:
        raise ConversationError("the conversation has no human/gpt turns")
    for position, (role, _) in enumerate(body):
        expected = "user" if position % 2 == 0 else "assistant"
        if role != expected:
            wanted = "human" if expected == "user" else "gpt"
            raise ConversationError(
                f"turn {position + offset} is from {conversation[position + offset]['from']!r} "
                f"but a {wanted!r} turn was expected: roles must alternate human/gpt, "
                "starting with human (after an optional system turn)"
            )
    last = body[-1][0]
    if for_generation and last != "user":
        raise ConversationError("a generation prompt needs a conversation that ends with human")
    if not for_generation and last != "assistant":
        raise ConversationError(
            "a training conversation must end with a gpt turn (a final human turn has no reply "
            "to learn)"
        )
    exchanges = tuple(
        Exchange(body[i][1], body[i + 1][1] if i + 1 < len(body) else None)
        for i in range(0, len(body), 2)
    )
    return ParsedConversation(system, exchanges)
