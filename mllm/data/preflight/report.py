"""What ``mllm data check`` found: one :class:`Finding` per problem, and the summary.

A finding names the file, the record (index and id, or the line for JSON syntax), the kind
and the reason. ``error`` findings make a record untrainable (the policy decides whether that
stops training); ``warning`` findings do not (duplicate ids, samples cut at the tail, JPEG/PNG
files without an end marker in header-only mode). File-level errors (a ``.json`` file that
does not parse, a missing data file) stop training under either policy, and so do label
errors (:data:`LABEL_ERRORS`): training keeps those records and trains them wrong
without a word, so no policy makes them harmless. A tokenizer/template pair that fails the
probe is a stage-level error (``pair_probe``, file :data:`STAGE`).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]

#: Kinds found outside ``validate.RECORD_KINDS``, with their meaning.
CHECK_KINDS: dict[str, str] = {
    "file_unreadable": "a data file is missing, unreadable or not a JSON list (whole file)",
    "duplicate_id": "the id was already used by an earlier record (warning)",
    "image_path_unsafe": "an image path resolves outside the image folder (symlink)",
    "image_missing": "no image file at the path",
    "image_unreadable": "the image file cannot be opened (permissions, a folder)",
    "image_empty": "the image file has 0 bytes",
    "image_corrupt": "Pillow cannot identify or decode the file",
    "image_truncated": "the image data ends early (found by --decode-images)",
    "image_no_end_marker": "a PNG/JPEG without its end marker: probably truncated (warning; "
    "--decode-images decides)",
    "image_too_large": "the header claims more pixels than --max-pixels (decompression bomb)",
    "image_mode_unsupported": "the image mode cannot be converted to RGB",
    "cuts_image": "over max_length, and truncation would cut an image block",
    "no_targets_left": "over max_length, and no answer token would remain",
    "no_targets": "no answer token to learn from",
    "truncated": "over max_length; the tail is cut in training (warning)",
    "pair_probe": "the stage's tokenizer/template pair trains probe replies wrong (stage-level: "
    "every record is affected)",
    "first_token_untrained": "the first token the model must generate for a reply (right after "
    "its generation prompt's tokens) is not a target: it never learns to start that reply",
    "reply_untrained": "a reply has no target token: nothing of it is trained",
    "prompt_not_prefix": "a reply's generation prompt is not a token prefix of the training "
    "tokens: training conditions on tokens inference never feeds",
    "reply_cut": "truncation at max_length removes a whole reply (warning)",
}
#: Label kinds (``label_audit``) that make training silently wrong, whatever the policy.
LABEL_ERRORS = frozenset({"first_token_untrained", "reply_untrained", "prompt_not_prefix"})
#: ``Finding.file`` of stage-level findings (the tokenizer/template pair).
STAGE = "<stage>"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: where, what kind, how bad, and why."""

    file: str
    index: int | None  # record position in its file; None for file-level problems
    id: Any
    kind: str
    severity: Severity
    reason: str
    image: str | None = None  # the record's image path, for image problems

    def where(self) -> str:
        if self.file == STAGE:
            return "stage"
        if self.index is None:
            return self.file
        return f"{self.file}: record {self.index} (id {self.id!r})"

    def line(self) -> str:
        image = f" image {self.image!r}:" if self.image is not None else ""
        return f"{self.severity.upper()} {self.where()} [{self.kind}]{image} {self.reason}"


