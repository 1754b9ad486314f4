"""What the multiple-choice benchmark fixture writers share: where fixtures go, how a tiny
image and a JSON file are written, and how an official scorer is run in its side venv.

It stands alone so that each benchmark's writer (``make_mc_benchmark_fixtures.py``,
``mme_fixtures.py``, ``mmbench_fixtures.py``) writes its files the same way; the scripts
import it as a sibling (``python scripts/make_mc_benchmark_fixtures.py`` puts ``scripts/`` on
the path).
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"


def png_bytes(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (shade, 255 - shade, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def run(command: list[str], stdin: str | None = None) -> str:
    """The command's stdout (``stdin`` fed to it); raises if it fails."""
    return subprocess.run(command, input=stdin, check=True, capture_output=True, text=True).stdout
