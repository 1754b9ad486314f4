"""Scan LLaVA data files for every problem training would hit, without training.

Three passes over one data set: the records' structure (``validate.check_record``, the same
checks ``ConversationDataset`` applies), the image files (``image_check``, parallel), and,
given a tokenizer, the token lengths and labels (``label_audit.audit_rendered``: training's
``tokenize_rendered``, batched, with its drop and truncation rules, then every reply's first
token to generate). Given a tokenizer, the tokenizer/template pair is probed first
(``label_audit.probe_pair``). Records are read whole first; nothing is tokenized one record at
a time.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mllm.data.anyres import AnyresSpec
from mllm.data.anyres_counts import HeaderTokenCounts
from mllm.data.conversation import ASSISTANT_ROLES
from mllm.data.images import DEFAULT_MAX_PIXELS, ImageLoadError
from mllm.data.label_audit import AuditedSample, audit_rendered, pair_message, probe_pair
from mllm.data.preflight.image_check import ImageResult, inspect_all, locate
from mllm.data.preflight.report import LABEL_ERRORS, STAGE, CheckReport, Finding
from mllm.data.records import DataError, read_records
from mllm.data.templates import DEFAULT_IMAGE_TOKEN, Template
from mllm.data.tokenize import DroppedSample, TokenizedSample, check_tokenizer
from mllm.data.validate import CheckedRecord, check_record, place_image_markers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Records per tokenizer call: one call runs in parallel in Rust.
_CHUNK = 2048


@dataclass(frozen=True)
class TokenSettings:
    """What token lengths need: the tokenizer (image and template tokens added), the
    placeholders per image and the longest sample."""

    tokenizer: PreTrainedTokenizerBase
    image_tokens: int
    max_length: int
    #: under ``anyres``, the tiling: each image's placeholders follow from its header size
    anyres: AnyresSpec | None = None


@dataclass(frozen=True, slots=True)
class _Ref:
    """A record, for attaching findings."""

    file: str
    index: int
    id: Any


def check_data(
    paths: Sequence[str | os.PathLike[str]],
    *,
    name: str,
    image_folder: str | os.PathLike[str] | None,
    policy: Literal["fail", "skip"] = "fail",
    image_token: str = DEFAULT_IMAGE_TOKEN,
    template: Template | None = None,
    tokens: TokenSettings | None = None,
    check_images: bool = True,
    decode_images: bool = False,
    workers: int = 1,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    image_mode: str = "pad",
) -> CheckReport:
    """Check data files as training would read them.

    Args:
        paths: ``.json``/``.jsonl`` files, one data set.
        name: a label for the report (the stage name, or ``data``).
        image_folder: image paths are relative to it and confined to it (``None``: used as
            given, as training does).
        policy: ``fail`` or ``skip``, for the verdict.
        image_token: the image marker.
        template: render each record with it (requires nothing else); ``None`` checks the
            structure only.
        tokens: measure token lengths and audit labels (needs ``template``).
        check_images: check the image files.
        decode_images: decode every image (finds all truncated/corrupt files; slower).
        workers: processes for the image pass.
        max_pixels: images whose header claims more are errors (in ``pad`` mode: more
            after padding to a square, as training allocates it).
        image_mode: the stage's ``image_aspect_ratio`` (``pad``, ``crop``, ``resize``).

    Returns:
        The findings and statistics.

    Raises:
        ValueError: ``tokens`` without ``template``.
        TypeError, ValueError: a tokenizer that cannot serve ``template`` (see
            ``check_tokenizer``).
    """
    if tokens is not None and template is None:
        raise ValueError("token lengths need a template")
    report = CheckReport(name=name, policy=policy, files=[os.fspath(path) for path in paths])
    if template is not None:
        report.settings = f"template {template.name}"
    if tokens is not None:
        report.max_length = tokens.max_length
        per_image = "anyres" if tokens.anyres else tokens.image_tokens
        report.settings += f", max_length {tokens.max_length}, {per_image} tokens/image"
        _probe(report, template, tokens, image_token)  # type: ignore[arg-type]  # checked above
    valid: list[tuple[_Ref, CheckedRecord]] = []
    seen_ids: dict[Hashable, _Ref] = {}
    turns: dict[tuple[str, int], list[Any]] = {}  # as rendered, for the label audit
    for path in report.files:
        try:
            records = read_records(path, keep_invalid=True)
        except (DataError, OSError) as err:
            kind = "json_syntax" if "invalid JSON" in str(err) else "file_unreadable"
            report.findings.append(Finding(path, None, None, kind, "error", _message(err, path)))
            continue
        report.records += len(records)
        for index, record in enumerate(records):
            record_id = record.get("id") if isinstance(record, dict) else None
            ref = _Ref(path, index, record_id)
            checked = check_record(record, image_token=image_token, template=template)
            if not isinstance(checked, CheckedRecord):
                reason = f"field {checked.field!r}: {checked.reason}"
                report.findings.append(_finding(ref, checked.kind, "error", reason))
                continue
            _duplicate_id(ref, seen_ids, report)
            images = len(checked.images)
            if tokens is not None:
                turns[path, index] = place_image_markers(
                    record["conversations"], images, image_token
                )
            report.text_only += images == 0
            report.single_image += images == 1
            report.multi_image += images > 1
            valid.append((ref, checked))
    if check_images:
        square = image_mode == "pad"
        _check_images(valid, report, image_folder, max_pixels, decode_images, square, workers)
    if image_folder is None and any(checked.images for _, checked in valid):
        report.notes.append(
            "no image folder: image paths are used as given and not confined (give --images)"
        )
    if tokens is not None:
        counts = None
        if tokens.anyres is not None:
            valid, counts = _anyres_counts(valid, report, image_folder, tokens.anyres, max_pixels)
        _check_tokens(valid, turns, report, image_token, template, tokens, counts)
    order = {path: position for position, path in enumerate(report.files)}
    report.findings.sort(key=lambda f: (order.get(f.file, -1), -1 if f.index is None else f.index))
    return report


def _message(err: Exception, path: str) -> str:
    text = str(err)
    return text[len(path) + 2 :] if text.startswith(f"{path}: ") else text


def _finding(ref: _Ref, kind: str, severity: str, reason: str, image: str | None = None) -> Finding:
    return Finding(ref.file, ref.index, ref.id, kind, severity, reason, image)  # type: ignore[arg-type]


def _duplicate_id(ref: _Ref, seen: dict[Hashable, _Ref], report: CheckReport) -> None:
    if ref.id is None or not isinstance(ref.id, Hashable):
        return
    key = (type(ref.id).__name__, ref.id)
    first = seen.setdefault(key, ref)
    if first is not ref:
        report.findings.append(
            _finding(
                ref,
                "duplicate_id",
                "warning",
                f"the id of {first.file}: record {first.index} too",
            )
        )


def _check_images(
    valid: list[tuple[_Ref, CheckedRecord]],
    report: CheckReport,
    folder: str | os.PathLike[str] | None,
    max_pixels: int | None,
    decode: bool,
    square: bool,
    workers: int,
) -> None:
    """Check each distinct image file once; report it on every record that uses it."""
    users: dict[str, list[tuple[_Ref, str]]] = {}
    for ref, checked in valid:
        for path in checked.images:
            users.setdefault(path, []).append((ref, path))
    report.unique_images = len(users)
    files: dict[str, str] = {}  # data path -> file to inspect
    for path, refs in users.items():
        located = locate(folder, path)
        if isinstance(located, ImageResult):
            _attach(located, refs, report)
        else:
            files[path] = os.fspath(located)
    results = inspect_all(
        files.values(), max_pixels=max_pixels, decode=decode, square=square, workers=workers
    )
    for path, result in zip(files, results, strict=True):
        report.images_checked += 1
        if result.mode is not None:
            report.image_modes[result.mode] += 1
        if result.kind is not None:
            _attach(result, users[path], report)


def _attach(result: ImageResult, refs: list[tuple[_Ref, str]], report: CheckReport) -> None:
    severity = "warning" if result.warning else "error"
    assert result.kind is not None
    for ref, path in refs:
        report.findings.append(_finding(ref, result.kind, severity, result.reason, image=path))


def _probe(
    report: CheckReport, template: Template, tokens: TokenSettings, image_token: str
) -> None:
    """One stage-level error per problem kind when the probe replies would train wrong."""
    problems = probe_pair(tokens.tokenizer, template, image_token=image_token)
    for kind in dict.fromkeys(problem.problem.kind for problem in problems):
        of_kind = [problem for problem in problems if problem.problem.kind == kind]
        message = pair_message(of_kind, template, tokens.tokenizer)
        report.findings.append(Finding(STAGE, None, None, "pair_probe", "error", message))


def _check_tokens(
    valid: list[tuple[_Ref, CheckedRecord]],
    turns: dict[tuple[str, int], list[Any]],
    report: CheckReport,
    image_token: str,
    template: Template | None,
    tokens: TokenSettings,
    counts: list[list[int]] | None = None,
) -> None:
    """Tokenize every valid record in large batches, as training does at construction, and
    audit the labels of every reply (``counts``: each record's placeholders per image)."""
    assert template is not None
    image_id = check_tokenizer(tokens.tokenizer, template, image_token=image_token)
    for first in range(0, len(valid), _CHUNK):
        chunk = valid[first : first + _CHUNK]
        conversations = [turns[ref.file, ref.index] for ref, _ in chunk]
        audited = audit_rendered(
            conversations,
            [checked.rendered for _, checked in chunk],  # type: ignore[misc]  # with a template
            template,
            tokens.tokenizer,
            image_token=image_token,
            image_token_id=image_id,
            num_image_tokens=tokens.image_tokens,
            max_length=tokens.max_length,
            image_token_counts=None if counts is None else counts[first : first + _CHUNK],
        )
        for (ref, _), conversation, result in zip(chunk, conversations, audited, strict=True):
            _length_findings(ref, result.sample, report, tokens.max_length)
            _label_findings(ref, result, conversation, report)


def _anyres_counts(
    valid: list[tuple[_Ref, CheckedRecord]],
    report: CheckReport,
    image_folder: str | os.PathLike[str] | None,
    anyres: AnyresSpec,
    max_pixels: int | None,
) -> tuple[list[tuple[_Ref, CheckedRecord]], list[list[int]]]:
    """The records whose anyres image sizes can be read from their headers, with each one's
    placeholders per image, as training counts them; the others are left out of the token
    pass (the image pass reports them) and counted in a note."""
    per_record = HeaderTokenCounts(anyres, image_folder, max_pixels).per_record(
        [checked.images for _, checked in valid]
    )
    kept, counts = [], []
    for (ref, checked), record_counts in zip(valid, per_record, strict=True):
        if isinstance(record_counts, ImageLoadError):
            continue
        kept.append((ref, checked))
        counts.append(record_counts)
    if len(kept) < len(valid):
        report.notes.append(
            f"{len(valid) - len(kept)} records with unreadable images are left out of the "
            "token lengths: anyres counts an image's tokens from its size"
        )
    return kept, counts


def _length_findings(
    ref: _Ref, sample: TokenizedSample | DroppedSample, report: CheckReport, max_length: int
) -> None:
    report.lengths.append(sample.full_length)
    over = sample.full_length - max_length
    if isinstance(sample, DroppedSample):
        reason = sample.reason + (f" (over by {over})" if over > 0 else "")
        report.findings.append(_finding(ref, sample.kind, "error", reason))
    elif over > 0:
        report.findings.append(
            _finding(
                ref,
                "truncated",
                "warning",
                f"{sample.full_length} tokens > max_length {max_length} by {over}; training "
                "cuts the tail",
            )
        )


def _label_findings(
    ref: _Ref, result: AuditedSample, conversation: list[Any], report: CheckReport
) -> None:
    report.replies += result.replies
    if not result.problems:
        return
    gpt_turns = [
        index for index, turn in enumerate(conversation) if turn["from"].lower() in ASSISTANT_ROLES
    ]
    for problem in result.problems:
        turn = gpt_turns[problem.reply] if problem.reply < len(gpt_turns) else "?"
        severity = "error" if problem.kind in LABEL_ERRORS else "warning"
        reason = f"reply {problem.reply + 1} (conversations[{turn}]): {problem.describe()}"
        report.findings.append(_finding(ref, problem.kind, severity, reason))
