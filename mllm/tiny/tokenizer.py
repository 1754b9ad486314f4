"""Tiny tokenizers that behave like real ones, trained locally in a fraction of a second on
general text (:mod:`mllm.tiny.corpus`), saved as folders that ``AutoTokenizer.from_pretrained``
loads like a downloaded Llama-2 (sentencepiece, byte fallback, split digits) or Llama-3
(byte-level BPE, digits in groups of three) tokenizer."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import sentencepiece as spm
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

from mllm.tiny.corpus import general_text

TokenizerKind = Literal["sentencepiece", "byte_level"]

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# Byte fallback reserves one piece per byte; the specials are <unk>, <s>, </s>.
_NUM_BYTE_PIECES = 256
_NUM_SPECIALS = 3

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# Llama-3's pre-tokenizer pattern: words keep their leading space, digits go in groups of at
# most three and never join a space, so " 42" is two tokens, " " and "42".
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama-3's own special tokens, so its chat template needs nothing added.
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)


def tokenizer_corpus(extra_text: Iterable[str] = ()) -> list[str]:
    """The lines every tiny tokenizer is trained on: general prose, then ``extra_text``."""
    return [line for line in itertools.chain(general_text(), extra_text) if line.strip()]


def train_tiny_tokenizer(
    out_dir: Path,
    vocab_size: int = 1024,
    extra_text: Iterable[str] = (),
    kind: TokenizerKind = "sentencepiece",
) -> Path:
    """Train a tokenizer on general text and save it as a folder ``from_pretrained`` loads.

    The corpus never contains a test's or the demo's answers, so answers tokenize as real
    data does: digits split off a lone ``'▁'``, rare or capitalised words in fragments or
    byte-fallback pieces. ``kind="byte_level"`` gives a Llama-3-style byte-level BPE instead
    (see :func:`train_byte_level_tokenizer`); the rest of this docstring is about the
    default, Llama-2-style sentencepiece tokenizer.

    Byte fallback means any text, in any script, encodes without ``<unk>``. The folder gets
    ``tokenizer.model`` plus the fast ``tokenizer.json``, so ``AutoTokenizer.from_pretrained``
    gives a fast tokenizer with offset mappings, adding ``<s>`` and never ``</s>``.
    Normalisation is off (like Llama) so inner whitespace and newlines survive a round trip;
    as with every Llama tokenizer, one leading space of the text is absorbed by the ``▁``
    prefix. transformers v5 does not save ``add_bos_token`` (the attribute reads ``False``
    after reloading) because ``tokenizer.json``'s post-processor adds ``<s>``: check the ids,
    and do not call ``update_post_processor()`` on a reloaded tokenizer, which drops ``<s>``.

    Args:
        out_dir: Folder to write (created if needed; tokenizer files in it are replaced).
        vocab_size: Exact vocabulary size, including the 256 byte pieces and 3 specials.
        extra_text: Lines added to the general corpus.
        kind: ``"sentencepiece"`` (Llama-2, Vicuna, Mistral) or ``"byte_level"`` (Llama-3).

    Returns:
        ``out_dir``.

    Raises:
        ValueError: if ``vocab_size`` cannot hold the bytes, specials and every distinct
            character, or is more than the corpus can fill.
    """
    out_dir = Path(out_dir)
    lines = tokenizer_corpus(extra_text)
    if kind == "byte_level":
        return train_byte_level_tokenizer(out_dir, vocab_size, lines)
    if kind != "sentencepiece":
        raise ValueError(f"unknown tokenizer kind {kind!r}; use 'sentencepiece' or 'byte_level'")
    num_chars = len(set("".join(lines)) - {" "})
    minimum = _NUM_BYTE_PIECES + _NUM_SPECIALS + num_chars + 1
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte fallback needs 256 byte pieces, "
            f"3 specials and one piece per distinct character ({num_chars}); use >= {minimum}"
        )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=1.0,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as err:
        raise ValueError(
            f"sentencepiece could not train a {vocab_size}-piece tokenizer ({err}); "
            "lower vocab_size or pass more extra_text"
        ) from err
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    # Naming the class makes AutoTokenizer convert tokenizer.model to a fast BPE tokenizer;
    # building LlamaTokenizer(vocab_file=...) directly silently gives a 3-token vocabulary.
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "legacy": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out_dir / "tokenizer.json").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    if len(tokenizer) != vocab_size or not tokenizer.is_fast:
        raise RuntimeError(
            f"converted tokenizer in {out_dir} has {len(tokenizer)} tokens "
            f"(fast={tokenizer.is_fast}), expected a fast tokenizer with {vocab_size}"
        )
    tokenizer.save_pretrained(out_dir)
    return out_dir


def train_byte_level_tokenizer(out_dir: Path, vocab_size: int, lines: list[str]) -> Path:
    """Train a Llama-3-style byte-level BPE on ``lines`` and save it as a loadable folder.

    Every byte is a base token (no ``<unk>``, no fallback pieces); the tokenizer adds
    ``<|begin_of_text|>`` and has Llama-3's header and end-of-turn tokens as specials.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: if ``vocab_size`` cannot hold the 256 bytes and the special tokens.
    """
    minimum = 256 + len(LLAMA3_SPECIALS) + 1
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for byte-level BPE; use >= {minimum}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(LLAMA3_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    bos = LLAMA3_SPECIALS[0]
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 0)]
            ),
        ]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").unlink(missing_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": "<|eot_id|>",
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    loaded = AutoTokenizer.from_pretrained(out_dir)
    if not loaded.is_fast or loaded.encode("a")[0] != loaded.convert_tokens_to_ids(bos):
        raise RuntimeError(f"the byte-level tokenizer in {out_dir} does not load as trained")
    return out_dir
