"""Anyres placeholder counts of records, read from their image files' headers.

Under ``image_aspect_ratio: anyres`` a sample's length depends on the sizes of its images, so
the dataset must know every image's size before it tokenizes anything, yet without decoding a
pixel. That is file I/O with its own concerns -- headers read in threads, each file once per
data set, an unreadable image making its record bad -- apart from both the tiling arithmetic
(``mllm.data.anyres``) and the dataset's tokenizing and bad-record policy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mllm.data.anyres import AnyresSpec, read_header_sizes
from mllm.data.images import ImageLoadError


class HeaderTokenCounts:
    """Counts each record's anyres placeholders per image; remembers every size it reads.

    Args:
        spec: the stage's grids and token arithmetic.
        image_folder: image paths are relative to it and may not leave it (``None``: as given).
        max_image_pixels: images whose header claims more pixels are refused.
    """

    def __init__(
        self,
        spec: AnyresSpec,
        image_folder: str | os.PathLike[str] | None,
        max_image_pixels: int | None,
    ) -> None:
        self.spec = spec
        self.image_folder = image_folder
        self.max_image_pixels = max_image_pixels
        self._sizes: dict[str, tuple[int, int] | ImageLoadError] = {}  # each file once

    def per_record(self, images: Sequence[Sequence[str]]) -> list[list[int] | ImageLoadError]:
        """Per record (its image paths), the placeholders of each image, or the error of the
        first image that cannot be read. The headers not yet read are read in parallel threads
        (the work is I/O-bound)."""
        paths = [path for record_paths in images for path in record_paths]
        read_header_sizes(self.image_folder, paths, self._sizes, self.max_image_pixels)
        counts: list[list[int] | ImageLoadError] = []
        for record_paths in images:
            try:
                counts.append(
                    self.spec.header_counts(
                        self.image_folder, record_paths, self._sizes, self.max_image_pixels
                    )
                )
            except ImageLoadError as err:
                counts.append(err)
        return counts
