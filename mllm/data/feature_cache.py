"""Features of a frozen vision tower, computed once per image and read from disk afterwards.

With the tower frozen and image preparation deterministic, the tower's output per image is the
same at every epoch and in every re-run (projector or learning-rate sweeps over one alignment
set), so it is worth computing once. A cache is one folder::

    index.json     fingerprint, row shape [P, D], dtype, image path (as in the records) -> row,
                   and images that could not be read when it was built (kind, reason)
    features.bin   rows of [P, D] back to back, exactly what ``model.vision(pixel_values)``
                   returns; memory-mapped when read (``torch.from_file``), never loaded whole

The fingerprint holds everything that decides the features: the tower's recipe section and
transformers config, a digest of its weights (a different checkpoint at the same path shows),
the image processor's settings, ``image_aspect_ratio`` and the stored dtype. A folder with
another fingerprint is never reused nor touched: the error lists the fields that differ.

A build writes into ``FOLDER.partial-PID`` and renames it to ``FOLDER`` when complete, so an
interrupted build never leaves a folder that looks valid. A training stage builds and opens its
cache through ``mllm.training.setup.attach_feature_cache`` (rank 0 builds, ZeRO-3 gathers).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mllm.data.images import (
    ImageLoadError,
    ImagePathError,
    ImageTooLargeError,
    image_error_kind,
    load_sample_image,
)

if TYPE_CHECKING:
    from mllm.data.dataset import ConversationDataset
    from mllm.models.vision.base import VisionTower

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
FEATURES_NAME = "features.bin"
#: Bumped when the folder layout or the meaning of the fingerprint changes.
FORMAT_VERSION = 1
#: Images per tower call while building.
BUILD_BATCH_SIZE = 64
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Encoder config keys that do not change the features (the dtype is a field of its own).
_NOT_FEATURES = ("transformers_version", "dtype", "torch_dtype")
#: Errors recorded at build time are raised again as the class the image code raised.
_ERRORS = {"image_too_large": ImageTooLargeError, "image_path_unsafe": ImagePathError}
_LISTED = 5


class FeatureCacheError(ValueError):
    """A cache folder that does not fit this stage; the message names the folder and the fix."""


def weights_digest(module: nn.Module) -> str:
    """A hash of every parameter and buffer of ``module`` (names, dtypes, shapes, bytes).

    About a second per GB; the parameters must hold their full data (gathered under ZeRO-3).
    """
    digest = hashlib.blake2b(digest_size=16)
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def feature_fingerprint(tower: VisionTower, processor: Any, image_mode: str) -> dict[str, Any]:
    """What decides the tower's features per image, as plain JSON values.

    Args:
        tower: the vision tower (parameters gathered under ZeRO-3).
        processor: the image processor that prepares the images.
        image_mode: the stage's ``data.image_aspect_ratio``.
    """
    encoder = tower.encoder.config
    encoder_config = {
        key: value
        for key, value in encoder.to_dict().items()
        if not key.startswith("_") and key not in _NOT_FEATURES
    }
    encoder_config["attn_implementation"] = encoder._attn_implementation
    processor_config = {k: v for k, v in processor.to_dict().items() if not k.startswith("_")}
    fingerprint = {
        "format": FORMAT_VERSION,
        "vision": tower.config.model_dump(mode="json"),
        "encoder": encoder_config,
        "weights": weights_digest(tower),
        "image_processor": processor_config,
        "image_aspect_ratio": image_mode,
        "dtype": _dtype_name(next(tower.parameters()).dtype),
    }
    return json.loads(json.dumps(fingerprint, default=str))  # tuples -> lists, as when read


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise FeatureCacheError(f"cannot cache features of dtype {dtype}; use one of {_DTYPES}")
    return name


class FeatureCache:
    """An opened cache folder: image path -> ``[P, D]`` features, read from the mapped file.

    Picklable for DataLoader workers: the mapping is dropped and reopened in each process.

    Attributes:
        folder: the cache folder.
        shape: ``(P, D)``, tokens and width of one image's features.
        dtype: the stored dtype (the tower's).
        rows: image path as written in the records -> row of ``features.bin``.
        unreadable: image path -> ``{"kind", "reason"}`` for images that failed to load.
    """

    def __init__(self, folder: Path, index: dict[str, Any]) -> None:
        self.folder = folder
        self.fingerprint: dict[str, Any] = index["fingerprint"]
        self.shape: tuple[int, int] = tuple(index["shape"])
        self.dtype = _DTYPES[index["dtype"]]
        self.rows: dict[str, int] = index["rows"]
        self.unreadable: dict[str, dict[str, str]] = index["unreadable"]
        self._table: torch.Tensor | None = None

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike[str],
        fingerprint: dict[str, Any] | None = None,
        key: str = "data.feature_cache",
    ) -> FeatureCache:
        """Open ``folder``, checked against ``fingerprint`` when one is given.

        Raises:
            FeatureCacheError: no cache there, a damaged one, or one whose fingerprint differs
                (naming the differing fields); the folder is left as it is.
        """
        folder = Path(folder)
        index_path = folder / INDEX_NAME
        if not index_path.is_file():
            raise FeatureCacheError(
                f"{key}: {folder} is not a feature cache (no {INDEX_NAME}); choose a folder "
                "that does not exist yet, and it is built there"
            )
        index = json.loads(index_path.read_text())
        if fingerprint is not None and index.get("fingerprint") != fingerprint:
            raise FeatureCacheError(
                f"{key}: {folder} holds features of another tower or preprocessing; differing: "
                f"{_differences(index.get('fingerprint', {}), fingerprint)}. It is left as it "
                "is: choose another folder, or delete this one to rebuild it"
            )
        cache = cls(folder, index)
        expected = len(cache.rows) * cache.shape[0] * cache.shape[1] * cache.dtype.itemsize
        data_file = folder / FEATURES_NAME
        size = data_file.stat().st_size if data_file.is_file() else None
        if size != expected:
            raise FeatureCacheError(
                f"{key}: {data_file} holds {size or 0} bytes where its index says {expected}: "
                "the cache is damaged; delete it to rebuild it"
            )
        return cache

    def check_covers(self, paths: Sequence[str], *, key: str, fail_unreadable: bool) -> None:
        """Check that every image of a dataset has features here (or a recorded failure).

        Raises:
            FeatureCacheError: images this cache never saw (count and the first few), or,
                with ``fail_unreadable``, images that failed to load when it was built.
        """
        missing = [path for path in paths if path not in self.rows and path not in self.unreadable]
        if missing:
            raise FeatureCacheError(
                f"{key}: {self.folder} (same tower and preprocessing) has no features for "
                f"{len(missing)} of the {len(paths)} images of this stage's data, e.g. "
                f"{', '.join(map(repr, missing[:_LISTED]))}: it was built for other data. "
                "Choose another folder, or delete this one to rebuild it for this data"
            )
        bad = [path for path in paths if path in self.unreadable]
        if bad and fail_unreadable:
            listed = "; ".join(self.unreadable[path]["reason"] for path in bad[:_LISTED])
            raise FeatureCacheError(
                f"{key}: {len(bad)} images of this stage's data could not be read when "
                f"{self.folder} was built (data.on_bad_record is 'fail'; 'skip' drops their "
                f"samples): {listed}"
            )

    def features(self, paths: Sequence[str]) -> torch.Tensor:
        """``[len(paths), P, D]`` features (a copy), in the order of ``paths``.

        Raises:
            ImageLoadError: an image that failed to load when the cache was built (its
                original kind: too large, unsafe path, missing, unreadable).
            FeatureCacheError: an image the cache never saw.
        """
        rows = []
        for path in paths:
            if path in self.rows:
                rows.append(self.rows[path])
                continue
            failure = self.unreadable.get(path)
            if failure is None:
                raise FeatureCacheError(f"{self.folder} has no features for image {path!r}")
            error = _ERRORS.get(failure["kind"], ImageLoadError)(failure["reason"])
            if failure["kind"] == "image_missing":
                error.__cause__ = FileNotFoundError(path)
            raise error
        if not rows:
            return torch.empty((0, *self.shape), dtype=self.dtype)
        return self._mapped()[torch.tensor(rows)]  # [n, P, D]

    def _mapped(self) -> torch.Tensor:
        if self._table is None:
            count, (tokens, width) = len(self.rows), self.shape
            self._table = torch.from_file(
                str(self.folder / FEATURES_NAME),
                shared=False,  # private mapping: pages load on first read, writes stay here
                size=count * tokens * width,
                dtype=self.dtype,
            ).view(count, tokens, width)
        return self._table

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_table": None}


def _differences(cached: dict[str, Any], current: dict[str, Any]) -> str:
    old, new = _flatten(cached), _flatten(current)
    fields = [key for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    return ", ".join(
        f"{key} (cached {_short(old.get(key, 'absent'))}, now {_short(new.get(key, 'absent'))})"
        for key in fields
    )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
    return flat


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _load_images(dataset: ConversationDataset, paths: list[str]) -> tuple[list[str], Any, list]:
    """A batch of images, prepared by the dataset's own image code (the DataLoader's collate
    function, so workers run it): loaded paths, their pixels [n, 3, H, W] or None, failures."""
    loaded, failed = {}, []
    for path in paths:
        try:
            loaded[path] = load_sample_image(
                dataset.image_folder,
                path,
                dataset.image_processor,
                dataset.image_mode,
                dataset.max_image_pixels,
            )  # [3, H, W]
        except ImageLoadError as err:
            failed.append((path, {"kind": image_error_kind(err), "reason": str(err)}))
    return list(loaded), torch.stack(list(loaded.values())) if loaded else None, failed


def build_feature_cache(
    folder: str | os.PathLike[str],
    tower: VisionTower,
    dataset: ConversationDataset,
    fingerprint: dict[str, Any],
    *,
    batch_size: int = BUILD_BATCH_SIZE,
    num_workers: int = 0,
    fail_unreadable: bool = True,
) -> Path:
    """Run ``tower`` over the distinct images of ``dataset`` and write the cache ``folder``.

    The tower runs in eval mode under ``torch.no_grad()``, on CUDA when there is one (moved
    there and back unless ZeRO-3 partitioned it), in its own dtype, exactly as the model
    calls it; the images are prepared in a DataLoader with ``num_workers`` processes.

    Args:
        folder: where the cache goes; must not exist.
        tower: the frozen vision tower (parameters gathered under ZeRO-3).
        dataset: the stage's dataset; its kept samples' images are cached.
        fingerprint: from :func:`feature_fingerprint` for this tower and dataset.
        batch_size: images per tower call.
        num_workers: DataLoader processes that load and prepare images.
        fail_unreadable: stop at the first image that fails to load (``on_bad_record:
            fail``) instead of recording it.

    Returns:
        ``folder``, complete.

    Raises:
        FeatureCacheError: ``folder`` exists, or an image failed with ``fail_unreadable``.
    """
    folder = Path(folder)
    if folder.exists():
        raise FeatureCacheError(f"{folder} exists; a cache is only built into a new folder")
    staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    paths = dataset.image_paths()
    loader = DataLoader(
        paths,
        batch_size,
        num_workers=num_workers,
        collate_fn=functools.partial(_load_images, dataset),
    )
    shape = [tower.num_patches, tower.hidden_size]
    rows: dict[str, int] = {}
    unreadable: dict[str, dict[str, str]] = {}
    dtype = next(tower.parameters()).dtype
    staging.mkdir(parents=True)
    try:
        with _build_device(tower) as device, open(staging / FEATURES_NAME, "wb") as out:
            for names, pixels, failed in tqdm(loader, desc=f"caching {folder.name}", unit="batch"):
                if failed and fail_unreadable:
                    reason = failed[0][1]["reason"]
                    raise FeatureCacheError(
                        f"cannot build {folder}: {reason} (data.on_bad_record is 'fail')"
                    )
                unreadable.update(failed)
                if pixels is None:
                    continue
                with torch.no_grad():
                    features = tower(pixels.to(device, dtype))  # [n, P, D]
                if list(features.shape[1:]) != shape:
                    raise FeatureCacheError(
                        f"the tower returned features of shape {list(features.shape)}, "
                        f"expected [n, {shape[0]}, {shape[1]}]"
                    )
                out.write(features.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
                first = len(rows)
                rows.update((path, first + i) for i, path in enumerate(names))
            out.flush()
            os.fsync(out.fileno())
        index = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "shape": shape,
            "dtype": _dtype_name(dtype),
            "rows": rows,
            "unreadable": unreadable,
        }
        (staging / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        staging.rename(folder)  # complete: only now does FOLDER exist
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / INDEX_NAME).is_file():
            raise
        logger.warning("%s was built by another run meanwhile; using that one", folder)
    return folder


@contextlib.contextmanager
def _build_device(tower: nn.Module) -> Iterator[torch.device]:
    """The tower in eval mode and on CUDA when there is one (unless ZeRO-3 placed it); yields
    the device its inputs go to, and puts it back as it was on exit."""
    home = next(tower.parameters()).device
    partitioned = any(hasattr(p, "ds_id") for p in tower.parameters())
    device = home
    if torch.cuda.is_available() and not partitioned:
        device = torch.device("cuda", torch.cuda.current_device())
    training = tower.training
    tower.eval()
    if device != home:
        tower.to(device)
    try:
        yield device
    finally:
        tower.train(training)
        if device != home:
            tower.to(home)
