"""Token ids -> answer text, one token at a time, cut at the template's stop strings.

Streaming and non-streaming generation both feed every generated token through a
:class:`StopStringDecoder`, so a streamed answer is, character for character, the answer a
plain call returns: ``tokenizer.decode`` of the answer's ids, cut at the first stop string and
stripped.

Decoding is not prefix-stable everywhere. With byte-fallback tokenizers (Llama, Vicuna,
Mistral) a run of byte tokens decodes as a whole: ``<0x0B> <0x07>`` reads ``"\\x0b\\x07"``
until ``<0xF7>`` joins the run and turns all three bytes into ``"\\ufffd"``. Byte-level BPE
tokenizers (Llama 3, Qwen) show half a character as a trailing ``"\\ufffd"`` until the rest
arrives. So the decoder *settles* text only after a token that is no byte piece and leaves no
half character; the settled text never changes again, and only it is handed out. It also
holds back trailing whitespace (answers are stripped) and any tail that might be the start of
a stop string (``"#"`` while ``"###"`` is a stop).
"""

from __future__ import annotations

import weakref
from typing import Literal

from transformers import PreTrainedTokenizerBase

FinishReason = Literal["stop", "length"]
#: What a tokenizer's decode gives for bytes that do not form a whole character (yet).
_INCOMPLETE = "\ufffd"
#: Settled tokens decoded again as context, at most, before the window restarts after the
#: last one (one extra decode per this many tokens; longer windows cost a little per decode).
_WINDOW = 8
_byte_pieces: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, frozenset[int]] = (
    weakref.WeakKeyDictionary()
)


def _byte_piece_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of SentencePiece's byte-fallback pieces ``<0x00>``..``<0xFF>`` (none in byte-level
    BPE vocabularies), looked up once per tokenizer."""
    ids = _byte_pieces.get(tokenizer)
    if ids is None:
        names = [f"<0x{byte:02X}>" for byte in range(256)]
        found = tokenizer.convert_tokens_to_ids(names)
        ids = frozenset(
            i
            for name, i in zip(names, found, strict=True)
            if i is not None and tokenizer.convert_ids_to_tokens(i) == name
        )
        _byte_pieces[tokenizer] = ids
    return ids


class StopStringDecoder:
    """Turns one answer's token ids into text deltas, ending at a stop token or stop string.

    Each token costs one short decode (the tokens since the last settled one, after at most
    :data:`_WINDOW` settled tokens of context) and a stop-string search over the text that
    changed, so the cost per token does not grow with the answer.

    Args:
        tokenizer: the model's tokenizer.
        stop_token_ids: ids that end the answer (EOS, single-token stop strings); not part of it.
        stop_strings: texts that end the answer wherever they appear; not part of it.

    Attributes:
        text: everything handed out so far; after :meth:`finish`, the whole answer.
        finish_reason: ``"stop"`` (a stop token or string), ``"length"`` (the token budget ran
            out), or ``None`` while the answer is still open.
        num_tokens: tokens consumed, the stop token included (what an API bills).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        stop_token_ids: set[int],
        stop_strings: tuple[str, ...],
    ) -> None:
        self._tokenizer = tokenizer
        self._stop_ids = stop_token_ids
        self._stops = tuple(s for s in stop_strings if s)
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self._pad = tokenizer.pad_token or None
        self._byte_pieces = _byte_piece_ids(tokenizer)
        self._ids: list[int] = []
        # ``_ids[:_settled_count]`` decode to ``_settled`` for good. Later ids are decoded after
        # ``_ids[_anchor:_settled_count]`` (which decode alone to ``_anchor_text``) as context,
        # so that a leading "▁" reads as a space; they decode to ``_pending`` for now, which
        # may still change.
        self._settled = ""
        self._settled_count = 0
        self._anchor = 0
        self._anchor_text = ""
        self._pending = ""
        self._sent = 0  # characters of ``_settled`` that :attr:`text` covers
        self.text = ""
        self.finish_reason: FinishReason | None = None
        self.num_tokens = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, token_id: int) -> str:
        """Take the next generated token; return the text that became final with it."""
        if self.done:  # a finished row of a batch keeps receiving padding
            return ""
        self.num_tokens += 1
        if token_id in self._stop_ids:
            self.finish_reason = "stop"
            return self._release(self._settled + self._pending, final=True)
        # Text before the settled part's last stop-string-sized tail was searched already.
        searched = max(0, len(self._settled) - self._longest_stop + 1)
        self._ids.append(token_id)
        window = self._decode(self._ids[self._anchor :])
        self._pending = window[len(self._anchor_text) :]
        text = self._settled + self._pending
        cut = self._find_stop(text, searched)
        if cut >= 0:
            self.finish_reason = "stop"
            return self._release(text[:cut], final=True)
        if token_id not in self._byte_pieces and not self._pending.endswith(_INCOMPLETE):
            self._settled, self._pending = text, ""
            self._settled_count = len(self._ids)
            if self._settled_count - self._anchor > _WINDOW:
                self._anchor = self._settled_count - 1
                window = self._decode(self._ids[self._anchor :])
            self._anchor_text = window
        return self._release(self._settled, final=False)

    def finish(self) -> str:
        """Generation ended: release what was held back (the answer ran out of tokens if no
        stop was seen)."""
        if self.done:
            return ""
        self.finish_reason = "length"
        return self._release(self._settled + self._pending, final=True)

    def _decode(self, ids: list[int]) -> str:
        text = self._tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return text.replace(self._pad, "") if self._pad else text

    def _find_stop(self, text: str, start: int) -> int:
        """Where the first stop string in ``text[start:]`` begins, or -1."""
        cut = -1
        for stop in self._stops:
            at = text.find(stop, start)
            if at >= 0 and (cut < 0 or at < cut):
                cut = at
        return cut

    def _release(self, text: str, *, final: bool) -> str:
        """Hand out the part of ``text`` past :attr:`text` that can no longer change.

        ``text`` starts with everything handed out so far: the settled text, or (``final``) the
        whole answer, whose cut comes after anything handed out (a stop string overlapping the
        settled text's end was held back as a possible start of one).
        """
        end = len(text) if final else len(text) - self._partial_stop_length(text)
        piece = text[self._sent : end]
        skipped = 0
        if not self.text:  # the answer is stripped: leading whitespace never goes out
            skipped = len(piece) - len(piece.lstrip())
            piece = piece[skipped:]
        piece = piece.rstrip()  # trailing whitespace waits for what follows it
        if not piece:
            return ""
        self._sent += skipped + len(piece)
        self.text += piece
        return piece

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest tail of ``text`` that a stop string starts with."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
