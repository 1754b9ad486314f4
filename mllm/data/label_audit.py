"""Label audit: does training teach the model to *start* every reply, with the tokens
inference will feed it?

Inference feeds a reply's generation prompt (``Template.generation_prompt``, tokenized with
the tokenizer's BOS) and the model writes the rest. So, per gpt reply: the prompt's tokens
must be a prefix of the training tokens (else training conditions on tokens inference never
shows), and the training token right after that prefix -- the first token the model must
generate, often a lone ``'▁'`` before ``"2"`` or a byte-fallback word (issue 13) -- must be a
target. The labels are the ones training uses (``tokenize_rendered``); the positions come from
the prompt's tokens, not from the character-overlap rule that made those labels.

- :func:`audit_rendered` audits every reply of many records (``mllm data check``). Where
  each reply's prompt ends in the training tokens, and whether it is a prefix of them, comes
  from ``mllm.data.prompt_boundaries`` (prompt tails tokenized in one batched call); this
  module judges the labels at that point.
- :func:`probe_pair` / :func:`check_pair` tokenize a few probe conversations whole, to reject
  a tokenizer/template pair before anything trains.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mllm.data.prompt_boundaries import (
    TAIL_TOKENS,
    PromptBoundary,
    check_prefixes,
    locate_boundaries,
    settle_prefixes,
)
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
        else locate_boundaries(
            index, turns, texts[index], all_offsets[index], template, image_token
        )
        for index, (turns, sample) in enumerate(zip(conversations, samples, strict=True))
    ]
    flat = [b for per_sample in boundaries for b in per_sample]
    if whole_prompts:
        settle_prefixes(flat, texts, all_ids, tokenizer)
    else:
        check_prefixes(flat, texts, all_ids, all_offsets, tokenizer)
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
    boundaries: list[PromptBoundary], view: _View, *, truncated: bool
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


def _show_boundary(b: PromptBoundary, kind: ProblemKind, view: _View) -> str:
    """``'N' 'T' ':' | '▁' '2'* '</s>'*``; for a mismatch, the prompt's own last tokens too."""
    if kind == "reply_cut":
        return f"its prompt ends at token {view.expanded(b.tokens)}; {len(view.labels)} are kept"
    before, after = (
        view.shown(b.tokens - TAIL_TOKENS, b.tokens),
        view.shown(b.tokens, b.tokens + TAIL_TOKENS),
    )
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
