"""Token ids -> answer text, one token at a time, cut at the template's stop strings.

Streaming and non-streaming generation both feed every generated token through a
:class:`StopStringDecoder`, so a streamed answer is, character for character, the answer a
plain call returns. The decoder only hands out text that can no longer change: it holds back
a trailing piece of a multi-byte character, trailing whitespace (answers are stripped), and
any tail that might be the start of a stop string (``"#"`` while ``"###"`` is a stop).
"""

from __future__ import annotations

import logging
from typing import Literal

from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]
#: What a tokenizer's decode gives for bytes that do not form a whole character yet.
_INCOMPLETE = "\ufffd"


class StopStringDecoder:
    """Turns one answer's token ids into text deltas, ending at a stop token or stop string.

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
        self._pad = tokenizer.pad_token or None
        self._ids: list[int] = []
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
            return self._advance(self._decoded(), final=True)
        self._ids.append(token_id)
        text = self._decoded()
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            return self._advance(text[:cut], final=True)
        return self._advance(text, final=False)

    def finish(self) -> str:
        """Generation ended: release what was held back (the answer ran out of tokens if no
        stop was seen)."""
        if self.done:
            return ""
        self.finish_reason = "length"
        return self._advance(self._decoded(), final=True)

    def _decoded(self) -> str:
        text = self._tokenizer.decode(
            self._ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return text.replace(self._pad, "") if self._pad else text

    def _advance(self, text: str, *, final: bool) -> str:
        """Hand out the part of ``text`` past :attr:`text` that can no longer change."""
        text = text.lstrip()
        if final:
            text = text.rstrip()
        else:
            text = text.rstrip(_INCOMPLETE)
            text = text[: len(text) - self._partial_stop_length(text)].rstrip()
        if not text.startswith(self.text):
            # Tokenizers decode prefixes stably; if one ever does not, keep what was sent.
            logger.debug("decoded text changed after it was streamed: %r -> %r", self.text, text)
            return ""
        delta = text[len(self.text) :]
        self.text = text
        return delta

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest tail of ``text`` that a stop string starts with."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
