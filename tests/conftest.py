"""Shared, session-scoped fixtures: a tiny tokenizer and tiny image processors, built offline,
and (from the ``trained_shapes`` plugin) a tiny model trained on the shapes task."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from mllm.data.templates import DEFAULT_IMAGE_TOKEN, TEMPLATES
from mllm.tiny import make_tiny_vision_tower, train_tiny_tokenizer

# One ``trained_shapes`` fixture for the whole session: the model trains once, on first use.
pytest_plugins = ["trained_shapes"]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def with_template_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add ``<image>`` and every template's special tokens, as the model builder adds them."""
    wanted = [DEFAULT_IMAGE_TOKEN]
    for name in TEMPLATES.names():
        wanted.extend(TEMPLATES.get(name).target.special_tokens)
    vocab = tokenizer.get_vocab()
    missing = list(dict.fromkeys(token for token in wanted if token not in vocab))
    tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer


@pytest.fixture(scope="session")
def tokenizer(tiny_tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    """The tiny Llama-2-style tokenizer with ``<image>`` and every template's tokens added.

    Trained on general text (byte fallback, split digits); tests must not add more tokens.
    """
    return with_template_tokens(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))


@pytest.fixture(scope="session")
def llama3_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """A tiny Llama-3-style byte-level BPE on general text, template tokens added."""
    folder = train_tiny_tokenizer(tmp_path_factory.mktemp("byte_level"), kind="byte_level")
    return with_template_tokens(AutoTokenizer.from_pretrained(folder))


@pytest.fixture(scope="session")
def clip_processor(tmp_path_factory: pytest.TempPathFactory) -> BaseImageProcessor:
    """CLIP processor of a 64-pixel tiny tower: shortest edge 64, centre crop 64x64."""
    folder = make_tiny_vision_tower(tmp_path_factory.mktemp("clip"), "clip", image_size=64)
    return AutoImageProcessor.from_pretrained(folder, backend="pil")


@pytest.fixture(scope="session")
def siglip_processor(tmp_path_factory: pytest.TempPathFactory) -> BaseImageProcessor:
    """SigLIP processor of a 32-pixel tiny tower: stretch to 32x32, mean 0.5."""
    folder = make_tiny_vision_tower(
        tmp_path_factory.mktemp("siglip"), "siglip", image_size=32, patch_size=8
    )
    return AutoImageProcessor.from_pretrained(folder, backend="pil")
