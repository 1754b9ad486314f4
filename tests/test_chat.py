"""``mllm chat``: one-shot answers of a trained model, the interactive loop, and clear errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch

from mllm.cli import main as cli
from mllm.inference import SamplingSettings, load_model
from mllm.inference.chat import ChatSession, main, run_interactive

pytest_plugins = ["trained_shapes"]


def test_chat_prompt_answers_held_out_colour_questions(trained_shapes, capsys):
    torch.set_num_threads(1)
    for question in trained_shapes.held_out:
        args = ["chat", "--model", str(trained_shapes.checkpoint), "--image", str(question.image)]
        assert cli([*args, "--prompt", question.text]) == 0
        assert capsys.readouterr().out == f"{question.answer}\n"  # the answer and nothing else


def test_chat_prompt_as_a_command_prints_only_the_answer(trained_shapes):
    question = trained_shapes.held_out[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    model = ["--model", str(trained_shapes.checkpoint), "--image", str(question.image)]
    result = subprocess.run(
        [sys.executable, "-m", "mllm.cli", "chat", *model, "--prompt", question.text],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == f"{question.answer}\n"


def _run_chat(argv: list[str], lines: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        argv, stdin=io.StringIO("".join(f"{line}\n" for line in lines)), stdout=out, stderr=err
    )
    return code, out.getvalue(), err.getvalue()


def test_interactive_chat_keeps_history_and_obeys_commands(trained_shapes):
    first, second = trained_shapes.held_out[:2]
    assert first.answer != second.answer
    question = first.text.replace("\n", " ")  # one line of input is one question
    lines = [
        question,
        "",  # blank lines are skipped
        question,  # a second turn, with the first in its history
        f"/image {second.image}",
        question,
        "/reset",
        "/frobnicate",
        "/image /no/such/picture.png",
        question,
        "/quit",
        question,  # never read
    ]
    model = ["--model", str(trained_shapes.checkpoint), "--image", str(first.image)]
    code, out, err = _run_chat(model, lines)
    assert code == 0
    assert out.splitlines() == [first.answer, first.answer, second.answer, second.answer]
    assert f"[new conversation about {second.image}]" in err
    assert "[new conversation]" in err
    assert "commands: /image PATH" in err  # shown at the start and for the unknown command
    assert "error: image '/no/such/picture.png' does not exist" in err


def test_a_session_sends_the_history_with_each_question(trained_shapes):
    loaded = load_model(trained_shapes.checkpoint)
    first = trained_shapes.held_out[0]
    from mllm.data.images import load_image

    session = ChatSession(loaded, SamplingSettings(max_new_tokens=8), load_image(first.image))
    out = io.StringIO()
    question = first.text.replace("\n", " ")
    run_interactive(session, io.StringIO(f"{question}\nAnd again?\n"), out, io.StringIO())
    assert [turn["from"] for turn in session.history] == ["human", "gpt", "human", "gpt"]
    assert session.history[0]["value"] == f"<image>\n{question}"  # image in the first turn
    assert session.history[1]["value"] == first.answer
    assert session.history[2]["value"] == "And again?"
    assert out.getvalue().splitlines()[0] == first.answer


def test_end_of_input_quits_and_text_only_chat_works(trained_shapes):
    code, out, _ = _run_chat(["--model", str(trained_shapes.checkpoint)], ["What is 2 plus 2?"])
    assert code == 0 and len(out.splitlines()) == 1  # an answer (the model only knows colours)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.png", "image '{path}' does not exist"),
        (lambda tmp: tmp, "image '{path}' is a folder, not an image"),
        (lambda tmp: _write(tmp / "notes.png", b"not a png"), "cannot load image '{path}'"),
    ],
)
def test_unreadable_images_fail_before_loading_the_model(tmp_path, make, message):
    path = make(tmp_path)
    code, out, err = _run_chat(["--model", "/no/model", "--image", str(path), "--prompt", "hi"], [])
    assert code == 2 and out == ""
    assert message.format(path=path) in err


def test_folders_that_are_not_checkpoints_are_refused(trained_shapes, tmp_path):
    code, _, err = _run_chat(["--model", str(tmp_path), "--prompt", "hi"], [])
    assert code == 2
    assert f"mllm chat: cannot load --model {tmp_path}" in err
    assert "not an mllm checkpoint" in err or "neither an mllm checkpoint" in err
    code, _, err = _run_chat(["--model", str(tmp_path / "nope"), "--prompt", "hi"], [])
    assert code == 2 and "no such model folder" in err


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
