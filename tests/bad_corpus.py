"""A corpus of broken LLaVA records and images, one per kind of damage, for the data checker,
the dataset's bad-record policy and training runs over bad data.

``make_corpus(root)`` writes it; :data:`CORPUS` lists each record with the finding
``mllm data check`` must report for it (kind, severity), and :func:`construction_kinds` /
:data:`LOAD_TIME_BAD` say which records training drops up front and which when loaded.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

NUM_IMAGE_TOKENS = 4
MAX_LENGTH = 96
LONG = " ".join(["many words here"] * 60)


def _turns(human: str = "What is shown?", gpt: str = "A shape.") -> list[dict]:
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


# (line in the .jsonl, expected kind or None, severity) in record order; ids are the keys.
CORPUS: list[tuple[str, str | None, str | None]] = [
    (json.dumps({"id": "ok-image", "image": "good.png", "conversations": _turns()}), None, None),
    (json.dumps({"id": "ok-text", "conversations": _turns()}), None, None),
    ('{"id": "syntax", "conversations": [', "json_syntax", "error"),
    ("[1, 2]", "not_an_object", "error"),
    (json.dumps({"id": "no-conversations"}), "missing_field", "error"),
    (json.dumps({"id": "conversations-str", "conversations": "hi"}), "wrong_type", "error"),
    (
        json.dumps({"id": "no-from", "conversations": [{"value": "q"}, _turns()[1]]}),
        "missing_field",
        "error",
    ),
    (
        json.dumps({"id": "no-value", "conversations": [{"from": "human"}, _turns()[1]]}),
        "missing_field",
        "error",
    ),
    (
        json.dumps({"id": "int-value", "conversations": [{"from": "human", "value": 3}]}),
        "wrong_type",
        "error",
    ),
    (
        json.dumps({"id": "gpt-first", "conversations": list(reversed(_turns()))}),
        "role_order",
        "error",
    ),
    (
        json.dumps({"id": "ends-human", "conversations": _turns()[:1]}),
        "role_order",
        "error",
    ),
    (json.dumps({"id": "empty-reply", "conversations": _turns(gpt=" ")}), "empty_turn", "error"),
    (
        json.dumps({"id": "empty-question", "conversations": _turns(human="")}),
        "empty_turn",
        "error",
    ),
    (
        json.dumps(
            {"id": "two-markers", "image": "good.png", "conversations": _turns("<image> <image>")}
        ),
        "image_marker_mismatch",
        "error",
    ),
    (
        json.dumps(
            {"id": "no-markers", "image": ["good.png", "gray.png"], "conversations": _turns()}
        ),
        "image_marker_mismatch",
        "error",
    ),
    (
        json.dumps({"id": "marker-no-image", "conversations": _turns("<image>\nq")}),
        "image_marker_mismatch",
        "error",
    ),
    (
        json.dumps({"id": "missing", "image": "missing.png", "conversations": _turns()}),
        "image_missing",
        "error",
    ),
    (
        json.dumps({"id": "empty", "image": "empty.png", "conversations": _turns()}),
        "image_empty",
        "error",
    ),
    (
        json.dumps({"id": "cut-png", "image": "cut.png", "conversations": _turns()}),
        "image_no_end_marker",
        "warning",
    ),
    (
        json.dumps({"id": "cut-jpg", "image": "cut.jpg", "conversations": _turns()}),
        "image_no_end_marker",
        "warning",
    ),
    (
        json.dumps({"id": "noise", "image": "noise.png", "conversations": _turns()}),
        "image_corrupt",
        "error",
    ),
    (
        json.dumps({"id": "bomb", "image": "bomb.png", "conversations": _turns()}),
        "image_too_large",
        "error",
    ),
    (
        json.dumps({"id": "dotdot", "image": "../outside.png", "conversations": _turns()}),
        "image_path_unsafe",
        "error",
    ),
    (
        json.dumps({"id": "absolute", "image": "/etc/passwd", "conversations": _turns()}),
        "image_path_unsafe",
        "error",
    ),
    (
        json.dumps({"id": "symlink", "image": "link.png", "conversations": _turns()}),
        "image_path_unsafe",
        "error",
    ),
    (
        json.dumps(
            {
                "id": "long-image",
                "image": ["good.png", "gray.png"],
                "conversations": _turns(f"{LONG} <image> <image>"),
            }
        ),
        "cuts_image",
        "error",
    ),
    (
        json.dumps({"id": "long-text", "conversations": [*_turns(), *_turns(LONG)]}),
        "truncated",
        "warning",
    ),
    (json.dumps({"id": "ok-image", "conversations": _turns()}), "duplicate_id", "warning"),
    (
        json.dumps({"id": "bot", "conversations": [{"from": "bot", "value": "q"}, _turns()[1]]}),
        "unknown_role",
        "error",
    ),
    (
        json.dumps(
            {"id": "late-system", "conversations": [*_turns(), {"from": "system", "value": "s"}]}
        ),
        "misplaced_system",
        "error",
    ),
    (
        json.dumps({"id": "image-int", "image": 7, "conversations": _turns()}),
        "bad_image_field",
        "error",
    ),
    (
        json.dumps(
            {
                "id": "marker-in-reply",
                "image": "good.png",
                "conversations": _turns("q", "<image> a"),
            }
        ),
        "image_marker_in_reply",
        "error",
    ),
    (json.dumps({"id": "no-turns", "conversations": []}), "empty_conversation", "error"),
    (json.dumps({"id": "turn-str", "conversations": ["hi", "there"]}), "wrong_type", "error"),
    (json.dumps({"id": "cmyk", "image": "cmyk.jpg", "conversations": _turns()}), None, None),
    (json.dumps({"id": "rgba", "image": "rgba.png", "conversations": _turns()}), None, None),
    (json.dumps({"id": "palette", "image": "palette.png", "conversations": _turns()}), None, None),
    (json.dumps({"id": "gray16", "image": "gray16.png", "conversations": _turns()}), None, None),
    (json.dumps({"id": "gray", "image": "gray.png", "conversations": _turns()}), None, None),
    (json.dumps({"id": "subfolder", "image": "sub/ok.png", "conversations": _turns()}), None, None),
    (
        json.dumps({"id": "long-question", "conversations": _turns(LONG)}),
        "no_targets_left",
        "error",
    ),
    # 1 x 10000: few pixels, but a 10000 x 10000 canvas once padded to a square.
    (
        json.dumps({"id": "strip", "image": "strip.png", "conversations": _turns()}),
        "image_too_large",
        "error",
    ),
]
# Found only when decoded; in header-only mode they are end-marker warnings.
DECODED = {"cut-png": "image_truncated", "cut-jpg": "image_truncated"}
LENGTH_KINDS = {"cuts_image", "no_targets_left"}
IMAGE_KINDS = {
    "image_missing",
    "image_empty",
    "image_no_end_marker",
    "image_truncated",
    "image_corrupt",
    "image_too_large",
    "image_path_unsafe",
}


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` RGB: tiny on disk, huge when decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    )


def _noise(size: int = 64, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def make_corpus(root: Path) -> tuple[Path, Path]:
    """Write ``root/corpus.jsonl`` (the records of :data:`CORPUS`) and ``root/images``."""
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 20), (255, 0, 0)).save(images / "good.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(images / "sub" / "ok.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(images / "cmyk.jpg")
    Image.new("RGBA", (16, 16), (0, 0, 255, 128)).save(images / "rgba.png")
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
    palette.save(images / "palette.png", transparency=0)
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(images / "gray16.png")
    Image.new("L", (10, 30), 200).save(images / "gray.png")
    (images / "empty.png").write_bytes(b"")
    _noise().save(images / "full.png")
    _noise().save(images / "full.jpg", quality=90)
    for name in ("png", "jpg"):
        data = (images / f"full.{name}").read_bytes()
        (images / f"cut.{name}").write_bytes(data[: len(data) // 2])
    (images / "noise.png").write_bytes(np.random.default_rng(1).bytes(2048))
    _png_header_only(images / "bomb.png", 20000, 20000)
    Image.new("L", (1, 10000), 128).save(images / "strip.png")
    Image.new("RGB", (8, 8)).save(root / "outside.png")
    (images / "link.png").symlink_to(root / "outside.png")
    data = root / "corpus.jsonl"
    data.write_text("".join(line + "\n" for line, _, _ in CORPUS))
    return data, images


def corpus_ids() -> list[str | None]:
    ids = []
    for line, _, _ in CORPUS:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        ids.append(record.get("id") if isinstance(record, dict) else None)
    return ids


def expected_findings(decoded: bool) -> set[tuple[int, object, str, str]]:
    expected = set()
    for index, ((_, kind, severity), record_id) in enumerate(
        zip(CORPUS, corpus_ids(), strict=True)
    ):
        if kind is None:
            continue
        if decoded and record_id in DECODED:
            kind, severity = DECODED[record_id], "error"
        expected.add((index, record_id, kind, severity))
    return expected


def construction_kinds() -> dict[int, str]:
    """Records the dataset must refuse up front: every error that is not an image file's."""
    return {
        index: kind
        for index, _, kind, severity in expected_findings(decoded=False)
        if severity == "error" and kind not in IMAGE_KINDS
    } | {22: "image_path_unsafe", 23: "image_path_unsafe"}  # '..' and absolute: from the text


#: Records that pass construction but whose image fails when loaded (dropped by the collator
#: under ``skip``).
LOAD_TIME_BAD = ("missing", "empty", "cut-png", "cut-jpg", "noise", "bomb", "symlink", "strip")
