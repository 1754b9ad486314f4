"""LLaVA-format records (.json list or .jsonl) as a torch Dataset of tokenized, labelled samples.

A record is ``{"id": ..., "image": "a.jpg" | ["a.jpg", "b.jpg"] (optional),
"conversations": [{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt", ...}, ...]}``.

Image markers follow LLaVA: a record with one image has its marker moved to the front of its
turn (``"<image>\\n" + rest``, as LLaVA's ``preprocess_multimodal`` does, so ``"Q\\n<image>"``
data trains as LLaVA trained it), or gets ``"<image>\\n"`` prepended to its first human turn
if it has none; multi-image records keep their markers where they are (interleaved), and
their count must equal the number of images.

Every record is validated and tokenized once at construction, which decides up front which
records survive: over-long ones that cannot be truncated safely are excluded and reported in
one log line with their reasons, never silently replaced by another sample. This pass reads
no images; it cost ~0.7 ms per record of ~200 text tokens on 2 busy CPU cores (~8 min for
LLaVA-665k), and its tokenizer calls are batched, so the Rust side uses every core. It also
gives exact ``lengths`` for length-grouped sampling. ``__getitem__`` tokenizes again (same
deterministic result) and loads the images, so memory stays at the size of the records.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from mllm.data.images import IMAGE_MODES, ImageLoadError, ImageMode, load_image, prepare_image
from mllm.data.templates import DEFAULT_IMAGE_TOKEN, ConversationError, Template
from mllm.data.tokenize import (
    DroppedSample,
    TokenizedSample,
    check_tokenizer,
    render_text,
    tokenize_rendered,
)

if TYPE_CHECKING:  # annotations only: keeps `import mllm.data` from loading transformers
    from transformers import PreTrainedTokenizerBase
    from transformers.image_processing_utils import BaseImageProcessor

logger = logging.getLogger(__name__)

Record = Mapping[str, Any]

# Records tokenized per tokenizer call at construction: one call runs in parallel in Rust.
_CHUNK = 512


class DataError(ValueError):
    """Malformed data; the message names the file, record (index and id) and field."""


@dataclass(frozen=True, slots=True)
class RecordOrigin:
    """Where a record came from, for error messages."""

    file: str
    index: int  # position in its file (0-based; JSONL line numbers are reported separately)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read LLaVA records from a ``.json`` file (one list) or a ``.jsonl`` file (one per line).

    Raises:
        DataError: for another extension, invalid JSON (with the file and line), a ``.json``
            file that is not a list, or a record that is not an object.
        OSError: if the file cannot be read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        with path.open(encoding="utf-8") as file:
            try:
                records = json.load(file)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
                ) from None
        if not isinstance(records, list):
            raise DataError(
                f"{path}: a .json data file must hold a list of records, "
                f"got {type(records).__name__}"
            )
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise DataError(
                    f"{path}: record {index} is a {type(record).__name__}, not an object"
                )
        return records
    if suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as file:
            for line_number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{path}: line {line_number}: invalid JSON at column {err.colno}: {err.msg}"
                    ) from None
                if not isinstance(record, dict):
                    raise DataError(
                        f"{path}: line {line_number} is a {type(record).__name__}, not an object"
                    )
                records.append(record)
        return records
    raise DataError(f"{path}: unknown data file type {suffix!r}; use .json or .jsonl")


def record_images(record: Record) -> list[str]:
    """The record's image paths: ``image`` as a string or a list of strings, or none.

    Raises:
        ValueError: for another type.
    """
    image = record.get("image")
    if image is None:
        return []
    if isinstance(image, str):
        return [image]
    if isinstance(image, list) and all(isinstance(item, str) for item in image):
        return list(image)
    raise ValueError(f"'image' must be a path or a list of paths, got {image!r}")


def place_image_markers(
    conversation: Sequence[Mapping[str, Any]], num_images: int, image_token: str
) -> list[dict[str, Any]]:
    """Put image markers where LLaVA puts them (see the module docstring); returns a copy.

    Raises:
        ConversationError: if the number of markers differs from ``num_images``.
    """
    # Non-dict turns are copied as they are; the template's validation reports them.
    turns = [dict(turn) if isinstance(turn, Mapping) else turn for turn in conversation]
    values = [turn.get("value") for turn in turns if isinstance(turn, dict)]
    count = sum(value.count(image_token) for value in values if isinstance(value, str))
    if num_images == 1 and not count:
        first_human = next(
            (
                i
                for i, turn in enumerate(turns)
                if isinstance(turn, dict) and str(turn.get("from", "")).lower() != "system"
            ),
            None,
        )
        if first_human is not None and isinstance(turns[first_human].get("value"), str):
            turns[first_human]["value"] = f"{image_token}\n{turns[first_human]['value']}"
            count = 1
    elif num_images == 1 and count == 1:
        for turn in turns:
            value = turn.get("value") if isinstance(turn, dict) else None
            if isinstance(value, str) and image_token in value:
                turn["value"] = f"{image_token}\n{value.replace(image_token, '').strip()}"
    if count != num_images:
        raise ConversationError(
            f"the conversation has {count} {image_token!r} markers but the record has "
            f"{num_images} image(s)"
        )
    return turns


class ConversationDataset(Dataset):
    """LLaVA records as ``{"input_ids", "labels", "pixel_values"}`` samples.

    Attributes:
        lengths: per sample, the exact token count including image placeholders (from the
            construction pass), for length-grouped sampling.
        has_image: per sample, whether it has at least one image.
        dropped: ``(where, kind, reason)`` for every record excluded at construction.
    """

    def __init__(
        self,
        records: Sequence[Record],
        *,
        template: Template,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: BaseImageProcessor | None,
        image_folder: str | os.PathLike[str] | None,
        image_mode: ImageMode,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        num_image_tokens: int,
        max_length: int,
        origins: Sequence[RecordOrigin] | None = None,
    ) -> None:
        """Validate and tokenize every record once, keeping those that fit.

        Args:
            records: LLaVA records (see :func:`read_records`).
            template: conversation template.
            tokenizer: fast tokenizer with the image and template tokens added.
            image_processor: the vision tower's PIL image processor; may be ``None`` only if
                no record has an image.
            image_folder: image paths are relative to it (``None``: used as given).
            image_mode: ``pad``, ``crop`` or ``resize`` (see ``prepare_image``).
            image_token: the image marker in the data and the tokenizer.
            num_image_tokens: placeholders per image.
            max_length: longest sample, image placeholders included.
            origins: where each record came from, for messages (default: ``<records>``).

        Raises:
            DataError: for a malformed record, naming the file, record index, id and field,
                or when no record is left to train on.
            TypeError, ValueError: for an unsuitable tokenizer, processor or image mode.
        """
        if image_mode not in IMAGE_MODES:
            raise ValueError(
                f"unknown image mode {image_mode!r}; choose one of: {', '.join(IMAGE_MODES)}"
            )
        if origins is not None and len(origins) != len(records):
            raise ValueError(f"{len(origins)} origins for {len(records)} records")
        self.records = records
        self.template = template
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_folder = None if image_folder is None else Path(image_folder)
        self.image_mode: ImageMode = image_mode
        self.image_token = image_token
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self._origins = origins

        self._kept: list[int] = []
        self.lengths: list[int] = []
        self.has_image: list[bool] = []
        self.dropped: list[tuple[str, str, str]] = []
        self._image_token_id = check_tokenizer(tokenizer, template, image_token=image_token)
        for first in range(0, len(records), _CHUNK):
            indices = range(first, min(first + _CHUNK, len(records)))
            samples = self._tokenize_rendered([self._render(index) for index in indices])
            for index, sample in zip(indices, samples, strict=True):
                if isinstance(sample, DroppedSample):
                    self.dropped.append((self._where(index), sample.kind, sample.reason))
                    continue
                self._kept.append(index)
                self.lengths.append(len(sample.input_ids))
                self.has_image.append(sample.num_images > 0)
        if any(self.has_image) and image_processor is None:
            raise ValueError("records have images but no image_processor was given")
        if not self._kept:
            files = sorted({origin.file for origin in origins or ()}) or ["<records>"]
            raise DataError(
                f"{', '.join(files)}: no trainable records ({len(records)} read, "
                f"{len(self.dropped)} too long for max_length={max_length})"
            )
        if self.dropped:
            reasons = Counter(kind for _, kind, _ in self.dropped)
            summary = "; ".join(f"{count} {kind}" for kind, count in reasons.most_common())
            examples = "; ".join(f"{where}: {reason}" for where, _, reason in self.dropped[:3])
            logger.warning(
                "dropped %d of %d records that do not fit max_length=%d (%s). First: %s",
                len(self.dropped),
                len(records),
                max_length,
                summary,
                examples,
            )

    @classmethod
    def from_files(
        cls, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> ConversationDataset:
        """Read one or more ``.json``/``.jsonl`` files into one dataset.

        Args:
            paths: data file(s), concatenated in order.
            **kwargs: the other arguments of the constructor.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        records: list[dict[str, Any]] = []
        origins: list[RecordOrigin] = []
        for path in paths:
            file_records = read_records(path)
            records.extend(file_records)
            origins.extend(RecordOrigin(str(path), index) for index in range(len(file_records)))
        return cls(records, origins=origins, **kwargs)

    def __len__(self) -> int:
        return len(self._kept)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | None]:
        """Returns ``input_ids`` [T], ``labels`` [T] (long) and ``pixel_values``
        [num_images, 3, H, W] (float) or ``None`` for a text-only sample.

        Raises:
            DataError: if an image cannot be loaded (naming the record and the path).
        """
        record_index = self._kept[index]
        (sample,) = self._tokenize_rendered([self._render(record_index)])
        if not isinstance(sample, TokenizedSample):  # tokenization is deterministic
            raise RuntimeError(f"{self._where(record_index)} kept at construction but now dropped")
        paths = record_images(self.records[record_index])
        pixel_values = None
        if paths:
            pixel_values = torch.stack([self._load(record_index, path) for path in paths])
        return {
            "input_ids": torch.tensor(sample.input_ids, dtype=torch.long),  # [T]
            "labels": torch.tensor(sample.labels, dtype=torch.long),  # [T]
            "pixel_values": pixel_values,  # [num_images, 3, H, W] or None
        }

    def _render(self, record_index: int) -> tuple[str, list[tuple[int, int]]]:
        """Validate a record and render its text and target spans."""
        record = self.records[record_index]
        if not isinstance(record, Mapping):
            raise DataError(f"{self._where(record_index)}: the record is not an object")
        try:
            images = record_images(record)
        except ValueError as err:
            raise DataError(f"{self._where(record_index)}, field 'image': {err}") from None
        conversation = record.get("conversations")
        if not isinstance(conversation, list):
            raise DataError(
                f"{self._where(record_index)}, field 'conversations': expected a list of turns, "
                f"got {type(conversation).__name__}"
            )
        try:
            conversation = place_image_markers(conversation, len(images), self.image_token)
            return render_text(conversation, self.template, image_token=self.image_token)
        except ConversationError as err:
            raise DataError(f"{self._where(record_index)}, field 'conversations': {err}") from None

    def _tokenize_rendered(
        self, rendered: list[tuple[str, list[tuple[int, int]]]]
    ) -> list[TokenizedSample | DroppedSample]:
        return tokenize_rendered(
            rendered,
            self.tokenizer,
            image_token_id=self._image_token_id,
            num_image_tokens=self.num_image_tokens,
            max_length=self.max_length,
        )

    def _load(self, record_index: int, path: str) -> torch.Tensor:
        full_path = path if self.image_folder is None else self.image_folder / path
        try:
            image = load_image(full_path)
        except ImageLoadError as err:
            raise DataError(f"{self._where(record_index)}, field 'image': {err}") from None
        assert self.image_processor is not None  # checked at construction
        return prepare_image(image, self.image_processor, self.image_mode)  # [3, H, W]

    def _where(self, record_index: int) -> str:
        """``file: record N (id X)`` for messages."""
        if self._origins is None:
            file, index = "<records>", record_index
        else:
            origin = self._origins[record_index]
            file, index = origin.file, origin.index
        record = self.records[record_index]
        record_id = record.get("id") if isinstance(record, Mapping) else None
        return f"{file}: record {index} (id {record_id!r})"
