"""``mllm export --format hf-llava`` as other servers run it: the exported chat template renders
mllm's prompt for every template, the exported processor tokenizes it to mllm's ids, raw
images and questions through transformers' ``LlavaProcessor`` and ``generate`` answer as
``mllm eval`` does, and what Llava cannot hold is refused with its reason."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from interop_utils import llava_state, mllm_checkpoint, write_llava
from jinja2 import TemplateError
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration
from transformers.utils.chat_template_utils import render_jinja_template

from mllm.checkpoint import load_mllm_checkpoint
from mllm.config import validate_recipe
from mllm.data.conversation import ConversationError
from mllm.data.images import prepare_image
from mllm.data.templates import TEMPLATES, Template, get_template
from mllm.data.tokenizer_template import TOKENIZER_TEMPLATE, resolve_template
from mllm.eval.run import answer_questions
from mllm.inference.inputs import read_image
from mllm.inference.prompts import encode_rendered
from mllm.interop import load_llava_folder
from mllm.interop.chat_template import ChatTemplateError, chat_template
from mllm.interop.export import (
    REFUSED_PROJECTORS,
    REFUSED_TOWERS,
    UnsupportedExportError,
    check_exportable,
    export_hf_llava,
)
from mllm.interop.hf_llava import TOWERS
from mllm.models.catalog import PROJECTORS, VISION_TOWERS
from mllm.tiny import make_tiny_models
from mllm.tiny.chat_templates import MISTRAL_V0_2

# Each conversation in mllm's turns and as transformers' messages; images are parts of the
# content there and "<image>\n" before the question here, as mllm eval asks.
QUESTION = "What color is the shape?"
CONVERSATIONS = {
    "single": (
        [{"from": "human", "value": f"<image>\n{QUESTION}"}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
    ),
    "multi-turn": (
        [
            {"from": "human", "value": f"<image>\n{QUESTION}"},
            {"from": "gpt", "value": " Red "},
            {"from": "human", "value": "How many shapes are there?"},
        ],
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": [{"type": "text", "text": " Red "}]},
            {"role": "user", "content": "How many shapes are there?"},
        ],
    ),
    # vLLM's "string" content format: the image placeholder and a newline before the text
    "string-content": (
        [{"from": "human", "value": f"<image>\n{QUESTION}"}],
        [{"role": "user", "content": f"<image>\n{QUESTION}"}],
    ),
    "system": (
        [
            {"from": "system", "value": " Answer briefly. "},
            {"from": "human", "value": "<image>\nQ"},
        ],
        [
            {"role": "system", "content": " Answer briefly. "},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
        ],
    ),
    "empty-system": (
        [{"from": "system", "value": ""}, {"from": "human", "value": "<image>\nQ"}],
        [
            {"role": "system", "content": [{"type": "text", "text": ""}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
        ],
    ),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("models"), image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A non-square image, so padding to a square matters."""
    pixels = np.random.default_rng(1).integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def tiny_with_chat_template(tiny, tmp_path_factory) -> dict[str, Path]:
    """The tiny models, the LLM's tokenizer carrying Mistral-7B-Instruct-v0.2's chat template
    (its tokens are the tiny Llama's own), for ``template: tokenizer``."""
    llama = tmp_path_factory.mktemp("chat") / "llama"
    shutil.copytree(tiny["llama"], llama)
    tokenizer = AutoTokenizer.from_pretrained(llama)
    tokenizer.chat_template = MISTRAL_V0_2
    tokenizer.save_pretrained(llama)
    return {**tiny, "llama": llama}


@pytest.mark.parametrize("name", [*TEMPLATES.names(), TOKENIZER_TEMPLATE])
def test_exported_chat_template_renders_and_tokenizes_as_mllm(
    tiny, tiny_with_chat_template, image, tmp_path, name
):
    """For every template (and one read off a tokenizer): transformers renders mllm's
    generation prompt (or refuses the conversations mllm refuses), and the exported processor
    tokenizes it to mllm's ids."""
    models = tiny_with_chat_template if name == TOKENIZER_TEMPLATE else tiny
    source = mllm_checkpoint(models, tmp_path / "final", template=name)
    out = export_hf_llava(source, tmp_path / "hf")
    ours = load_mllm_checkpoint(source)
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    assert processor.chat_template == processor.tokenizer.chat_template
    assert (out / "chat_template.jinja").is_file()
    template = resolve_template(name, ours.built.tokenizer)
    rendered = 0
    for conversation, messages in CONVERSATIONS.values():
        try:
            expected = template.generation_prompt(conversation)
        except ConversationError:
            with pytest.raises(TemplateError, match=name):
                processor.apply_chat_template(messages, add_generation_prompt=True)
            continue
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        assert prompt == expected
        inputs = processor(images=[image], text=prompt, return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == encode_rendered(ours, expected)
        pixels = prepare_image(image, ours.built.image_processor, ours.image_aspect_ratio)
        torch.testing.assert_close(inputs["pixel_values"][0], pixels, rtol=0, atol=0)
        # Tokenizing in apply_chat_template gives the same ids (BOS added once).
        tokenized = processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            processor_kwargs={"images": [image]},
        )
        assert tokenized["input_ids"][0] == inputs["input_ids"][0].tolist()
        rendered += 1
    assert rendered >= 1
    note = json.loads((out / "mllm_export.json").read_text())
    assert (note["template"], note["prompt_tokenization"]) == (name, "mllm")


