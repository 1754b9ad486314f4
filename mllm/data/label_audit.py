"""Label audit: does training teach the model to *start* every reply, with the tokens
inference will feed it?

Inference feeds a reply's generation prompt (``Template.generation_prompt``, tokenized with
the tokenizer's BOS) and the model writes the rest. So, per gpt reply: the prompt's tokens
must be a prefix of the training tokens (else training conditions on tokens inference never
shows), and the training token right after that prefix -- the first token the model must
generate, often a lone ``'▁'`` before ``"2"`` or a byte-fallback word (issue 13) -- must be a
target. The labels are the ones training uses (``tokenize_rendered``); the positions come from
the prompt's tokens, not from the character-overlap rule that made those labels.

- :func:`audit_rendered` audits every reply of many records (``mllm data check``). Each
  reply's prompt is rendered with ``generation_prompt``, but only its last
  ``_WINDOW_CHARS`` characters are tokenized and compared with the training tokens (in one
  batched call); a disagreement is settled by tokenizing the whole prompt.
- :func:`probe_pair` / :func:`check_pair` tokenize a few probe conversations whole, to reject
  a tokenizer/template pair before anything trains.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

from mllm.data.templates import DEFAULT_IMAGE_TOKEN, Template
from mllm.data.tokenize import (
    IGNORE_INDEX,
    DroppedSample,
    TokenizedSample,
    check_tokenizer,
    encode_rendered,
    render_text,
    tokenize_rendered,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ProblemKind = Literal["first_token_untrained", "reply_untrained", "prompt_not_prefix", "reply_cut"]

#: Replies real data has that tokenizers split unusually: a lone '▁' before digits, byte
#: fallback for capitalised or non-Latin words, leading punctuation, a one-letter word.
PROBE_REPLIES = ("2", "1999", "Yellow", "日本", "(B)", "A cat.")
LEGEND = "| = end of the generation prompt, * = target"

# Prompt characters re-tokenized to check a reply's prompt against the training tokens: the
# end of a text is where tokenizers behave differently (a trailing space, a cut word).
_WINDOW_CHARS = 32
_SKIPPED = 4  # window tokens at most that may differ from training's at the window's start
_SHOWN = 3  # tokens shown on each side of a boundary
_start, _end = itemgetter(0), itemgetter(1)
_SAYS = {
    "first_token_untrained": "the first token to generate is not a target",
    "reply_untrained": "no token of the reply is a target",
    "prompt_not_prefix": "the generation prompt is not a token prefix of training",
    "reply_cut": "truncation removes the whole reply",
}


class LabelRuleError(ValueError):
    """A tokenizer/template pair that would train replies wrong; the message names both."""


@dataclass(frozen=True, slots=True)
class ReplyProblem:
    """What is wrong with one reply: ``reply`` counts the gpt replies from 0."""

    reply: int
    kind: ProblemKind
    tokens: str  # the tokens around the end of the prompt (see LEGEND)

    def describe(self) -> str:
        return f"{_SAYS[self.kind]}: {self.tokens}"


@dataclass(frozen=True, slots=True)
class AuditedSample:
    """A record's sample as training tokenizes it, and the problems of its replies."""

    sample: TokenizedSample | DroppedSample
    replies: int  # replies audited: 0 for a dropped sample
    problems: tuple[ReplyProblem, ...]


@dataclass(slots=True)
class _Boundary:
    """Where a reply's generation prompt ends in its sample's training tokens."""

    sample: int
    end: int  # characters of the prompt
    tokens: int  # training tokens before that point: the prompt's length if it is a prefix
    straddle: bool  # a training token runs across the prompt's end
    other_text: str | None  # the prompt, when the training text does not start with it
    prefix: bool = False
    prompt_tail: tuple[int, ...] = ()


