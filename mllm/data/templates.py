"""Conversation templates: how a LLaVA conversation becomes text, and which parts are trained.

A template renders a conversation into :class:`Segment` s; ``is_target`` marks exactly the text
that gets labels, so label masking is decided on characters here and mapped to tokens once, in
``tokenize.py``. The labelling rule: **the target of an exchange is everything the model must
write after its generation prompt** -- the separator between the assistant header and the
reply (Vicuna's space after ``"ASSISTANT:"``), the reply, and the end-of-turn text
(``"</s>"``, ``"<|eot_id|>"``, ``"<|im_end|>"``, ``"###"``, plain's ``"\n"``), which is trained
so the model learns to stop. Untrained: the system prompt, user turns, assistant headers and
scaffolding after the end-of-turn (ChatML's newline). Counting the separator in is what makes
a tokenizer's lone ``'▁'`` before ``"2"`` or a byte-fallback word a target: generation stops
at ``"ASSISTANT:"``, so that ``'▁'`` is the first token the model has to produce.

BOS: no template writes a BOS token, even where the family's own chat template starts with
one (Llama-3, Gemma, Mistral): their tokenizers add it when called with
``add_special_tokens=True`` (Llama/Vicuna/Mistral ``<s>``, Llama-3 ``<|begin_of_text|>``,
Gemma ``<bos>``; Qwen and Phi-3 add none and their templates write none), so writing it here
would double it. ``tokenize.py`` rejects a doubled BOS.

Conversations use LLaVA's format, parsed by ``mllm.data.conversation``: ``human``/``gpt`` turns
alternating from ``human``, after an optional ``system`` turn that replaces the template's
default system prompt (an empty one removes it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mllm.data.conversation import ConversationError, ParsedConversation, parse_conversation
from mllm.registry import Registry

DEFAULT_IMAGE_TOKEN = "<image>"


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of rendered text; ``is_target`` pieces get labels, the rest get -100."""

    text: str
    is_target: bool


@dataclass(frozen=True)
class Template:
    """A chat format, described by its literal pieces.

    Rendering is ``system_format`` (if a system prompt is set), then per exchange
    ``user_format``, ``assistant_prefix``, the reply + ``assistant_end`` (the trained part)
    and ``assistant_suffix``. A generation prompt ends with ``generation_prefix`` instead.

    Attributes:
        name: the registry name recipes use.
        system_format: ``{system}`` is replaced by the system prompt; ``""`` means the
            format has no system prompt (a system turn is then an error).
        user_format: ``{content}`` is replaced by the user's text.
        assistant_prefix: the assistant header before each reply; the part of it after
            ``generation_prefix`` (a separator the model writes itself) is trained.
        assistant_end: the end-of-turn text after each reply; trained with the reply, so the
            model learns to stop.
        assistant_suffix: untrained text after ``assistant_end`` (ChatML's newline).
        generation_prefix: what a generation prompt ends with; ``None`` = ``assistant_prefix``.
            Vicuna differs: training has ``"ASSISTANT: "`` + reply, but a prompt ending in a
            space would tokenize the space on its own, unlike in training.
        default_system: system prompt used when the conversation gives none.
        system_always: write ``system_format`` even when the system prompt is empty
            (Llama-3.1's block with its date lines is always there).
        system_in_first_user: the formatted system prompt goes at the start of the first
            user message instead of before it (Gemma-3 has no system turn).
        strip_content: strip whitespace around user and assistant messages (Llama-3 and
            Gemma trim them).
        strip_system: strip whitespace around the system prompt (Llama-3 does, Gemma-3 not).
        conversation_end: untrained text after the last reply of a training conversation
            (Phi-3's template ends a finished conversation with its EOS token); never part
            of a generation prompt.
        caption_only: LLaVA pretraining (``plain``): exactly one exchange; the human turn is
            reduced to its image markers and only the caption is trained.
        stop_strings: strings that end generation.
        special_tokens: strings that must be single tokens of the tokenizer; the model builder
            adds the ones a tokenizer lacks.
    """

    name: str
    system_format: str
    user_format: str
    assistant_prefix: str
    assistant_end: str
    assistant_suffix: str = ""
    generation_prefix: str | None = None
    default_system: str = ""
    system_always: bool = False
    system_in_first_user: bool = False
    strip_content: bool = False
    strip_system: bool = False
    conversation_end: str = ""
    caption_only: bool = False
    stop_strings: tuple[str, ...] = ()
    special_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.assistant_prefix.startswith(self.header):
            raise ValueError(
                f"template {self.name!r}: generation_prefix {self.generation_prefix!r} must be "
                f"a prefix of assistant_prefix {self.assistant_prefix!r}, so that a generation "
                "prompt is a prefix of the training text"
            )

    @property
    def header(self) -> str:
        """The untrained assistant header: what a generation prompt ends with."""
        return self.assistant_prefix if self.generation_prefix is None else self.generation_prefix

    def render(
        self,
        conversation: Sequence[Mapping[str, Any]],
        *,
        image_token: str = DEFAULT_IMAGE_TOKEN,
    ) -> list[Segment]:
        """Render a training conversation (ending with a gpt turn) into segments.

        Args:
            conversation: LLaVA turns.
            image_token: the image marker (only ``caption_only`` templates look for it).

        Returns:
            Non-empty segments in order; adjacent segments never share ``is_target``.

        Raises:
            ConversationError: see :func:`parse_conversation`; also for a ``caption_only``
                template given anything but one exchange with an image marker, or a system
                turn for a template without a system prompt.
        """
        parsed = self._parse(conversation, image_token, for_generation=False)
        segments = self._prefix_segments(parsed, image_token)
        return _merge([*segments, Segment(self.conversation_end, False)])

    def generation_prompt(
        self,
        conversation: Sequence[Mapping[str, Any]],
        *,
        image_token: str = DEFAULT_IMAGE_TOKEN,
    ) -> str:
        """Render a conversation that ends with a human turn, up to the assistant header.

        Raises:
            ConversationError: as :meth:`render`, with the final turn from human instead.
        """
        parsed = self._parse(conversation, image_token, for_generation=True)
        segments = self._prefix_segments(parsed, image_token)
        return "".join(segment.text for segment in segments)

    def _parse(
        self, conversation: Sequence[Mapping[str, Any]], image_token: str, *, for_generation: bool
    ) -> ParsedConversation:
        parsed = parse_conversation(conversation, for_generation=for_generation)
        if parsed.system is not None and not self.system_format:
            raise ConversationError(f"the {self.name!r} template has no system prompt")
        if self.caption_only:
            if len(parsed.exchanges) != 1:
                raise ConversationError(
                    f"the {self.name!r} template takes exactly one human turn and one gpt "
                    f"turn (an image and its caption), got {len(parsed.exchanges)} exchanges"
                )
            if image_token not in parsed.exchanges[0].user:
                raise ConversationError(
                    f"the {self.name!r} template needs {image_token!r} in the human turn"
                )
        return parsed

    def _prefix_segments(self, parsed: ParsedConversation, image_token: str) -> list[Segment]:
        """Segments for all exchanges; an unanswered last exchange ends with the prompt."""
        segments: list[Segment] = []
        system = self.default_system if parsed.system is None else parsed.system
        if self.strip_system:
            system = system.strip()
        system_text = ""
        if self.system_format and (system or self.system_always):
            system_text = self.system_format.format(system=system)
        if not self.system_in_first_user:
            segments.append(Segment(system_text, False))
        for index, exchange in enumerate(parsed.exchanges):
            user = exchange.user
            if self.caption_only:
                # LLaVA pretraining drops the prompt text and keeps only the image.
                user = image_token * user.count(image_token)
            elif self.strip_content:
                user = user.strip()
            if self.system_in_first_user and index == 0:
                user = system_text + user
            segments.append(Segment(self.user_format.format(content=user), False))
            segments.append(Segment(self.header, False))
            if exchange.assistant is None:
                break
            reply = exchange.assistant.strip() if self.strip_content else exchange.assistant
            separator = self.assistant_prefix[len(self.header) :]
            segments.append(Segment(separator + reply + self.assistant_end, True))
            segments.append(Segment(self.assistant_suffix, False))
        return segments