def test_training_text_of_a_finished_conversation_matches_too():
    """Without a generation prompt a finished conversation renders as mllm's training text."""
    conversation, messages = CONVERSATIONS["multi-turn"]
    conversation = [*conversation, {"from": "gpt", "value": "Three"}]
    messages = [*messages, {"role": "assistant", "content": "Three"}]
    for name in TEMPLATES.names():
        template = get_template(name)
        try:
            expected = "".join(s.text for s in template.render(conversation))
        except ConversationError:
            continue
        text = render_jinja_template(
            conversations=[messages], chat_template=chat_template(template, "<image>")
        )[0][0]
        assert text == expected, name


def test_templates_with_fields_the_export_does_not_know_are_refused():
    @dataclasses.dataclass(frozen=True)
    class FutureTemplate(Template):
        future_option: bool = False  # a field mllm.interop.chat_template was not written for

    chat_template(FutureTemplate("future", "", "{content}", "", ""), "<image>")  # at default
    with pytest.raises(ChatTemplateError, match="future_option"):
        chat_template(FutureTemplate("future", "", "{content}", "", "", future_option=True), "x")


def test_transformers_answers_as_mllm_eval(trained_shapes, tmp_path):
    """Raw image and question through the exported ``LlavaProcessor`` (chat template, then
    processor) and ``generate`` give ``mllm eval``'s greedy answers, every one of them."""
    out = export_hf_llava(trained_shapes.checkpoint, tmp_path / "hf")
    folder = trained_shapes.image_folder
    records = [
        {"question_id": i, "image": str(q.image.relative_to(folder)), "text": q.text}
        for i, q in enumerate(trained_shapes.held_out)
    ]
    loaded = load_mllm_checkpoint(trained_shapes.checkpoint)
    expected = [a["text"] for a in answer_questions(loaded, records, folder, max_new_tokens=16)]

    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    answers = []
    for question in trained_shapes.held_out:
        content = [{"type": "image"}, {"type": "text", "text": question.text}]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        inputs = processor(images=read_image(question.image), text=prompt, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=16, do_sample=False)
        new = ids[0, inputs["input_ids"].shape[1] :]
        answers.append(processor.decode(new, skip_special_tokens=False).split("</s>")[0].strip())
    assert len(answers) >= 20
    assert answers == expected
    # and the model learned the task, so these are real answers, not noise
    correct = sum(a == q.answer for a, q in zip(answers, trained_shapes.held_out, strict=True))
    assert correct >= len(answers) // 2


def _recipe(vision: str, projector: dict, **llm):
    raw = {
        "name": "x",
        "output_dir": "out",
        "model": {
            "vision": {"name": vision, "path": "tower"},
            "projector": projector,
            "llm": {"path": "llm", "family": "llama", **llm},
        },
        "stages": {
            "s": {
                "data": {"path": "d.json"},
                "optim": {"lr": 1e-4},
                "global_batch_size": 1,
                "micro_batch_size": 1,
            }
        },
    }
    return validate_recipe(raw, "test", check_files=False)


def _projector(name: str) -> dict:
    required = {"qformer": {"num_queries": 8}, "abstractor": {"num_queries": 8}}
    return {"name": name, **required.get(name, {})}


@pytest.mark.parametrize("tower", VISION_TOWERS.names())
def test_every_tower_is_exported_or_refused_with_its_reason(tower):
    recipe = _recipe(tower, {"name": "mlp", "depth": 2})
    if tower in TOWERS.values():
        check_exportable(recipe)
        return
    assert tower in REFUSED_TOWERS, f"say why the {tower!r} tower cannot be exported"
    with pytest.raises(UnsupportedExportError, match=f"model.vision.name '{tower}': "):
        check_exportable(recipe)


@pytest.mark.parametrize("projector", PROJECTORS.names())
def test_every_projector_is_exported_or_refused_with_its_reason(projector):
    assert projector in REFUSED_PROJECTORS, f"say why {projector!r} may not be exported"
    if projector == "mlp":
        check_exportable(_recipe("clip", {"name": "mlp", "depth": 2}))
        refused = [{"name": "mlp", "depth": 1}, {"name": "mlp", "depth": 3}]
    else:
        refused = [_projector(projector)]
    for config in refused:
        with pytest.raises(UnsupportedExportError, match=f"model.projector '{projector}'"):
            check_exportable(_recipe("clip", config))


def test_refusals_list_every_part():
    with pytest.raises(UnsupportedExportError) as error:
        check_exportable(_recipe("dinov2", {"name": "mlp", "depth": 3}, modality_adaptive=True))
    assert "model.vision.name 'dinov2'" in str(error.value)
    assert "model.projector 'mlp' (depth 3)" in str(error.value)
    assert "model.llm.modality_adaptive" in str(error.value)


def test_llava_exports_keep_llavas_tokenization_when_read_back(tiny, tmp_path):
    """An original LLaVA checkpoint was trained on prompts tokenized piece by piece around the
    image; its export says so, and mllm reads the export back with that tokenization."""
    folder = write_llava(tmp_path / "ckpt", tiny, llava_state(tiny))
    out = export_hf_llava(folder, tmp_path / "hf", vision_tower_path=str(tiny["clip"]))
    assert json.loads((out / "mllm_export.json").read_text())["prompt_tokenization"] == "llava"
    assert load_llava_folder(out).manifest["prompt_tokenization"] == "llava"