@dataclass
class CheckReport:
    """Findings and statistics of one checked data set (one stage, or the files given)."""

    name: str
    policy: Literal["fail", "skip"]
    files: list[str] = field(default_factory=list)
    records: int = 0
    text_only: int = 0
    single_image: int = 0
    multi_image: int = 0
    unique_images: int = 0
    images_checked: int = 0
    image_modes: Counter = field(default_factory=Counter)
    lengths: list[int] = field(default_factory=list)  # tokens before truncation
    replies: int = 0  # gpt replies whose labels were audited
    max_length: int | None = None
    settings: str = ""  # template, tokens per image: what the lengths were measured with
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def bad_records(self) -> int:
        """Records with at least one error (each counted once)."""
        return len(
            {
                (f.file, f.index)
                for f in self.findings
                if f.severity == "error" and f.index is not None
            }
        )

    @property
    def file_errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == "error" and f.index is None)

    @property
    def label_errors(self) -> int:
        """Replies whose labels would train wrong (each one a finding)."""
        return sum(1 for f in self.findings if f.kind in LABEL_ERRORS)

    @property
    def fatal(self) -> bool:
        """Whether the check fails: errors under ``fail``, a file that cannot be read, a
        failed pair probe or a label error under either policy, or nothing left to train on."""
        if self.file_errors or self.label_errors:
            return True
        if self.policy == "fail":
            return self.bad_records > 0
        return self.records - self.bad_records <= 0

    def counts(self) -> dict[str, dict[str, int]]:
        """``{severity: {kind: count}}``."""
        result: dict[str, Counter] = {"error": Counter(), "warning": Counter()}
        for finding in self.findings:
            result[finding.severity][finding.kind] += 1
        return {severity: dict(counter.most_common()) for severity, counter in result.items()}

    def label_summary(self) -> dict[str, int | float]:
        """Audited replies and how many have each label problem (first token not a target
        counts the replies with no target too)."""
        counts = Counter(f.kind for f in self.findings)
        first = counts["first_token_untrained"] + counts["reply_untrained"]
        return {
            "replies": self.replies,
            "first_token_not_target": first,
            "first_token_not_target_share": first / self.replies if self.replies else 0.0,
            "no_target": counts["reply_untrained"],
            "prompt_not_prefix": counts["prompt_not_prefix"],
            "cut_by_truncation": counts["reply_cut"],
        }

    def histogram(self) -> list[tuple[str, int]]:
        """Counts of token lengths in ``(low, high]`` buckets: powers of two from 32, split at
        ``max_length``; buckets past it are marked ``over``."""
        if not self.lengths:
            return []
        lengths = sorted(self.lengths)
        top = lengths[-1]
        edges = {self.max_length} if self.max_length and self.max_length < top else set()
        edge = 32
        while edge < top:
            edges.add(edge)
            edge *= 2
        buckets: list[tuple[str, int]] = []
        low = 0
        for high in [*sorted(edges), top]:
            count = bisect_right(lengths, high) - bisect_right(lengths, low)
            over = self.max_length is not None and low >= self.max_length
            buckets.append((f"{low + 1}-{high}{' over' if over else ''}", count))
            low = high
        return buckets

    def to_dict(self) -> dict[str, Any]:
        lengths = sorted(self.lengths)
        return {
            "name": self.name,
            "policy": self.policy,
            "settings": self.settings,
            "files": self.files,
            "records": self.records,
            "bad_records": self.bad_records,
            "fatal": self.fatal,
            "split": {
                "text_only": self.text_only,
                "single_image": self.single_image,
                "multi_image": self.multi_image,
            },
            "images": {
                "unique": self.unique_images,
                "checked": self.images_checked,
                "modes": dict(self.image_modes.most_common()),
            },
            "counts": self.counts(),
            "tokens": {
                "max_length": self.max_length,
                "min": lengths[0] if lengths else None,
                "median": lengths[len(lengths) // 2] if lengths else None,
                "max": lengths[-1] if lengths else None,
                "histogram": dict(self.histogram()),
            },
            "labels": self.label_summary(),
            "notes": self.notes,
            "findings": [asdict(finding) for finding in self.findings],
        }

    def format(self, max_listed: int = 50) -> str:
        """The findings (the first ``max_listed`` per kind) and the summary, as text."""
        out: list[str] = []
        per_kind: Counter = Counter()
        hidden: Counter = Counter()
        for finding in self.findings:
            per_kind[finding.kind] += 1
            if per_kind[finding.kind] <= max_listed:
                out.append(finding.line())
            else:
                hidden[finding.kind] += 1
        for kind, count in hidden.items():
            out.append(f"... {count} more [{kind}] not listed (see --json)")
        settings = f"; {self.settings}" if self.settings else ""
        out.append(
            f"== {self.name}: {', '.join(self.files)} (on_bad_record={self.policy}{settings})"
        )
        well_formed = self.text_only + self.single_image + self.multi_image
        out.append(
            f"records: {self.records}, bad: {self.bad_records}; well-formed: {well_formed} "
            f"({self.text_only} text-only, {self.single_image} with one image, "
            f"{self.multi_image} with several)"
        )
        if self.unique_images:
            modes = ", ".join(f"{mode} {n}" for mode, n in self.image_modes.most_common())
            out.append(
                f"images: {self.unique_images} distinct, {self.images_checked} checked"
                + (f"; modes: {modes} (all converted to RGB)" if modes else "")
            )
        for severity, counts in self.counts().items():
            if counts:
                listed = ", ".join(f"{kind} {count}" for kind, count in counts.items())
                out.append(f"{severity}s: {listed}")
        if self.lengths:
            lengths = sorted(self.lengths)
            out.append(
                f"tokens (images expanded; max_length {self.max_length}): min {lengths[0]}, "
                f"median {lengths[len(lengths) // 2]}, max {lengths[-1]}"
            )
            widest = max(count for _, count in self.histogram()) or 1
            for label, count in self.histogram():
                out.append(f"  {label:>20} {count:>9} {'#' * math.ceil(40 * count / widest)}")
        if self.replies:
            labels = self.label_summary()
            out.append(
                f"labels: {labels['replies']} replies; first token not a target: "
                f"{labels['first_token_not_target']} ({labels['first_token_not_target_share']:.2%})"
                f", no target: {labels['no_target']}, prompt not a token prefix: "
                f"{labels['prompt_not_prefix']}, cut away by truncation: "
                f"{labels['cut_by_truncation']}"
            )
        out.extend(f"note: {note}" for note in self.notes)
        if any(f.kind == "pair_probe" for f in self.findings):
            out.append("FAIL: training would stop: the tokenizer/template pair fails the probe")
        elif self.label_errors:
            out.append(
                f"FAIL: {self.label_errors} replies would be trained wrong (label errors fail "
                "under either on_bad_record policy)"
            )
        elif self.fatal:
            out.append("FAIL: training would stop")
        elif self.bad_records:
            out.append(f"OK: training would skip {self.bad_records} records")
        else:
            out.append("OK")
        return "\n".join(out)


def write_json(reports: list[CheckReport], path: str) -> None:
    """All reports as one JSON document."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump([report.to_dict() for report in reports], file, indent=1, default=str)
        file.write("\n")
