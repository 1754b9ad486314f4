"""``template: tokenizer``: the conversation template read off a tokenizer's own
``chat_template``.

The Jinja template is not used to render training data. It is rendered once on probe
conversations whose messages are marker words, and the text between the markers gives the
literal pieces of a :class:`Template` (user header, assistant header, end-of-turn text, system
block, default system prompt, trimming). That template then renders and labels data exactly as
a hand-written one does -- the reply and its end-of-turn token are trained, nothing else -- and
generation prompts are prefixes of training text by construction. Before it is used, the
derived template must reproduce the tokenizer's own rendering of several probe conversations
(multi-turn, with and without a system prompt, padded with whitespace, generation prompts);
a chat template with logic the pieces cannot express (a system prompt moved into the last
user turn, per-turn conditions) is refused with the first conversation that differs, so a
user names a registered template instead of training on a wrong format.

The end of a reply is the first special token of the tokenizer after it (``<|im_end|>``,
``<|eot_id|>``, ``<end_of_turn>``, ``<|end|>``, ``</s>``); the model learns to write that
token and generation stops there. A leading BOS that the template writes and the tokenizer
adds anyway is dropped, as for hand-written templates. Templates that read the date
(Llama-3.2's ``strftime_now``) get Llama-3.1's fixed ``date_string``, so text does not change
from day to day.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mllm.data.templates import Template, get_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: The template name that asks for the tokenizer's own chat template.
TOKENIZER_TEMPLATE = "tokenizer"
#: Passed to every chat template; Llama-3.1 writes it by default, Llama-3.2 writes today's date.
DATE_STRING = "26 Jul 2024"

_SYSTEM, _USER, _REPLY = "mllmSystemQ", ("mllmAskA", "mllmAskB"), ("mllmReplyA", "mllmReplyB")
_Messages = list[dict[str, str]]


class TokenizerTemplateError(ValueError):
    """A tokenizer whose chat template cannot become a mllm template; the message says why."""


def resolve_template(name: str, tokenizer: PreTrainedTokenizerBase | None) -> Template:
    """The template ``name`` names: a registered one, or ``tokenizer``'s own for ``"tokenizer"``.

    Raises:
        UnknownComponentError: for an unknown name.
        TokenizerTemplateError: ``"tokenizer"`` without a tokenizer, or for a tokenizer
            without a usable chat template.
    """
    if name != TOKENIZER_TEMPLATE:
        return get_template(name)
    if tokenizer is None:
        raise TokenizerTemplateError("template 'tokenizer' needs the model's tokenizer")
    return template_from_tokenizer(tokenizer)


def template_from_tokenizer(tokenizer: PreTrainedTokenizerBase) -> Template:
    """Derive and verify the :class:`Template` that renders like ``tokenizer.chat_template``
    (once per tokenizer, chat template and vocabulary size).

    Raises:
        TokenizerTemplateError: no chat template, or one the template pieces cannot
            reproduce (the message shows the first probe that differs).
    """
    chat_template = getattr(tokenizer, "chat_template", None)
    if not chat_template or not isinstance(chat_template, str):
        raise TokenizerTemplateError(
            f"template 'tokenizer': the tokenizer ({tokenizer.name_or_path}) has no "
            "chat_template; name a registered template instead"
        )
    return _derived(tokenizer, chat_template, len(tokenizer))


@functools.lru_cache(maxsize=16)
def _derived(tokenizer: PreTrainedTokenizerBase, chat_template: str, vocab_size: int) -> Template:
    # chat_template and vocab_size are part of the cache key: changing either derives again.
    probe = _Renderer(tokenizer)
    template = _derive(probe)
    _verify(template, probe)
    return template


class _Renderer:
    """The tokenizer's chat template on plain messages, without the BOS it adds itself."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        bos = tokenizer.bos_token
        adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
        self.bos = bos if adds_bos else None
        added = getattr(tokenizer, "added_tokens_decoder", {}).values()
        specials = {*tokenizer.all_special_tokens, *(t.content for t in added if t.special)}
        self.specials = tuple(sorted(specials, key=len, reverse=True))

    def __call__(self, messages: _Messages, *, generation: bool = False) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation, date_string=DATE_STRING
        )
        if self.bos and text.startswith(self.bos):
            text = text[len(self.bos) :]
        return text

    def renders(self, messages: _Messages) -> bool:
        """Whether the template accepts ``messages`` (Gemma-2 rejects a system turn)."""
        from jinja2 import TemplateError

        try:
            self(messages)
        except TemplateError:
            return False
        return True

    def first_special(self, text: str) -> tuple[int, str] | None:
        """The earliest special token in ``text`` (the longest at that position)."""
        found = [(text.find(token), token) for token in self.specials if token in text]
        return min(found, key=lambda hit: (hit[0], -len(hit[1]))) if found else None


def _turns(system: str | None, *pairs: tuple[str, str | None]) -> _Messages:
    messages = [] if system is None else [{"role": "system", "content": system}]
    for user, reply in pairs:
        messages.append({"role": "user", "content": user})
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
    return messages


def _split(text: str, markers: Sequence[str]) -> list[str]:
    """``text`` cut at ``markers`` in order: the len(markers) + 1 pieces around them."""
    pieces, position = [], 0
    for marker in markers:
        found = text.find(marker, position)
        if found < 0:
            raise TokenizerTemplateError(
                f"template 'tokenizer': the chat template does not write message text as "
                f"given ({marker!r} is missing from {text!r})"
            )
        pieces.append(text[position:found])
        position = found + len(marker)
    return [*pieces, text[position:]]


