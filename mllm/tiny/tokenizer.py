"""The tiny sentencepiece tokenizer: trained locally in a fraction of a second on a built-in
corpus, saved as a folder that ``AutoTokenizer.from_pretrained`` loads like a real Llama one."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
from transformers import AutoTokenizer

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# Byte fallback reserves one piece per byte; the specials are <unk>, <s>, </s>.
_NUM_BYTE_PIECES = 256
_NUM_SPECIALS = 3

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray")
SHAPES = ("circle", "square", "triangle", "cross", "diamond", "star")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
POSITIONS += ("top", "bottom", "left", "right")
_NOUNS_TEXT = (
    "cat dog bird house tree river mountain city car train book table window garden "
    "teacher student child friend doctor farmer painter engine computer picture camera "
    "road bridge ocean forest flower apple bread water letter song story question answer"
)
_VERBS_TEXT = (
    "sees likes draws finds carries paints watches builds opens reads follows describes "
    "moves holds shows counts"
)
_ADJECTIVES_TEXT = (
    "small large bright dark quiet busy old new happy simple round sharp heavy light "
    "early late warm cold"
)
_PLACES = (
    "near the station",
    "in the morning",
    "after the rain",
    "on the table",
    "under the bridge",
    "at the market",
    "beside the river",
    "in the picture",
    "inside the house",
    "across the street",
)
_FIXED_LINES = (
    SYSTEM_PROMPT,
    "USER:",
    "ASSISTANT:",
    "system",
    "user",
    "assistant",
    "What color is the shape?",
    "What shape is in the image?",
    "Where is the shape?",
    "Answer the question using a single word or phrase.",
    "Describe the image briefly.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 2024",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I'm fine, thanks.",
)


def _builtin_corpus() -> Iterator[str]:
    """Yield the fixed training text: template strings plus a few hundred generated sentences.

    Generated with a fixed seed so the tokenizer is identical on every machine.
    """
    rng = random.Random(1234)
    nouns, verbs, adjectives = _NOUNS_TEXT.split(), _VERBS_TEXT.split(), _ADJECTIVES_TEXT.split()
    yield from _FIXED_LINES
    for colour, shape, position in itertools.product(COLOURS, SHAPES, POSITIONS):
        yield f"A {colour} {shape} in the {position}."
    for i in range(400):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        noun, other = rng.sample(nouns, 2)
        yield rng.choice(
            (
                f"The {rng.choice(adjectives)} {noun} {rng.choice(verbs)} "
                f"a {rng.choice(adjectives)} {other} {rng.choice(_PLACES)}.",
                f"USER: What is {a} plus {b}? ASSISTANT: {a + b}",
                f"Why does the {noun} look {rng.choice(adjectives)}? "
                f"Because it is {rng.choice(COLOURS)}.",
                f"Question {i}: is the {rng.choice(SHAPES)} {rng.choice(COLOURS)}? "
                f"Answer: {rng.choice(('yes', 'no'))}.",
                f"My {noun} and your {other} were {rng.choice(adjectives)} "
                f"{rng.choice(_PLACES)}, weren't they?",
            )
        )


def train_tiny_tokenizer(
    out_dir: Path, vocab_size: int = 1024, extra_text: Iterable[str] = ()
) -> Path:
    """Train a Llama-style sentencepiece BPE tokenizer and save it as a loadable folder.

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
        extra_text: Lines added to the built-in corpus.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: if ``vocab_size`` cannot hold the bytes, specials and every distinct
            character, or is more than the corpus can fill.
    """
    out_dir = Path(out_dir)
    lines = [line for line in itertools.chain(_builtin_corpus(), extra_text) if line.strip()]
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
