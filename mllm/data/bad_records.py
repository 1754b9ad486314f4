"""Records left out of training: what one is, where it came from, and how the run says so.

This stands apart from the dataset because more than the dataset speaks of bad records:
the collators drop them from batches, the trainer counts the ones found at load time, and
every message must name the same ``file: record N (id X)`` and kind, whether a record fails
at construction, in the up-front image check or when its image is loaded.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from mllm.data.images import ImageLoadError, image_error_kind
from mllm.data.records import RecordOrigin

BadRecordPolicy = Literal["fail", "skip"]

# Bad records listed in a `fail` error; the rest are counted.
_LISTED = 20


class BadRecord(NamedTuple):
    """A record left out of training: where (``file: record N (id X)``), kind and reason.

    Also what ``ConversationDataset.__getitem__`` returns under ``skip`` for a sample whose
    image cannot be loaded; :class:`~mllm.data.collator.DataCollator` drops it from the batch.
    """

    where: str
    kind: str
    reason: str

    @classmethod
    def for_image(cls, where: str, err: ImageLoadError) -> BadRecord:
        """The record at ``where``, left out because an image of it cannot be read."""
        return cls(where, image_error_kind(err), f"field 'image': {err}")


def record_where(
    records: Sequence[Mapping[str, Any]],
    origins: Sequence[RecordOrigin] | None,
    record_index: int,
) -> str:
    """``file: record N (id X)`` for messages (``<records>`` when no origins are known)."""
    if origins is None:
        file, index = "<records>", record_index
    else:
        origin = origins[record_index]
        file, index = origin.file, origin.index
    record = records[record_index]
    record_id = record.get("id") if isinstance(record, Mapping) else None
    return f"{file}: record {index} (id {record_id!r})"


def data_files(origins: Sequence[RecordOrigin] | None) -> str:
    """The data files the records came from, sorted, for messages."""
    return ", ".join(sorted({origin.file for origin in origins or ()}) or ["<records>"])


def fail_message(dropped: Sequence[BadRecord], total: int) -> str:
    """The ``fail`` policy's error: the first bad records, one a line, and their count."""
    files = ", ".join(dict.fromkeys(bad.where.rsplit(": record ", 1)[0] for bad in dropped))
    lines = [
        f"{files}: {len(dropped)} of {total} records cannot be "
        f"trained on (data.on_bad_record is 'fail'; 'skip' drops them; "
        "`mllm data check` lists them all):"
    ]
    lines += [f"  {bad.where}, {bad.reason} [{bad.kind}]" for bad in dropped[:_LISTED]]
    if len(dropped) > _LISTED:
        lines.append(f"  ... and {len(dropped) - _LISTED} more")
    return "\n".join(lines)


def nothing_left_message(files: str, total: int, dropped: Sequence[BadRecord]) -> str:
    """The error when every record was bad: how many were read and skipped, by kind."""
    kinds = Counter(bad.kind for bad in dropped)
    summary = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    return (
        f"{files}: no trainable records ({total} read, "
        f"{len(dropped)} skipped{': ' + summary if summary else ''})"
    )


def log_skipped(skipped: Sequence[BadRecord], total: int, logger: logging.Logger) -> None:
    """One warning per kind of skipped record, with the count and the first example, on the
    caller's ``logger`` (the name users filter on)."""
    by_kind: dict[str, list[BadRecord]] = {}
    for bad in skipped:
        by_kind.setdefault(bad.kind, []).append(bad)
    for kind, bads in sorted(by_kind.items(), key=lambda item: -len(item[1])):
        logger.warning(
            "skipped %d of %d records: %s (first: %s, %s)",
            len(bads),
            total,
            kind,
            bads[0].where,
            bads[0].reason,
        )
