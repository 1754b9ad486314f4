"""Tiny tokenizers shaped like each LLM family's own: its special tokens, the BOS it adds (or
not), its EOS and pad token, and its official chat template (:mod:`mllm.tiny.chat_templates`).

They are the base tokenizers of :mod:`mllm.tiny.tokenizer` (sentencepiece for Mistral, Gemma and
Phi-3, byte-level BPE for Llama-3 and Qwen) with the family's tokens added, saved as folders
that ``AutoTokenizer.from_pretrained`` loads like a downloaded one, so
``apply_chat_template`` renders exactly what the real tokenizer renders for the same text.
Only the vocabulary is small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, pre_tokenizers, processors

from mllm.tiny import chat_templates
from mllm.tiny.tokenizer import LLAMA3_SPECIALS, train_tiny_tokenizer


@dataclass(frozen=True)
class TokenizerShape:
    """What a family's tokenizer looks like, as far as chat formatting and padding go.

    Attributes:
        kind: the base tokenizer (``sentencepiece`` or ``byte_level``).
        bos: the BOS token's text; ``None`` if the family has none.
        adds_bos: whether encoding text adds ``bos`` (Phi-3 names one but never adds it).
        eos: the EOS token's text.
        pad: the tokenizer's own pad token; ``None`` if it ships without one.
        specials: the family's special tokens (added if the base lacks them).
        chat_template: the official Jinja chat template.
        legacy_prefix: a sentencepiece ``'▁'`` opens every text piece between special
            tokens, not only the first: Llama-2 / Mistral v0.2's "legacy" tokenizers, so
            ``"</s>[INST]"`` gives ``'▁['``, as in Mistral's own tokenization.
    """

    kind: Literal["sentencepiece", "byte_level"]
    bos: str | None
    adds_bos: bool
    eos: str
    pad: str | None
    specials: tuple[str, ...]
    chat_template: str
    legacy_prefix: bool = False


_LLAMA3_1_SPECIALS = (*LLAMA3_SPECIALS, "<|finetune_right_pad_id|>", "<|eom_id|>", "<|python_tag|>")
_GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>")
_PHI3_SPECIALS = ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")

#: Keyed by the exact family names of ``mllm.models.families``.
SHAPES: dict[str, TokenizerShape] = {
    "mistral": TokenizerShape(
        "sentencepiece", "<s>", True, "</s>", None, (), chat_templates.MISTRAL_V0_2, True
    ),
    "llama3": TokenizerShape(
        "byte_level",
        "<|begin_of_text|>",
        True,
        "<|eot_id|>",
        None,
        LLAMA3_SPECIALS,
        chat_templates.LLAMA3,
    ),
    "llama3.1": TokenizerShape(
        "byte_level",
        "<|begin_of_text|>",
        True,
        "<|eot_id|>",
        None,
        _LLAMA3_1_SPECIALS,
        chat_templates.LLAMA3_1,
    ),
    "llama3.2": TokenizerShape(
        "byte_level",
        "<|begin_of_text|>",
        True,
        "<|eot_id|>",
        None,
        _LLAMA3_1_SPECIALS,
        chat_templates.LLAMA3_2,
    ),
    "qwen2": TokenizerShape(
        "byte_level",
        None,
        False,
        "<|im_end|>",
        "<|endoftext|>",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        chat_templates.QWEN2,
    ),
    "qwen2.5": TokenizerShape(
        "byte_level",
        None,
        False,
        "<|im_end|>",
        "<|endoftext|>",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        chat_templates.QWEN2_5,
    ),
    "gemma2": TokenizerShape(
        "sentencepiece", "<bos>", True, "<eos>", "<pad>", _GEMMA_SPECIALS, chat_templates.GEMMA2
    ),
    "gemma3": TokenizerShape(
        "sentencepiece", "<bos>", True, "<eos>", "<pad>", _GEMMA_SPECIALS, chat_templates.GEMMA3
    ),
    "phi3": TokenizerShape(
        "sentencepiece",
        "<s>",
        False,
        "<|endoftext|>",
        "<|endoftext|>",
        _PHI3_SPECIALS,
        chat_templates.PHI3_5,
    ),
}
SHAPES["phi3.5"] = SHAPES["phi3"]


def make_family_tokenizer(out_dir: Path, family: str, *, vocab_size: int = 1024) -> Path:
    """Save a tiny tokenizer shaped like ``family``'s into ``out_dir``.

    Args:
        out_dir: folder to write (created if needed).
        family: a key of :data:`SHAPES`.
        vocab_size: size of the base vocabulary, before the family's tokens are added.

    Returns:
        ``out_dir``, loadable with ``AutoTokenizer.from_pretrained``.

    Raises:
        KeyError: for a family without a tokenizer shape; the message lists them.
    """
    if family not in SHAPES:
        raise KeyError(f"no tiny tokenizer for family {family!r}; choose one of {sorted(SHAPES)}")
    shape = SHAPES[family]
    out_dir = Path(out_dir)
    train_tiny_tokenizer(out_dir, vocab_size, kind=shape.kind)
    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    tokenizer.add_special_tokens([t for t in shape.specials if tokenizer.token_to_id(t) is None])
    if shape.legacy_prefix:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=False)
    steps = [processors.ByteLevel(trim_offsets=False)] if shape.kind == "byte_level" else []
    if shape.adds_bos:
        assert shape.bos is not None
        bos = (shape.bos, tokenizer.token_to_id(shape.bos))
        steps.append(
            processors.TemplateProcessing(
                single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos]
            )
        )
    tokenizer.post_processor = processors.Sequence(steps)
    (out_dir / "tokenizer.model").unlink(missing_ok=True)  # load tokenizer.json as it is
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": shape.bos,
        "eos_token": shape.eos,
        "pad_token": shape.pad,
        "unk_token": "<unk>" if shape.kind == "sentencepiece" else None,
        "clean_up_tokenization_spaces": False,
        "chat_template": shape.chat_template,
    }
    config = {key: value for key, value in config.items() if value is not None}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir
