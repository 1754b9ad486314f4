"""LLaVA-format records (.json list or .jsonl) as a torch Dataset of tokenized, labelled samples.

A record is ``{"id": ..., "image": "a.jpg" | ["a.jpg", "b.jpg"] (optional),
"conversations": [{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt", ...}, ...]}``.

Image markers follow LLaVA: a record with one image has its marker moved to the front of its
turn (``"<image>\\n" + rest``, as LLaVA's ``preprocess_multimodal`` does, so ``"Q\\n<image>"``
data trains as LLaVA trained it), or gets ``"<image>\\n"`` prepended to its first human turn
if it has none; multi-image records keep their markers where they are (interleaved), and
their count must equal the number of images.

Every record is validated (``validate.check_record``, the checks ``mllm data check`` runs) and
tokenized once at construction, which decides up front which records survive. A bad record
(malformed, or over-long and not safely truncatable) is handled by the ``on_bad_record``
policy: ``fail`` raises one :class:`DataError` listing the first bad records and the total;
``skip`` drops them, counted and logged per kind, never silently replaced by another sample.
Image files are checked when a sample is loaded: under ``skip`` a sample whose image fails
comes back as a :class:`BadRecord`, which the collator drops from its batch and reports;
under ``fail`` it raises, naming the file, record and image path.
:meth:`ConversationDataset.check_image_files` applies the policy to image files up front
instead (headers only, in parallel), so a ``fail`` run stops before its first step.

The construction pass reads no images; it cost ~0.7 ms per record of ~200 text tokens on 2
busy CPU cores (~8 min for LLaVA-665k), and its tokenizer calls are batched, so the Rust side
uses every core. It also gives exact ``lengths`` for length-grouped sampling. ``__getitem__``
tokenizes again (same deterministic result) and loads the images (or reads their features from
a ``feature_cache``), so memory stays at the size of the records.

Under ``image_aspect_ratio: anyres`` (``mllm.data.anyres``) an image's placeholder count
depends on its size: the construction pass reads every image file's header once (no
decoding; ``mllm.data.anyres_counts``) to count exactly, and an image it cannot read makes
its record bad there. Bad records, their messages and logs are ``mllm.data.bad_records``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from mllm.data.anyres import ANYRES, AnyresSpec
from mllm.data.anyres_counts import HeaderTokenCounts
from mllm.data.bad_records import (
    BadRecord,
    BadRecordPolicy,
    data_files,
    fail_message,
    log_skipped,
    nothing_left_message,
    record_where,
)
from mllm.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_MODES,
    ImageLoadError,
    ImageMode,
    load_sample_image,
)
from mllm.data.records import DataError, RecordOrigin, read_files, record_images
from mllm.data.templates import DEFAULT_IMAGE_TOKEN, Template
from mllm.data.tokenize import (
    DroppedSample,
    TokenizedSample,
    check_tokenizer,
    tokenize_rendered,
)
from mllm.data.validate import CheckedRecord, RecordProblem, check_record

if TYPE_CHECKING:  # annotations only: keeps `import mllm.data` from loading transformers
    from transformers import PreTrainedTokenizerBase
    from transformers.image_processing_utils import BaseImageProcessor

    from mllm.data.feature_cache import FeatureCache
    from mllm.data.preflight.image_check import ImageResult

logger = logging.getLogger(__name__)

Record = Mapping[str, Any]

# Records tokenized per tokenizer call at construction: one call runs in parallel in Rust.
_CHUNK = 512


class ConversationDataset(Dataset):
    """LLaVA records as ``{"input_ids", "labels", "pixel_values"}`` samples.

    Attributes:
        lengths: per sample, the exact token count including image placeholders (from the
            construction pass), for length-grouped sampling.
        has_image: per sample, whether it has at least one image.
        dropped: a :class:`BadRecord` for every record skipped at construction (``skip``).
        truncated: how many kept samples are cut at the tail to ``max_length``.
        feature_cache: when set (``attach_feature_cache``), samples carry the frozen tower's
            ``image_features`` [num_images, P, D] ([0, P, D] text-only) from it instead of
            ``pixel_values``.
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
        on_bad_record: BadRecordPolicy = "fail",
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
        anyres: AnyresSpec | None = None,
    ) -> None:
        """Validate and tokenize every record once, applying the bad-record policy.

        Args:
            records: LLaVA records (see :func:`read_records`).
            template: conversation template.
            tokenizer: fast tokenizer with the image and template tokens added.
            image_processor: the vision tower's PIL image processor; may be ``None`` only if
                no record has an image.
            image_folder: image paths are relative to it and may not leave it (``None``:
                used as given, unconfined).
            image_mode: ``pad``, ``crop`` or ``resize`` (see ``prepare_image``), or
                ``anyres`` (``mllm.data.anyres``; needs ``anyres``).
            image_token: the image marker in the data and the tokenizer.
            num_image_tokens: placeholders per image.
            max_length: longest sample, image placeholders included.
            origins: where each record came from, for messages (default: ``<records>``).
            on_bad_record: ``fail`` raises for bad records (at construction) and unloadable
                images (when loaded); ``skip`` drops them, counted and logged.
            max_image_pixels: images whose header claims more pixels are refused unread.
            anyres: under ``anyres``, the grid resolutions and token arithmetic: each image's
                placeholder count follows from its size, read from its header here (an
                image that cannot be read is a bad record of its image kind).

        Raises:
            DataError: under ``fail``, listing the first bad records (file, record index, id,
                field, reason) and their count; under either policy when no record is left.
            TypeError, ValueError: for an unsuitable tokenizer, processor, image mode or
                policy.
        """
        if image_mode not in (*IMAGE_MODES, ANYRES):
            raise ValueError(
                f"unknown image mode {image_mode!r}; choose one of: "
                f"{', '.join((*IMAGE_MODES, ANYRES))}"
            )
        if (image_mode == ANYRES) != (anyres is not None):
            raise ValueError("image mode anyres and its AnyresSpec go together")
        if on_bad_record not in ("fail", "skip"):
            raise ValueError(f"on_bad_record must be 'fail' or 'skip', got {on_bad_record!r}")
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
        self.on_bad_record: BadRecordPolicy = on_bad_record
        self.max_image_pixels = max_image_pixels
        self.anyres = anyres
        self._origins = origins
        self.feature_cache: FeatureCache | None = None

        self._kept: list[int] = []
        self.lengths: list[int] = []
        self.has_image: list[bool] = []
        self.dropped: list[BadRecord] = []
        self.truncated = 0
        self._image_token_id = check_tokenizer(tokenizer, template, image_token=image_token)
        header_counts = None
        if anyres is not None:  # each image file's header read once, in threads
            header_counts = HeaderTokenCounts(anyres, self.image_folder, max_image_pixels)
        for first in range(0, len(records), _CHUNK):
            valid: list[int] = []
            rendered: list[tuple[str, list[tuple[int, int]]]] = []
            counts: list[list[int]] = []
            well_formed: list[tuple[int, CheckedRecord]] = []
            for index in range(first, min(first + _CHUNK, len(records))):
                checked = check_record(records[index], image_token=image_token, template=template)
                if isinstance(checked, RecordProblem):
                    reason = f"field {checked.field!r}: {checked.reason}"
                    self.dropped.append(BadRecord(self._where(index), checked.kind, reason))
                    continue
                well_formed.append((index, checked))
            per_record = None
            if header_counts is not None:
                images = [checked.images for _, checked in well_formed]
                per_record = header_counts.per_record(images)
            for position, (index, checked) in enumerate(well_formed):
                assert checked.rendered is not None  # a template was given
                if per_record is not None:
                    found = per_record[position]
                    if isinstance(found, ImageLoadError):
                        self.dropped.append(BadRecord.for_image(self._where(index), found))
                        continue
                    counts.append(found)
                valid.append(index)
                rendered.append(checked.rendered)
            tokenized = self._tokenize_rendered(rendered, counts if anyres else None)
            for index, sample in zip(valid, tokenized, strict=True):
                if isinstance(sample, DroppedSample):
                    self.dropped.append(BadRecord(self._where(index), sample.kind, sample.reason))
                    continue
                self._kept.append(index)
                self.lengths.append(len(sample.input_ids))
                self.has_image.append(sample.num_images > 0)
                self.truncated += sample.full_length > max_length
        if self.dropped and on_bad_record == "fail":
            raise DataError(fail_message(self.dropped, len(records)))
        if any(self.has_image) and image_processor is None:
            raise ValueError("records have images but no image_processor was given")
        if not self._kept:
            raise DataError(nothing_left_message(data_files(origins), len(records), self.dropped))
        log_skipped(self.dropped, len(records), logger)
        if self.truncated:
            logger.info(
                "%d of %d samples are longer than max_length=%d and cut at the tail",
                self.truncated,
                len(self._kept),
                max_length,
            )

    def check_image_files(self, workers: int = 1) -> int:
        """Check every kept sample's image files up front (headers only; parallel), applying
        the policy now instead of at load time: ``fail`` raises naming the records and image
        paths; ``skip`` removes those samples (added to ``dropped``).

        The same checks as ``mllm data check`` without ``--decode-images``: confinement,
        existence, empty files, unidentifiable data and the pixel limit (damage inside the
        pixel data is still found only when loaded).

        Returns:
            The number of samples removed.

        Raises:
            DataError: under ``fail``, if any image file is bad.
        """
        from mllm.data.preflight.image_check import ImageResult, inspect_all, locate

        users: dict[str, list[int]] = {}  # data path -> positions in _kept
        for position, record_index in enumerate(self._kept):
            for path in record_images(self.records[record_index]):
                users.setdefault(path, []).append(position)
        bad: dict[int, BadRecord] = {}
        files: dict[str, str] = {}  # data path -> file to inspect
        for path, positions in users.items():
            located = locate(self.image_folder, path)
            if isinstance(located, ImageResult):  # leaves the image folder
                for position in positions:
                    bad.setdefault(position, self._bad_image(position, path, located))
            else:
                files[path] = str(located)
        square = self.image_mode == "pad"
        checked = inspect_all(
            files.values(),
            max_pixels=self.max_image_pixels,
            decode=False,
            square=square,
            workers=workers,
        )
        for path, result in zip(files, checked, strict=True):
            if result.kind is not None and not result.warning:
                for position in users[path]:
                    bad.setdefault(position, self._bad_image(position, path, result))
        if not bad:
            return 0
        found = [bad[position] for position in sorted(bad)]
        if self.on_bad_record == "fail":
            self.dropped = found
            raise DataError(fail_message(self.dropped, len(self.records)))
        self.dropped.extend(found)
        keep = [position for position in range(len(self._kept)) if position not in bad]
        self._kept = [self._kept[position] for position in keep]
        self.lengths = [self.lengths[position] for position in keep]
        self.has_image = [self.has_image[position] for position in keep]
        if not self._kept:
            files = data_files(self._origins)
            raise DataError(f"{files}: no trainable records left after the image check")
        log_skipped(found, len(self.records), logger)
        return len(found)

    def image_paths(self) -> list[str]:
        """The kept samples' image paths (as in the records), each once, in order of use."""
        images = (record_images(self.records[i]) for i in self._kept)
        return list(dict.fromkeys(path for paths in images for path in paths))

    def _bad_image(self, position: int, path: str, result: ImageResult) -> BadRecord:
        where = self._where(self._kept[position])
        assert result.kind is not None
        return BadRecord(where, result.kind, f"field 'image': {path!r}: {result.reason}")

    @classmethod
    def from_files(
        cls, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> ConversationDataset:
        """Read one or more ``.json``/``.jsonl`` files into one dataset.

        Args:
            paths: data file(s), concatenated in order.
            **kwargs: the other arguments of the constructor.
        """
        records, origins = read_files(paths)
        return cls(records, origins=origins, **kwargs)

    def __len__(self) -> int:
        return len(self._kept)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | None] | BadRecord:
        """Returns ``input_ids`` [T], ``labels`` [T] (long) and ``pixel_values``
        [num_images, 3, H, W] (float) or ``None`` for a text-only sample (with a
        ``feature_cache``: ``image_features`` instead); under ``skip``, a :class:`BadRecord`
        if an image cannot be loaded.

        Raises:
            DataError: under ``fail``, if an image cannot be loaded (naming the file, record
                and image path).
        """
        record_index = self._kept[index]
        checked = check_record(
            self.records[record_index], image_token=self.image_token, template=self.template
        )
        if isinstance(checked, RecordProblem) or checked.rendered is None:  # deterministic
            raise RuntimeError(f"{self._where(record_index)} kept at construction but now bad")
        images: dict[str, torch.Tensor | None] = {"pixel_values": None}
        counts = None  # anyres: placeholders per image, from the sizes of the loaded images
        try:
            if self.feature_cache is not None:
                images = {"image_features": self.feature_cache.features(checked.images)}
            elif checked.images and self.anyres is not None:
                images, counts = self.anyres.load(
                    self.image_folder, checked.images, self.image_processor, self.max_image_pixels
                )
            elif checked.images:
                images["pixel_values"] = torch.stack([self._load(p) for p in checked.images])
        except ImageLoadError as err:
            bad = BadRecord.for_image(self._where(record_index), err)
            if self.on_bad_record == "fail":
                raise DataError(f"{bad.where}, {bad.reason}") from None
            return bad
        (sample,) = self._tokenize_rendered([checked.rendered], counts and [counts])
        if not isinstance(sample, TokenizedSample):  # tokenization is deterministic
            raise RuntimeError(f"{self._where(record_index)} kept at construction but now dropped")
        return {
            "input_ids": torch.tensor(sample.input_ids, dtype=torch.long),  # [T]
            "labels": torch.tensor(sample.labels, dtype=torch.long),  # [T]
            # pixel_values [num_images, 3, H, W] or None; or image_features; anyres:
            # pixel_values [num_tiles, 3, H, W], image_sizes and image_grids [num_images, 2]
            **images,
        }

    def kept_record(self, index: int) -> tuple[Record, str]:
        """Sample ``index``'s record and where it came from (``file: record N (id X)``)."""
        record_index = self._kept[index]
        return self.records[record_index], self._where(record_index)

    def _tokenize_rendered(
        self,
        rendered: list[tuple[str, list[tuple[int, int]]]],
        counts: list[list[int]] | None = None,
    ) -> list[TokenizedSample | DroppedSample]:
        return tokenize_rendered(
            rendered,
            self.tokenizer,
            image_token_id=self._image_token_id,
            num_image_tokens=self.num_image_tokens,
            max_length=self.max_length,
            image_token_counts=counts,
        )

    def _load(self, path: str) -> torch.Tensor:
        """One image as ``[3, H, W]``; raises ImageLoadError (path, size, decoding)."""
        assert self.image_processor is not None  # checked at construction
        return load_sample_image(
            self.image_folder, path, self.image_processor, self.image_mode, self.max_image_pixels
        )

    def _where(self, record_index: int) -> str:
        """``file: record N (id X)`` for messages."""
        return record_where(self.records, self._origins, record_index)