def audit_rendered(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    rendered: Sequence[tuple[str, list[tuple[int, int]]]],
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_token: str,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int,
    whole_prompts: bool = False,
    image_token_counts: Sequence[Sequence[int]] | None = None,
) -> list[AuditedSample]:
    """Tokenize rendered records as training does and audit every reply's labels.

    Args:
        conversations: the turns as rendered (image markers placed).
        rendered: their ``render_text`` outputs.
        template: the template that rendered them.
        tokenizer: passed :func:`~mllm.data.tokenize.check_tokenizer` for the template.
        image_token, image_token_id, num_image_tokens, max_length: as for tokenizing.
        whole_prompts: tokenize every prompt whole instead of its tail (slower).
        image_token_counts: per record, the placeholders of each image (anyres), in place
            of ``num_image_tokens`` for all.

    Returns:
        Per record, the training sample (the same as ``tokenize_rendered`` returns) and the
        problems of its replies; dropped samples are not audited.
    """
    if not rendered:
        return []
    encodings = encode_rendered(rendered, tokenizer)  # one call: labels and offsets
    samples = tokenize_rendered(
        rendered,
        tokenizer,
        image_token_id=image_token_id,
        num_image_tokens=num_image_tokens,
        max_length=max_length,
        encodings=encodings,
        image_token_counts=image_token_counts,
    )
    all_ids, all_offsets = encodings["input_ids"], encodings["offset_mapping"]
    texts = [text for text, _ in rendered]
    boundaries = [
        []
        if isinstance(sample, DroppedSample)
        else _boundaries(index, turns, texts[index], all_offsets[index], template, image_token)
        for index, (turns, sample) in enumerate(zip(conversations, samples, strict=True))
    ]
    flat = [b for per_sample in boundaries for b in per_sample]
    if whole_prompts:
        _settle(flat, texts, all_ids, tokenizer)
    else:
        _check_prefixes(flat, texts, all_ids, all_offsets, tokenizer)
    audited = []
    for index, sample in enumerate(samples):
        if isinstance(sample, DroppedSample):
            audited.append(AuditedSample(sample, 0, ()))
            continue
        blocks = num_image_tokens if image_token_counts is None else image_token_counts[index]
        view = _View(tokenizer, all_ids[index], sample.labels, image_token_id, blocks)
        found = _judge_sample(boundaries[index], view, truncated=sample.full_length > max_length)
        audited.append(AuditedSample(sample, len(boundaries[index]), tuple(found)))
    return audited


def _boundaries(
    sample: int,
    turns: Sequence[Mapping[str, Any]],
    text: str,
    offsets: Sequence[tuple[int, int]],
    template: Template,
    image_token: str,
) -> list[_Boundary]:
    """Each gpt reply's generation prompt, located in the training text and tokens (tokens
    the tokenizer adds trail with empty spans at 0 and are left out of the search)."""
    size = len(offsets)
    while size > 1 and offsets[size - 1] == (0, 0):
        size -= 1
    found = []
    for turn, value in enumerate(turns):
        if str(value.get("from", "")).lower() not in ("gpt", "assistant"):
            continue
        prompt = template.generation_prompt(turns[:turn], image_token=image_token)
        end = len(prompt)
        tokens = bisect_right(offsets, end, hi=size, key=_end)
        straddle = tokens < size and offsets[tokens][0] < end
        other = None if text.startswith(prompt) else prompt
        found.append(_Boundary(sample, end, tokens, straddle, other))
    return found


def _check_prefixes(
    boundaries: list[_Boundary],
    texts: Sequence[str],
    all_ids: Sequence[list[int]],
    all_offsets: Sequence[Sequence[tuple[int, int]]],
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Set ``prefix`` and ``prompt_tail``: the prompt's last characters are tokenized (one
    batched call) and compared, from the end, with the training tokens before its end.
    Prompts that disagree, or are too short for a window, are tokenized whole."""
    windows: list[tuple[_Boundary, int]] = []  # boundary, first character
    whole: list[_Boundary] = []
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
        b.prompt_tail = tuple(w_ids[-_SHOWN:])
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
        _settle(whole, texts, all_ids, tokenizer)


def _settle(
    boundaries: list[_Boundary],
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
        b.prompt_tail = tuple(prompt[-_SHOWN:])
        b.prefix = b.other_text is None and all_ids[b.sample][: len(prompt)] == prompt
        if b.prefix:
            b.tokens = len(prompt)


class _View:
    """A sample's training ids (before image expansion) and labels (after), for judging."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        ids: list[int],
        labels: list[int],
        image_id: int,
        block: int | Sequence[int],
    ) -> None:
        self.tokenizer, self.ids, self.labels = tokenizer, ids, labels
        self.images: list[int] = []  # positions of image markers (list.index runs in C)
        with suppress(ValueError):
            while True:
                start = self.images[-1] + 1 if self.images else 0
                self.images.append(ids.index(image_id, start))
        blocks = [block] * len(self.images) if isinstance(block, int) else block
        # placeholders added before the i-th marker's position: [0, b0 - 1, ...]
        self._added = [0, *itertools.accumulate(size - 1 for size in blocks)]

    def expanded(self, position: int) -> int:
        """The position in the labels: image markers become blocks of placeholders."""
        return position + self._added[bisect_left(self.images, position)]

    def shown(self, low: int, high: int) -> list[str]:
        """Training tokens ``[low, high)``, targets marked ``*``."""
        out = []
        for t in range(max(low, 0), min(high, len(self.ids))):
            position = self.expanded(t)
            target = position < len(self.labels) and self.labels[position] != IGNORE_INDEX
            token = self.tokenizer.convert_ids_to_tokens(self.ids[t])
            out.append(repr(token) + ("*" if target else ""))
        return out