def _derive(render: _Renderer) -> Template:
    one = (_USER[0], _REPLY[0])
    first, user_tail, between, _, last = _split(
        render(_turns(None, one, (_USER[1], _REPLY[1]))), [_USER[0], _REPLY[0], _USER[1], _REPLY[1]]
    )
    prompt = _split(render(_turns(None, (_USER[0], None)), generation=True), [_USER[0]])
    if prompt[0] != first or not user_tail.startswith(prompt[1]):
        raise TokenizerTemplateError(
            "template 'tokenizer': the chat template's generation prompt "
            f"({prompt[1]!r}) is not how its replies start ({user_tail!r})"
        )
    end_hit = render.first_special(between)
    if end_hit is None:
        raise TokenizerTemplateError(
            f"template 'tokenizer': no special token ends a reply ({between!r} follows it), so "
            "neither the trained end of a reply nor the stop token is known"
        )
    end = between[: end_hit[0] + len(end_hit[1])]
    scaffold = between[len(end) :]  # untrained: assistant_suffix + the next user header
    header_hit = render.first_special(scaffold)
    user_header = scaffold[header_hit[0] :] if header_hit else scaffold
    suffix = scaffold[: len(scaffold) - len(user_header)]
    if not last.startswith(end + suffix):
        raise TokenizerTemplateError(
            f"template 'tokenizer': the last reply ends with {last!r}, the others with "
            f"{end + suffix!r}"
        )
    pieces: dict[str, Any] = {
        "user_format": user_header + "{content}",
        "assistant_prefix": user_tail,
        "generation_prefix": prompt[1] if prompt[1] != user_tail else None,
        "assistant_end": end,
        "assistant_suffix": suffix,
        "conversation_end": last[len(end + suffix) :],
        "strip_content": render(_turns(None, (f" {_USER[0]} ", f" {_REPLY[0]} ")))
        == render(_turns(None, one)),
        **_system_pieces(render, first, user_header),
    }
    used = "".join(str(value) for value in pieces.values())
    return Template(
        name=TOKENIZER_TEMPLATE,
        stop_strings=(end_hit[1],),
        special_tokens=tuple(token for token in render.specials if token in used),
        **pieces,
    )


def _system_pieces(render: _Renderer, first: str, user_header: str) -> dict[str, Any]:
    """``system_format`` and friends, from renders with and without a system prompt."""
    one = (_USER[0], _REPLY[0])
    if not render.renders(_turns(_SYSTEM, one)):
        if first != user_header:
            raise TokenizerTemplateError(
                f"template 'tokenizer': {first!r} comes before the first user message, but "
                "the chat template takes no system prompt"
            )
        return {"system_format": ""}
    before, after, _ = _split(render(_turns(_SYSTEM, one)), [_SYSTEM, _USER[0]])
    stripped = render(_turns(f" {_SYSTEM} ", one)) == render(_turns(_SYSTEM, one))
    if before == user_header:  # Gemma-3: the system prompt opens the first user message
        if first != user_header:
            raise TokenizerTemplateError(
                f"template 'tokenizer': a default system text {first!r} and a system prompt "
                "inside the first user message cannot be told apart"
            )
        return {
            "system_format": "{system}" + after,
            "system_in_first_user": True,
            "strip_system": stripped,
        }
    if not after.endswith(user_header):
        raise TokenizerTemplateError(
            "template 'tokenizer': the system prompt is neither a block before the first user "
            f"message nor the start of it ({before!r} + system + {after!r})"
        )
    block_end = after[: len(after) - len(user_header)]
    pieces = {"system_format": before + "{system}" + block_end, "strip_system": stripped}
    if first == user_header:
        return pieces
    if not (first.startswith(before) and first.endswith(block_end + user_header)):
        raise TokenizerTemplateError(
            f"template 'tokenizer': without a system prompt the chat template writes {first!r}, "
            "which is not its system block"
        )
    default = first[len(before) : len(first) - len(block_end + user_header)]
    empty = _split(render(_turns("", one)), [_USER[0]])[0]
    always = empty == before + block_end + user_header  # an empty system prompt keeps the block
    return {**pieces, "default_system": default, "system_always": always}


def _verify(template: Template, render: _Renderer) -> None:
    """Raise unless ``template`` renders the probes exactly as the chat template does."""
    system = _SYSTEM if template.system_format else None
    conversations = [
        _turns(None, ("Hi", "Hello.")),
        _turns(None, ("<image>\nWhat is it? ", " A cat. "), ("Colour?", "Black."), ("2", "1999")),
        _turns(system, ("<image>\nWhat is it?", "A cat."), (" Colour? ", "Black.")),
        _turns(None if system is None else f" {system} ", ("Say it.", " Done.")),
    ]
    prompts = [
        _turns(None, ("Hi", None)),
        _turns(system, ("<image>\nWhat is it?", "A cat."), ("Colour?", None)),
    ]
    for messages in conversations:
        ours = "".join(segment.text for segment in template.render(_llava(messages)))
        _same(ours, render(messages), messages)
    for messages in prompts:
        _same(
            template.generation_prompt(_llava(messages)),
            render(messages, generation=True),
            messages,
        )


def _llava(messages: _Messages) -> list[dict[str, str]]:
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"from": roles[m["role"]], "value": m["content"]} for m in messages]


def _same(ours: str, theirs: str, messages: Sequence[Mapping[str, str]]) -> None:
    if ours != theirs:
        raise TokenizerTemplateError(
            "template 'tokenizer': the chat template has logic mllm's templates cannot "
            f"express; for {list(messages)} it renders\n  {theirs!r}\nbut the derived "
            f"template gives\n  {ours!r}\nname a registered template instead"
        )
