"""``mllm chat``: one-shot answers of a trained model, the interactive loop, and clear errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from interop_utils import (
    llava_reference_answer,
    llava_state,
    llava_tokenizer_image_token,
    reference_llava,
    write_llava,
)
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoTokenizer

import mllm
from mllm.cli import main as cli
from mllm.commands.chat import main
from mllm.commands.model_options import load_model_from_args
from mllm.commands.serve import build_parser as serve_parser
from mllm.data.images import load_image
from mllm.data.templates import get_template
from mllm.inference import GenerationRequest, SamplingSettings, complete
from mllm.inference.chat import ChatSession, run_interactive
from mllm.tiny import make_tiny_models


def test_chat_prompt_answers_held_out_colour_questions(trained_shapes, capsys):
    torch.set_num_threads(1)
    for question in trained_shapes.held_out:
        args = ["chat", "--model", str(trained_shapes.checkpoint), "--image", str(question.image)]
        assert cli([*args, "--prompt", question.text]) == 0
        assert capsys.readouterr().out == f"{question.answer}\n"  # the answer and nothing else


def test_eval_scores_numbers_and_byte_fallback_words_whole(trained_shapes, tmp_path, capsys):
    """ "3" starts with a lone '▁' and "Yellow" with '▁', '<0x59>': both come out whole."""
    torch.set_num_threads(1)
    questions, answers = tmp_path / "questions.jsonl", tmp_path / "answers.jsonl"
    rows = [
        {"question_id": i, "image": q.image.name, "text": q.text, "answer": q.answer}
        for i, q in enumerate(trained_shapes.held_out)
    ]
    questions.write_text("".join(json.dumps({**r, "answer": None}) + "\n" for r in rows))
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    predictions = tmp_path / "predictions.jsonl"
    args = ["eval", "--model", str(trained_shapes.checkpoint), "--questions", str(questions)]
    args += ["--answers", str(answers), "--output", str(predictions), "--batch-size", "4"]
    args += ["--image-folder", str(trained_shapes.held_out[0].image.parent)]
    assert cli(args) == 0
    texts = [json.loads(line)["text"] for line in predictions.read_text().splitlines()]
    assert texts == [q.answer for q in trained_shapes.held_out]
    assert any(text.isdigit() for text in texts)
    assert f"accuracy: 100.0% ({len(rows)}/{len(rows)})" in capsys.readouterr().out


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
    colour = [q for q in trained_shapes.held_out if "color" in q.text]
    first = colour[0]
    second = next(q for q in colour if q.answer != first.answer)
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
    loaded = mllm.load(trained_shapes.checkpoint)
    first = trained_shapes.held_out[0]
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


LLAVA_QUESTION = "What color is the shape?"
#: Random weights answer with stray byte tokens, some in runs that are no valid UTF-8: long
#: answers check that mllm decodes them as a whole-answer decode does.
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> dict[str, Path]:
    """An original LLaVA-1.5 folder of tiny random models, whose config names its tower by hub
    id (never downloaded), and two non-square images."""
    root = tmp_path_factory.mktemp("llava")
    tiny = make_tiny_models(root / "models", image_size=32, patch_size=8)
    images = root / "images"
    images.mkdir()
    for index in range(2):
        pixels = np.random.default_rng(index).integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{index}.png")
    folder = write_llava(root / "llava-v1.5-tiny", tiny, llava_state(tiny))
    return {**tiny, "folder": folder, "images": images}


def test_chat_and_eval_answer_an_original_llava_folder_as_llava_does(llava, tmp_path):
    """The answers of transformers' Llava on the same tensors, prompted LLaVA's way."""
    torch.set_num_threads(1)
    folder, tower = llava["folder"], ["--vision-tower", str(llava["clip"])]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    reference = reference_llava(llava, llava_state(llava), len(tokenizer))
    processor = AutoImageProcessor.from_pretrained(llava["clip"])
    turns = [{"from": "human", "value": f"<image>\n{LLAVA_QUESTION}"}]
    prompt = get_template("vicuna_v1").generation_prompt(turns)
    paths = sorted(llava["images"].glob("*.png"))
    expected = [
        llava_reference_answer(
            reference,
            processor,
            tokenizer,
            prompt,
            load_image(path),
            num_image_tokens=16,
            max_new_tokens=NEW_TOKENS,
        )
        for path in paths
    ]

    tokens = ["--max-new-tokens", str(NEW_TOKENS)]
    chat = ["--model", str(folder), *tower, "--image", str(paths[0]), *tokens]
    code, out, err = _run_chat([*chat, "--prompt", LLAVA_QUESTION], [])
    assert (code, out) == (0, f"{expected[0]}\n"), err

    questions = tmp_path / "questions.jsonl"
    records = [
        {"question_id": i, "image": p.name, "text": LLAVA_QUESTION} for i, p in enumerate(paths)
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in records))
    predictions = tmp_path / "predictions.jsonl"
    args = ["eval", "--model", str(folder), *tower, "--questions", str(questions), *tokens]
    args += ["--image-folder", str(llava["images"]), "--output", str(predictions)]
    assert cli([*args, "--batch-size", "2"]) == 0  # both questions in one padded batch
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [row["text"] for row in rows] == expected
    assert {row["model_id"] for row in rows} == {folder.name}

    # The prompt is tokenized piece by piece around the image, as LLaVA does: one token more
    # than tokenizing it whole with <image> as a special token (the "▁" after the image).
    loaded = mllm.load(folder, vision_tower_path=str(llava["clip"]))
    request = GenerationRequest(turns, [load_image(paths[0])])
    (completion,) = complete(loaded, [request], SamplingSettings(max_new_tokens=1))
    llava_length = len(llava_tokenizer_image_token(tokenizer, prompt)) - 1 + 16
    whole_length = len(loaded.built.tokenizer(prompt).input_ids) - 1 + 16
    assert completion.prompt_tokens == llava_length != whole_length


def test_a_projector_only_llava_folder_needs_base_llm(llava, tmp_path):
    stage1 = tmp_path / "llava-v1.5-pretrain"
    stage1.mkdir()
    (stage1 / "config.json").write_text((llava["folder"] / "config.json").read_text())
    projector = {k: v for k, v in llava_state(llava).items() if k.startswith("model.mm_projector.")}
    save_file(projector, str(stage1 / "mm_projector.safetensors"))
    tower = ["--vision-tower", str(llava["clip"])]
    code, _, err = _run_chat(["--model", str(stage1), *tower, "--prompt", "hi"], [])
    assert code == 2 and "--base-llm PATH" in err
    args = ["--model", str(stage1), *tower, "--base-llm", str(llava["llama"])]
    loaded = load_model_from_args(serve_parser().parse_args(args))
    assert (loaded.template, loaded.manifest["prompt_tokenization"]) == ("plain", "llava")
    torch.testing.assert_close(
        loaded.built.model.projector.layers[0].weight, projector["model.mm_projector.0.weight"]
    )