def _judge_sample(
    boundaries: list[_Boundary], view: _View, *, truncated: bool
) -> list[ReplyProblem]:
    """Each reply's problem, if any, from the labels at and after its prompt's end."""
    labels, problems = view.labels, []
    for reply, b in enumerate(boundaries):
        start = view.expanded(b.tokens)
        following = boundaries[reply + 1].tokens if reply + 1 < len(boundaries) else None
        stop = view.expanded(len(view.ids) if following is None else following)
        kind: ProblemKind | None = None
        if truncated and view.expanded(b.tokens + b.straddle) >= len(labels):
            kind = "reply_cut"
        elif not b.prefix:
            kind = "prompt_not_prefix"
        elif start >= len(labels) or labels[start] == IGNORE_INDEX:
            visible = labels[start : min(stop, len(labels))]
            whole = stop <= len(labels)
            untrained = whole and all(label == IGNORE_INDEX for label in visible)
            kind = "reply_untrained" if untrained else "first_token_untrained"
        if kind is not None:
            problems.append(ReplyProblem(reply, kind, _show_boundary(b, kind, view)))
    return problems


def _show_boundary(b: _Boundary, kind: ProblemKind, view: _View) -> str:
    """``'N' 'T' ':' | '▁' '2'* '</s>'*``; for a mismatch, the prompt's own last tokens too."""
    if kind == "reply_cut":
        return f"its prompt ends at token {view.expanded(b.tokens)}; {len(view.labels)} are kept"
    before, after = view.shown(b.tokens - _SHOWN, b.tokens), view.shown(b.tokens, b.tokens + _SHOWN)
    if kind != "prompt_not_prefix":
        return " ".join([*before, "|", *after])
    prompt = " ".join(map(repr, view.tokenizer.convert_ids_to_tokens(list(b.prompt_tail))))
    inside = f" (the prompt ends inside {after[0].rstrip('*')})" if b.straddle and after else ""
    return f"prompt {prompt} | but training has {' '.join(before + after)}{inside}"


# --- the tokenizer/template pair ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairProblem:
    """A probe reply the pair would train wrong; ``exchange`` counts from 1."""

    reply_text: str
    exchange: int
    problem: ReplyProblem


def probe_pair(
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    *,
    image_token: str = DEFAULT_IMAGE_TOKEN,
    replies: Sequence[str] = PROBE_REPLIES,
) -> list[PairProblem]:
    """Tokenize probe conversations and check every reply as inference would prompt it.

    Each probe has two exchanges with the same reply (one for a ``caption_only`` template);
    each reply's prompt is ``template.generation_prompt`` of the turns before it.

    Raises:
        TypeError, ValueError: for a tokenizer that cannot serve ``template`` at all (see
            :func:`~mllm.data.tokenize.check_tokenizer`).
    """
    image_id = check_tokenizer(tokenizer, template, image_token=image_token)
    found = []
    for reply in replies:
        ask = image_token if template.caption_only else f"{image_token}\nWhat is shown?"
        turns = [{"from": "human", "value": ask}, {"from": "gpt", "value": reply}]
        if not template.caption_only:
            turns += [{"from": "human", "value": "And?"}, {"from": "gpt", "value": reply}]
        (result,) = audit_rendered(
            [turns],
            [render_text(turns, template, image_token=image_token)],
            template,
            tokenizer,
            image_token=image_token,
            image_token_id=image_id,
            num_image_tokens=1,
            max_length=1 << 30,
            whole_prompts=True,
        )
        problems = list(result.problems)
        if isinstance(result.sample, DroppedSample):  # not one target in the conversation
            nothing = "the conversation has no target at all"
            problems = [ReplyProblem(n, "reply_untrained", nothing) for n in range(len(turns) // 2)]
        found += [PairProblem(reply, problem.reply + 1, problem) for problem in problems]
    return found


def pair_message(
    problems: Sequence[PairProblem], template: Template, tokenizer: PreTrainedTokenizerBase
) -> str:
    """``template 'X' with tokenizer 'DIR': this tokenizer/template pair would train ...``."""
    folder = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    replies = list(dict.fromkeys(p.reply_text for p in problems))
    lines = [
        f"template {template.name!r} with tokenizer {folder!r}: this tokenizer/template pair "
        f"would train replies wrong ({len(problems)} problems in probe replies "
        f"{', '.join(map(repr, replies))}; {LEGEND}):"
    ]
    first = {p.reply_text: p for p in reversed(problems)}
    lines += [
        f"  reply {p.reply_text!r} (exchange {p.exchange}) [{p.problem.kind}]: "
        f"{p.problem.describe()}"
        for p in (first[reply] for reply in replies)
    ]
    return "\n".join(lines)


def check_pair(
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    *,
    image_token: str = DEFAULT_IMAGE_TOKEN,
) -> None:
    """Stop before training when the pair would train probe replies wrong.

    Raises:
        LabelRuleError: naming the template, the tokenizer's folder and example tokens.
    """
    problems = probe_pair(tokenizer, template, image_token=image_token)
    if problems:
        raise LabelRuleError(pair_message(problems, template, tokenizer))
