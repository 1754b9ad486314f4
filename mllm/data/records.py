"""Reading LLaVA data files (``.json`` list or ``.jsonl``) into records, and where each came from."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm.data.validate import InvalidJson

Record = Mapping[str, Any]


class DataError(ValueError):
    """Malformed data; the message names the file, record (index and id) and field."""


@dataclass(frozen=True, slots=True)
class RecordOrigin:
    """Where a record came from, for error messages."""

    file: str
    index: int  # position in its file (0-based; in .jsonl, among the non-blank lines)


def read_records(path: str | os.PathLike[str], *, keep_invalid: bool = False) -> list[Any]:
    """Read LLaVA records from a ``.json`` file (one list) or a ``.jsonl`` file (one per line).

    Args:
        path: the data file.
        keep_invalid: keep what is not a record instead of raising: a ``.jsonl`` line that
            does not parse becomes an :class:`~mllm.data.validate.InvalidJson`, and values
            that are not objects are returned as they are, so that the bad-record policy can
            report or skip them with every other record keeping its index.

    Raises:
        DataError: for another extension, invalid JSON in a ``.json`` file (with the line and
            column), a ``.json`` file that is not a list; unless ``keep_invalid``, an invalid
            ``.jsonl`` line or a record that is not an object.
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
        if not keep_invalid:
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
                    record = json.loads(line.rstrip("\r\n"))  # columns count on this line
                except json.JSONDecodeError as err:
                    if keep_invalid:
                        records.append(InvalidJson(line_number, err.colno, err.msg))
                        continue
                    raise DataError(
                        f"{path}: line {line_number}: invalid JSON at column {err.colno}: {err.msg}"
                    ) from None
                if not isinstance(record, dict) and not keep_invalid:
                    raise DataError(
                        f"{path}: line {line_number} is a {type(record).__name__}, not an object"
                    )
                records.append(record)
        return records
    raise DataError(f"{path}: unknown data file type {suffix!r}; use .json or .jsonl")


def read_files(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[list[Any], list[RecordOrigin]]:
    """Every record of ``paths`` in order, invalid ones kept (see :func:`read_records`), and
    where each came from."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records: list[Any] = []
    origins: list[RecordOrigin] = []
    for path in paths:
        file_records = read_records(path, keep_invalid=True)
        records.extend(file_records)
        origins.extend(RecordOrigin(str(path), index) for index in range(len(file_records)))
    return records, origins


def hold_out(count: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """Split record positions ``0..count-1`` into (kept for training, held out), both sorted.

    ``round(share * count)`` positions (at least one, and one fewer than ``count`` at most)
    are drawn with ``seed`` alone, so every rank, every resume and every world size holds out
    the same records.

    Raises:
        DataError: fewer than two records, so none could be held out and some still trained.
    """
    if count < 2:
        raise DataError(f"cannot hold out a validation share of {count} record(s)")
    size = min(max(1, round(share * count)), count - 1)
    held = sorted(random.Random(seed).sample(range(count), size))
    chosen = set(held)
    return [index for index in range(count) if index not in chosen], held


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