def _merge(segments: list[Segment]) -> list[Segment]:
    """Drop empty segments and join neighbours with the same ``is_target``."""
    merged: list[Segment] = []
    for segment in segments:
        if not segment.text:
            continue
        if merged and merged[-1].is_target == segment.is_target:
            merged[-1] = Segment(merged[-1].text + segment.text, segment.is_target)
        else:
            merged.append(segment)
    return merged


TEMPLATES: Registry[Template] = Registry("conversation template")


def _register(template: Template) -> Template:
    return TEMPLATES.register(template.name)(template)


# LLaVA-1.5 pretraining (conv_llava_plain + preprocess_plain): "<image>" + caption + "\n".
PLAIN = _register(
    Template(
        name="plain",
        system_format="",
        user_format="{content}",
        assistant_prefix="",
        assistant_end="\n",
        caption_only=True,
        stop_strings=("\n",),
    )
)

# LLaVA-1.5 instruction tuning (conv_vicuna_v1, SeparatorStyle.TWO, sep " ", sep2 "</s>"):
# "SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>"; LLaVA's prompt ends "ASSISTANT:".
VICUNA_V1 = _register(
    Template(
        name="vicuna_v1",
        system_format="{system} ",
        user_format="USER: {content} ",
        assistant_prefix="ASSISTANT: ",
        assistant_end="</s>",
        generation_prefix="ASSISTANT:",
        default_system=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        stop_strings=("</s>",),
        special_tokens=("</s>",),
    )
)

# MiniGPT-4's conversation (CONV_VISION): "SYSTEM###Human: <image> q###Assistant: a###".
MINIGPT4 = _register(
    Template(
        name="minigpt4",
        system_format="{system}###",
        user_format="Human: {content}###",
        assistant_prefix="Assistant: ",
        assistant_end="###",
        generation_prefix="Assistant:",
        default_system=(
            "Give the following image: <Img>ImageContent</Img>. You will be able to see the "
            "image once I provide it to you. Please answer my questions."
        ),
        stop_strings=("###",),
    )
)


# mPLUG-Owl2's conversation (conv_mplug_owl2, SeparatorStyle.TWO_NO_SYS, sep " ", sep2 "</s>"):
# vicuna_v1's turns without a system prompt: "USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:".
MPLUG_OWL2 = _register(
    Template(
        name="mplug_owl2",
        system_format="",
        user_format="USER: {content} ",
        assistant_prefix="ASSISTANT: ",
        assistant_end="</s>",
        generation_prefix="ASSISTANT:",
        stop_strings=("</s>",),
        special_tokens=("</s>",),
    )
)


def get_template(name: str) -> Template:
    """The template registered as ``name``.

    Raises:
        UnknownComponentError: for an unknown name; the message lists the choices.
    """
    return TEMPLATES.get(name).target


# Modules that register more templates; they import this one, so they come last.
from mllm.data import (  # noqa: E402
    family_templates,  # noqa: F401  (today's LLM families' chat formats)
    minigpt_v2,  # noqa: F401  (MiniGPT-v2's task-identifier template)
)
