"""The ``mllm`` model of lmms-eval: any folder :func:`mllm.load` reads, evaluated on its tasks.

Registered through lmms-eval's ``lmms_eval.models`` entry point (``pyproject.toml``), so after
``pip install -e ".[lmms-eval]"`` (``scripts/install.sh``)::

    lmms-eval --model mllm --model_args pretrained=RUN/instruct/final --tasks TASK \\
        --batch_size 8 --output_path results/

``model_args``: ``pretrained`` (the folder), ``device``, ``dtype`` (``float32``, ``bfloat16``,
``float16``), ``quantize`` (``4bit`` / ``8bit``), ``batch_size``, ``max_new_tokens`` (when the
task sets none), and for foreign folders ``vision_tower_path``, ``base_llm``, ``template``.

Prompts are built as ``mllm chat`` builds them: the task's context is the human turn, after
one image marker per image (unless the context already has them), in the model's own
template. ``generate_until`` answers through :func:`mllm.inference.generate.complete` with the
task's ``until`` strings as extra stop strings. ``loglikelihood`` scores a continuation as the
assistant's reply: its leading whitespace (lmms-eval's ``target_delimiter``) gives way to the
template's own separator after the assistant header, and the log-probability counts every
token after the generation prompt. Processes: one per device under ``accelerate launch``;
lmms-eval shards the requests by :attr:`rank`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from mllm.data.tokenizer_template import resolve_template
from mllm.inference import GenerationRequest, LoadedModel, SamplingSettings, complete, load
from mllm.inference.prompts import encode_rendered, image_token_counts, prepare_images

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class MllmModel(lmms):
    """An mllm-loadable model folder as an lmms-eval model (``--model mllm``).

    Args:
        pretrained: the model folder (an mllm checkpoint, LoRA run, merged model, original
            LLaVA or transformers Llava folder).
        device: ``cpu``, ``cuda``; under ``accelerate launch`` each process takes its own GPU.
        dtype: parameter dtype name.
        batch_size: requests per forward pass / generate call.
        max_new_tokens: answer budget when a task's ``generation_kwargs`` sets none.
        quantize: ``4bit`` or ``8bit`` for the LLM (bitsandbytes).
        vision_tower_path, base_llm, template: for foreign folders (see :func:`mllm.load`).
    """

    def __init__(
        self,
        pretrained: str,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int | str = 1,
        max_new_tokens: int = 128,
        quantize: str | None = None,
        vision_tower_path: str | None = None,
        base_llm: str | None = None,
        template: str | None = None,
        **unexpected: Any,
    ) -> None:
        super().__init__()
        if unexpected:
            raise ValueError(
                f"model_args not understood by the mllm model: {', '.join(sorted(unexpected))}"
            )
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.accelerator = Accelerator(cpu=device == "cpu")
        if self.accelerator.num_processes > 1 and device.startswith("cuda"):
            device = f"cuda:{self.accelerator.local_process_index}"
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        self.loaded: LoadedModel = load(
            pretrained,
            dtype=_DTYPES[dtype],
            device=device,
            quantize=quantize,
            vision_tower_path=vision_tower_path,
            base_llm=base_llm,
            template=template,
        )
        self.batch_size_per_device = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    # ------------------------------------------------------------------ prompts
    def _visuals(self, doc_to_visual: Callable | None, doc_id: int, task: str, split: str):
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        for visual in visuals:
            if not isinstance(visual, Image.Image):
                raise TypeError(
                    f"task {task!r}, doc {doc_id}: the mllm model takes PIL images, got "
                    f"{type(visual).__name__} (video and audio are not supported)"
                )
        return [visual.convert("RGB") for visual in visuals]

    def _human_turn(self, context: str, num_images: int) -> str:
        """The context with one image marker per image in front (unless it has them)."""
        image_token = self.loaded.built.image_token
        if num_images and image_token not in context:
            return "\n".join([image_token] * num_images + [context])
        return context

    def _prompt(self, context: str, num_images: int) -> str:
        conversation = [{"from": "human", "value": self._human_turn(context, num_images)}]
        template = resolve_template(self.loaded.template, self.loaded.built.tokenizer)
        return template.generation_prompt(conversation, image_token=self.loaded.built.image_token)

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy (or sampled, with ``temperature`` > 0) answers, cut at ``until``."""
        collator = utils.Collator(
            [request.args for request in requests],
            lambda args: (-len(args[0]), args[0]),
            grouping=True,
        )
        answers: list[str] = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="mllm answering")
        for chunk in collator.get_batched(n=self.batch_size_per_device, batch_fn=None):
            contexts, all_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk, strict=True)
            settings = self._sampling(dict(all_kwargs[0]))  # one group: the same kwargs
            batch = []
            for context, visual_fn, doc_id, task, split in zip(
                contexts, doc_to_visual, doc_ids, tasks, splits, strict=True
            ):
                images = self._visuals(visual_fn, doc_id, task, split)
                turn = self._human_turn(context, len(images))
                batch.append(GenerationRequest([{"from": "human", "value": turn}], images))
            for context, kwargs, completion in zip(
                contexts, all_kwargs, complete(self.loaded, batch, settings), strict=True
            ):
                answers.append(completion.text)
                self.cache_hook.add_partial("generate_until", (context, kwargs), completion.text)
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(answers)

    def _sampling(self, kwargs: dict) -> SamplingSettings:
        until = kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        temperature = float(kwargs.get("temperature") or 0.0)
        return SamplingSettings(
            max_new_tokens=int(kwargs.get("max_new_tokens") or self.max_new_tokens),
            temperature=temperature if kwargs.get("do_sample", temperature > 0) else 0.0,
            top_p=float(kwargs.get("top_p") or 1.0),
            stop=tuple(until),
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "the mllm model does not run multi-round (generate_until_multi_round) tasks; "
            "use tasks whose output_type is generate_until, loglikelihood or multiple_choice"
        )

    # ------------------------------------------------------------------ log-likelihood
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """For each request, log P(continuation | context, images) and whether greedy
        decoding would have written exactly the continuation."""
        results: list[tuple[float, bool]] = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="mllm scoring")
        size = self.batch_size_per_device
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            results.extend(self._score_batch([self._scored_ids(r.args) for r in chunk]))
            progress.update(len(chunk))
        progress.close()
        return results

    def _scored_ids(self, args: Sequence[Any]) -> tuple[list[int], int, list[Image.Image]]:
        """(prompt + reply ids, number of prompt ids, images) of one loglikelihood request."""
        context, target = args[0], args[1]
        images: list[Image.Image] = []
        if len(args) >= 6:  # (context, target, doc_to_visual, doc_id, task, split)
            doc_to_visual, doc_id, task, split = args[2:6]
            images = self._visuals(doc_to_visual, doc_id, task, split)
            if callable(target):
                target = target(self.task_dict[task][split][doc_id])
        template = resolve_template(self.loaded.template, self.loaded.built.tokenizer)
        prompt = self._prompt(context, len(images))
        separator = template.assistant_prefix[len(template.header) :]
        counts = image_token_counts(self.loaded, images)
        prompt_ids = encode_rendered(self.loaded, prompt, counts)
        full_ids = encode_rendered(self.loaded, prompt + separator + str(target).lstrip(), counts)
        return full_ids, len(prompt_ids), images

    @torch.no_grad()
    def _score_batch(
        self, items: list[tuple[list[int], int, list[Image.Image]]]
    ) -> list[tuple[float, bool]]:
        model, tokenizer = self.loaded.built.model, self.loaded.built.tokenizer
        device = next(model.llm.parameters()).device
        width = max(len(ids) for ids, _, _ in items)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor(
            [ids + [pad] * (width - len(ids)) for ids, _, _ in items], device=device
        )  # [batch, width], right-padded
        attention_mask = torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in items], device=device
        )
        images = [image for _, _, row_images in items for image in row_images]
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **prepare_images(self.loaded, images, device),
        ).logits.float()  # [batch, width, vocab]
        log_probs = torch.log_softmax(logits, dim=-1)
        scores = []
        for row, (ids, prompt_length, _) in enumerate(items):
            targets = torch.tensor(ids[prompt_length:], device=device)  # [reply]
            # the token at position p is predicted by the logits at p - 1
            row_log_probs = log_probs[row, prompt_length - 1 : len(ids) - 1]  # [reply, vocab]
            chosen = row_log_probs.gather(-1, targets[:, None]).sum()
            greedy = bool((row_log_probs.argmax(-1) == targets).all())
            scores.append((float(chosen), greedy))
        return scores
