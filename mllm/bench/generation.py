"""Generation timing: ours against ``LlavaForConditionalGeneration.generate``.

Ours is timed twice: through the public ``mllm.inference.complete`` (what ``mllm chat`` and
``mllm serve`` call, with its per-token stop-string decoding), and through the model API
alone (``MultimodalModel.embed`` + the LLM's ``generate``), prepared and decoded exactly as
the baseline is. All start from the same weights, prompt, image and settings (greedy, the
template's stop tokens, a KV cache), and every timing includes what a caller waits for: the
prompt rendered and tokenized, the image prepared, the tokens generated and decoded. Time to
first token is a call with ``max_new_tokens=1``; tokens per second divide the tokens a full
call produced by its time. The sides take turns, in rotating order, so that load from other
processes falls on all of them alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from mllm.bench.measure import clock, median
from mllm.checkpoint import LoadedModel
from mllm.data.images import prepare_image
from mllm.data.tokenizer_template import resolve_template
from mllm.inference.generate import GenerationRequest, SamplingSettings, complete

PROMPT = "<image>\nDescribe the image in detail."
#: Report order and labels of the sides.
SIDES = ("ours", "ours (model API)", "baseline")


@dataclass
class GenerationRun:
    """Seconds per call: ``first`` with one new token, ``full`` with up to the token budget
    (a call may stop earlier, at a stop token; ``new_tokens`` holds what each produced)."""

    name: str
    first: list[float] = field(default_factory=list)
    full: list[float] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    @property
    def ttft_s(self) -> float:
        return median(self.first)

    @property
    def tokens_per_s(self) -> float:
        return median([n / s for n, s in zip(self.new_tokens, self.full, strict=True)])


class _Direct:
    """One request at a time through a model's own ``generate``: ``llava`` (the baseline),
    or, when it is None, our model's ``embed`` and its LLM's ``generate``."""

    def __init__(self, loaded: LoadedModel, llava: LlavaForConditionalGeneration | None) -> None:
        self.loaded = loaded
        self.llava = llava
        tokenizer = loaded.built.tokenizer
        template = resolve_template(loaded.template, tokenizer)
        vocab = tokenizer.get_vocab()
        stops = {tokenizer.eos_token_id, *(vocab[s] for s in template.stop_strings if s in vocab)}
        self.stop_ids = sorted(i for i in stops if i is not None)
        self.stop_strings = (*template.stop_strings, tokenizer.eos_token)

    @torch.no_grad()
    def __call__(self, request: GenerationRequest, max_new_tokens: int) -> tuple[str, int]:
        built, model = self.loaded.built, self.loaded.built.model
        text = resolve_template(
            self.loaded.template, self.loaded.built.tokenizer
        ).generation_prompt(request.conversation, image_token=built.image_token)
        ids: list[int] = []
        for token in built.tokenizer(text)["input_ids"]:
            ids.extend([token] * (model.num_image_tokens if token == model.image_token_id else 1))
        device = next(model.parameters()).device
        pixel_values = torch.stack(
            [
                prepare_image(image, built.image_processor, self.loaded.image_aspect_ratio)
                for image in request.images
            ]
        ).to(device)  # [num_images, 3, H, W]
        input_ids = torch.tensor([ids], device=device)  # [1, T]
        settings = {
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "eos_token_id": self.stop_ids,
            "pad_token_id": built.tokenizer.pad_token_id,
        }
        if self.llava is not None:
            output = self.llava.generate(input_ids=input_ids, pixel_values=pixel_values, **settings)
            new = output[0, len(ids) :]
        else:
            embeds = model.embed(input_ids, pixel_values)  # [1, T, hidden]
            new = model.llm.generate(inputs_embeds=embeds, **settings)[0]  # new tokens only
        answer = built.tokenizer.decode(new, skip_special_tokens=False)
        for stop in self.stop_strings:
            if stop and stop in answer:
                answer = answer[: answer.index(stop)]
        return answer.strip(), len(new)


def bench_generation(
    loaded: LoadedModel,
    llava: LlavaForConditionalGeneration,
    images: list[Image.Image],
    *,
    new_tokens: int,
) -> list[GenerationRun]:
    """Time every side on one request per image (batch size 1), taking turns.

    Returns:
        One run per side, in :data:`SIDES` order.
    """
    loaded.built.model.eval()
    llava.eval()

    def public(request: GenerationRequest, limit: int) -> tuple[str, int]:
        (completion,) = complete(loaded, [request], SamplingSettings(max_new_tokens=limit))
        return completion.text, completion.completion_tokens

    calls: dict[str, Callable[[GenerationRequest, int], tuple[str, int]]] = {
        "ours": public,
        "ours (model API)": _Direct(loaded, None),
        "baseline": _Direct(loaded, llava),
    }
    runs = {name: GenerationRun(name) for name in SIDES}
    warm = GenerationRequest([{"from": "human", "value": PROMPT}], [images[0]])
    for call in calls.values():  # first calls pay one-off set-up costs
        call(warm, 2)
    for turn, image in enumerate(images):
        request = GenerationRequest([{"from": "human", "value": PROMPT}], [image])
        order = SIDES[turn % len(SIDES) :] + SIDES[: turn % len(SIDES)]
        for limit in (1, new_tokens):
            for name in order:
                start = clock()
                answer, count = calls[name](request, limit)
                seconds = clock() - start
                if limit == 1:
                    runs[name].first.append(seconds)
                else:
                    runs[name].full.append(seconds)
                    runs[name].new_tokens.append(count)
                    runs[name].answers.append(answer)
    return [runs[name] for name in SIDES]
