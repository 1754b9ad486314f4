"""User errors end a command with one message and an exit status, before anything heavy starts.

Each command runs in a fresh interpreter under ``python -X importtime``, which lists every module
the command imported: a user error must be reported without DeepSpeed (or bitsandbytes) loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from training_utils import REPO, TRAIN_SCRIPT, tiny_recipe, write_recipe

from mllm.data.records import DataError
from mllm.errors import run_command

HEAVY = ("deepspeed", "bitsandbytes")


@dataclass
class Finished:
    returncode: int
    message: list[str]  # stderr without -X importtime's lines
    imported: set[str]  # top-level packages the command imported


def run(args: list[str], **env: str) -> Finished:
    """``python -X importtime ARGS`` in the repository, one thread, with ``env`` added."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        timeout=300,
        check=False,
    )
    imported, message = set(), []
    for line in result.stderr.splitlines():
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[-1].strip().split(".")[0])
        else:
            message.append(line)
    return Finished(result.returncode, message, imported)


def assert_user_error(done: Finished, status: int, *names: str) -> None:
    """One short message naming ``names``, the status, no traceback, nothing heavy imported."""
    text = "\n".join(done.message)
    assert done.returncode == status, text
    assert "Traceback" not in text
    assert 1 <= len(done.message) <= 3, text
    for name in names:
        assert name in text
    assert not done.imported & set(HEAVY), done.imported & set(HEAVY)


@pytest.fixture
def recipe(tmp_path: Path) -> dict:
    """A valid recipe whose data files and image folder exist (nothing is built from it)."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("align.json", "instruct.json"):
        (tmp_path / name).write_text("[]")
    ws = {
        "clip": tmp_path / "clip",
        "llama": tmp_path / "llama",
        "images": images,
        "align": tmp_path / "align.json",
        "instruct": tmp_path / "instruct.json",
    }
    return tiny_recipe(ws, tmp_path / "run")


def test_missing_recipe():
    done = run([str(TRAIN_SCRIPT), "missing.yaml"])
    assert_user_error(done, 2, "missing.yaml", "file not found")
    assert done.message[0].startswith("train.py: invalid recipe")


def test_unknown_key_names_file_and_key(tmp_path, recipe):
    recipe["stages"]["align"]["colour"] = "red"
    path = write_recipe(tmp_path / "r.yaml", recipe)
    done = run([str(TRAIN_SCRIPT), str(path)])
    assert_user_error(done, 2, str(path), "stages.align.colour: unknown key")


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("stages.align.max_steps=many", "stages.align.max_steps: Input should be a valid integer"),
        ("max_steps", "max_steps: override must look like key.sub=value"),
    ],
)
def test_bad_override_names_key(tmp_path, recipe, override, reason):
    path = write_recipe(tmp_path / "r.yaml", recipe)
    done = run([str(TRAIN_SCRIPT), str(path), override])
    assert_user_error(done, 2, reason)


def test_missing_data_file_and_image_folder(tmp_path, recipe):
    recipe["stages"]["instruct"]["data"]["path"] = str(tmp_path / "gone.json")
    recipe["stages"]["instruct"]["data"]["image_folder"] = str(tmp_path / "no_images")
    path = write_recipe(tmp_path / "r.yaml", recipe)
    done = run([str(TRAIN_SCRIPT), str(path)])
    text = "\n".join(done.message)
    assert_user_error(done, 2, str(path))
    assert f"stages.instruct.data.path: {tmp_path / 'gone.json'}: no such file" in text
    assert f"stages.instruct.data.image_folder: {tmp_path / 'no_images'}: no such folder" in text
    # Only the stages asked for are checked.
    done = run([str(TRAIN_SCRIPT), str(path), "--stage", "align", "--stage", "nope"])
    assert_user_error(done, 2, "no stage 'nope'")


def test_debug_shows_the_traceback():
    done = run([str(TRAIN_SCRIPT), "missing.yaml", "--debug"])
    text = "\n".join(done.message)
    assert done.returncode == 2
    assert "Traceback" in text and "RecipeError" in text
    assert text.rstrip().endswith("file not found")


def test_only_rank_zero_speaks():
    launched = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    done = run([str(TRAIN_SCRIPT), "missing.yaml"], **launched)
    assert done.returncode == 2
    assert done.message == []
    assert not done.imported & set(HEAVY)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["recipe", "check", "missing.yaml"], ["mllm recipe", "missing.yaml", "file not found"]),
        (["data", "check", "missing.yaml"], ["missing.yaml", "file not found"]),
        (["train", "missing.yaml"], ["mllm train", "missing.yaml", "file not found"]),
        (
            ["eval", "--model", "/no/such", "--questions", "q.jsonl", "--output", "o.jsonl"],
            ["mllm eval", "/no/such"],
        ),
    ],
)
def test_mllm_commands(tmp_path, args, names):
    if args[0] == "eval":
        args[args.index("q.jsonl")] = str(tmp_path / "q.jsonl")
        (tmp_path / "q.jsonl").write_text('{"question_id": 0, "text": "what?"}\n')
    done = run(["-m", "mllm.cli", *args])
    assert_user_error(done, 2, *names)


def test_bad_data_exits_1_and_other_errors_keep_their_traceback(capsys, monkeypatch):
    """In-process: the shared handler's statuses (bad data is 1), and a bug is not swallowed."""

    def bad_data(argv: list[str]) -> int:
        raise DataError("data.json: record 3 (id 'x'), field 'conversations': missing")

    assert run_command(bad_data, ["--debug"], prog="train.py") == 1
    err = capsys.readouterr().err
    assert err.endswith("train.py: data.json: record 3 (id 'x'), field 'conversations': missing\n")
    assert "Traceback" in err  # --debug
    assert run_command(bad_data, [], prog="train.py") == 1
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setenv("RANK", "3")
    assert run_command(bad_data, [], prog="train.py") == 1
    assert capsys.readouterr().err == ""

    def bug(argv: list[str]) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_command(bug, [])
