"""Where each reply's generation prompt ends in its sample's training tokens.

Auditing a reply's labels (``mllm.data.label_audit``) needs one fact first: is the prompt
inference feeds (``Template.generation_prompt``, tokenized with BOS) a token prefix of the
training tokens, and how many tokens long? Finding that out is a tokenization problem of its
own -- texts tokenize differently at their ends, a token may straddle the prompt's end, and
tokenizing every prompt whole is slow -- so it lives here, apart from judging the labels.

:func:`locate_boundaries` places each reply's prompt in the training text and tokens;
:func:`check_prefixes` tokenizes only the last ``_WINDOW_CHARS`` characters of each prompt (in
one batched call) and compares them with the training tokens, settling a disagreement by
tokenizing the whole prompt (:func:`settle_prefixes`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from mllm.data.conversation import ASSISTANT_ROLES
from mllm.data.templates import Template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Tokens kept of each prompt's end (``PromptBoundary.prompt_tail``), and shown on each side
#: of a boundary in problem reports.
TAIL_TOKENS = 3
# Prompt characters re-tokenized to check a reply's prompt against the training tokens: the
# end of a text is where tokenizers behave differently (a trailing space, a cut word).
_WINDOW_CHARS = 32
_SKIPPED = 4  # window tokens at most that may differ from training's at the window's start
_start, _end = itemgetter(0), itemgetter(1)


@dataclass(slots=True)
class PromptBoundary:
    """Where a reply's generation prompt ends in its sample's training tokens."""

    sample: int
    end: int  # characters of the prompt
    tokens: int  # training tokens before that point: the prompt's length if it is a prefix
    straddle: bool  # a training token runs across the prompt's end
    other_text: str | None  # the prompt, when the training text does not start with it
    prefix: bool = False
    prompt_tail: tuple[int, ...] = ()


def locate_boundaries(
    sample: int,
    turns: Sequence[Mapping[str, Any]],
    text: str,
    offsets: Sequence[tuple[int, int]],
    template: Template,
    image_token: str,
) -> list[PromptBoundary]:
    """Each gpt reply's generation prompt, located in the training text and tokens (tokens
    the tokenizer adds trail with empty spans at 0 and are left out of the search)."""
    size = len(offsets)
    while size > 1 and offsets[size - 1] == (0, 0):
        size -= 1
    found = []
    for turn, value in enumerate(turns):
        if str(value.get("from", "")).lower() not in ASSISTANT_ROLES:
            continue
        prompt = template.generation_prompt(turns[:turn], image_token=image_token)
        end = len(prompt)
        tokens = bisect_right(offsets, end, hi=size, key=_end)
        straddle = tokens < size and offsets[tokens][0] < end
        other = None if text.startswith(prompt) else prompt
        found.append(PromptBoundary(sample, end, tokens, straddle, other))
    return found


def check_prefixes(
    boundaries: list[PromptBoundary],
    texts: Sequence[str],
    all_ids: Sequence[list[int]],
    all_offsets: Sequence[Sequence[tuple[int, int]]],
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Set ``prefix`` and ``prompt_tail``: the prompt's last characters are tokenized (one
    batched call) and compared, from the end, with the training tokens before its end.
    Prompts that disagree, or are too short for a window, are tokenized whole."""
    windows: list[tuple[PromptBoundary, int]] = []  # boundary, first character
    whole: list[PromptBoundary] = []
    for b in boundaries:
        offsets = all_offsets[b.sample]
        lead = 0
        while lead < b.tokens and offsets[lead][1] == 0:  # BOS and other added tokens
            lead += 1
        first = bisect_left(offsets, b.end - _WINDOW_CHARS, lo=lead, hi=b.tokens, key=_start)
        if b.other_text is not None or b.tokens - first < 3 or offsets[first][0] == 0:
            whole.append(b)
        else:
            windows.append((b, offsets[first][0]))
    # The Rust tokenizer directly when it pads and truncates nothing: transformers' conversion
    # of each encoding would cost more than tokenizing these short texts.
    tails = [texts[b.sample][start : b.end] for b, start in windows]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.padding or backend.truncation:
        encoded = tokenizer(tails, add_special_tokens=False)["input_ids"] if tails else []
    else:
        encoded = [e.ids for e in backend.encode_batch(tails, add_special_tokens=False)]
    for (b, _), w_ids in zip(windows, encoded, strict=True):
        b.prompt_tail = tuple(w_ids[-TAIL_TOKENS:])
        if b.straddle:
            continue  # a token crosses the prompt's end: certainly not a prefix
        ids, stop = all_ids[b.sample], b.tokens
        # The window's first word may tokenize differently (tokenizers treat a text's start
        # specially); its other tokens must be the training tokens before the prompt's end.
        b.prefix = any(
            stop - len(w_ids) + skip >= 0 and w_ids[skip:] == ids[stop - len(w_ids) + skip : stop]
            for skip in range(1, min(_SKIPPED, len(w_ids) - 2) + 1)
        )
        if not b.prefix:
            whole.append(b)
    if whole:
        settle_prefixes(whole, texts, all_ids, tokenizer)


def settle_prefixes(
    boundaries: list[PromptBoundary],
    texts: Sequence[str],
    all_ids: Sequence[list[int]],
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Tokenize whole prompts as inference does; a prefix sets the reply's position."""
    if not boundaries:
        return
    prompts = [b.other_text or texts[b.sample][: b.end] for b in boundaries]
    encoded = tokenizer(prompts, add_special_tokens=True, return_attention_mask=False)
    for b, prompt in zip(boundaries, encoded["input_ids"], strict=True):
        b.prompt_tail = tuple(prompt[-TAIL_TOKENS:])
        b.prefix = b.other_text is None and all_ids[b.sample][: len(prompt)] == prompt
        if b.prefix:
            b.tokens = len(prompt)
