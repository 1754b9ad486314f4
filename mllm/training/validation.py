"""Validation during a stage: held-out loss, and the accuracy of answers the model generates.

A validation loss shares the training labels, so it cannot show that the labels themselves
are wrong, nor that a low loss still picks the wrong first token; answering held-out questions
through the generation path does. So a validation reports both:

- ``val_loss``: the mean cross-entropy per target token over the held-out samples (the same
  labels as training);
- ``val_accuracy``: the held-out records that are one question and one reference answer are
  asked as ``mllm eval`` asks them (the stage's template, greedy, the template's stop
  strings), and the answer counts when it equals the reference under
  ``mllm.eval.scoring.is_correct``. Records whose reference is longer than the answer budget
  (``eval.max_new_tokens``) could never match and are not asked.

Both are sharded over ranks and summed with one collective each, so a validation under
ZeRO with N processes gives the single-process values: samples are split by position, and a
rank with less work runs a dummy batch whose result it drops, since a ZeRO-3 forward is a
collective that every rank must join (``generate`` keeps ranks in step with ``synced_gpus``,
which transformers turns on under ZeRO-3).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from mllm.checkpoint import LoadedModel
from mllm.config.schema import EvalConfig, RecipeConfig
from mllm.data.collator import DataCollator
from mllm.data.conversation import ConversationError, parse_conversation
from mllm.data.dataset import ConversationDataset
from mllm.data.images import ImageLoadError, load_image, resolve_image_path
from mllm.data.records import DataError, record_images
from mllm.data.tokenize import IGNORE_INDEX
from mllm.data.validate import place_image_markers
from mllm.eval.scoring import is_correct
from mllm.inference.generate import GenerationRequest, SamplingSettings, complete
from mllm.models.assembly import BuiltModel
from mllm.training.distributed import Runtime, all_reduce_sum

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """A held-out record asked as a question: its prompt turns, image paths and reference."""

    prompt: list[dict[str, str]]  # the record's turns up to and including the human one
    images: list[str]
    answer: str
    where: str  # ``file: record N (id X)``


def single_answer_questions(
    dataset: ConversationDataset, count: int, *, tokenizer, max_new_tokens: int
) -> tuple[list[Question], int]:
    """The first ``count`` samples of ``dataset`` that are one question and one answer whose
    tokens (plus the stop) fit ``max_new_tokens``.

    Returns:
        The questions, and how many single-answer records were left out as too long.
    """
    questions: list[Question] = []
    too_long = 0
    for index in range(count):
        record, where = dataset.kept_record(index)
        images = record_images(record)
        turns = place_image_markers(record["conversations"], len(images), dataset.image_token)
        try:
            parsed = parse_conversation(turns)
        except ConversationError:  # the dataset kept it, so this does not happen
            continue
        if len(parsed.exchanges) != 1:
            continue
        answer = parsed.exchanges[0].assistant or ""
        if len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1 > max_new_tokens:
            too_long += 1
            continue
        questions.append(Question(list(turns[:-1]), images, answer, where))
    return questions, too_long


def describe_validation(values: dict[str, float]) -> str:
    """One line for the console: loss, accuracy and, for a mix, its two sides."""
    text = f"val_loss {values['val_loss']:.4f}"
    if "val_accuracy" in values:
        text += f", val_accuracy {values['val_accuracy']:.1%} of {values['val_questions']:.0f}"
    if "val_accuracy_image" in values:
        text += (
            f" (with images {values['val_accuracy_image']:.1%}, "
            f"text-only {values['val_accuracy_text']:.1%})"
        )
    return text + f" ({values['val_seconds']:.1f} s)"


def _shard_batches(items: Sequence, rank: int, world_size: int, size: int) -> Iterator[list]:
    """This rank's share of ``items`` in batches of ``size``; every rank yields the same number
    of batches (some possibly empty), so that collective forward passes stay matched."""
    mine = list(items[rank::world_size])
    batches = math.ceil(math.ceil(len(items) / world_size) / size)
    for start in range(0, batches * size, size):
        yield mine[start : start + size]


class Validator:
    """Runs a stage's validation on its held-out set (collective: every rank calls it).

    Args:
        dataset: the held-out samples (``build_stage_datasets``).
        config: the stage's ``eval`` section.
        built: the model being trained, its tokenizer and image processor.
        recipe: the recipe (generation reads its model settings).
        template: the stage's template name.
        runtime: this process's rank and device.
    """

    def __init__(
        self,
        dataset: ConversationDataset,
        config: EvalConfig,
        *,
        built: BuiltModel,
        recipe: RecipeConfig,
        template: str,
        runtime: Runtime,
    ) -> None:
        self.dataset = dataset
        self.config = config
        self.runtime = runtime
        self.count = min(len(dataset), config.max_samples or len(dataset))
        self.collator = DataCollator(pad_token_id=built.tokenizer.pad_token_id)
        self.generator = LoadedModel(
            built=built,
            recipe=recipe,
            template=template,
            image_aspect_ratio=dataset.image_mode,
            manifest={},
            image_grid_pinpoints=dataset.anyres and list(dataset.anyres.pinpoints),
        )
        self.questions: list[Question] = []
        if config.max_new_tokens:
            self.questions, too_long = single_answer_questions(
                dataset, self.count, tokenizer=built.tokenizer, max_new_tokens=config.max_new_tokens
            )
            if too_long:
                logger.info(
                    "validation: %d single-answer record%s a reference longer than "
                    "eval.max_new_tokens=%d: loss only",
                    too_long,
                    " has" if too_long == 1 else "s have",
                    config.max_new_tokens,
                )
        logger.info(
            "validation: %d held-out samples, %d asked as questions",
            self.count,
            len(self.questions),
        )

    @torch.no_grad()
    def run(self, engine) -> dict[str, float]:
        """Validate ``engine``'s model (left in eval mode: the caller restores train mode).

        Returns:
            ``val_loss``, ``val_tokens`` (target tokens), ``val_samples``, and with questions
            ``val_accuracy`` (in [0, 1]) and ``val_questions``; when questions with and without
            images are mixed (LLaVA's instruct mix), ``val_accuracy_image`` and
            ``val_accuracy_text`` too. Equal on every rank.
        """
        started = time.perf_counter()
        engine.eval()
        loss_sum, tokens, samples = self._loss(engine)
        values = {
            "val_loss": loss_sum / max(tokens, 1),
            "val_tokens": tokens,
            "val_samples": samples,
        }
        if self.questions:
            # Generation runs eager even with stages.S.compile: decoding with a KV cache would
            # compile each layer anew (the cache is indexed by layer) for a few questions.
            with torch.compiler.set_stance("force_eager"):
                counts = self._accuracy()  # [correct, asked] with images, then text-only
            correct, asked = counts[0] + counts[2], counts[1] + counts[3]
            values.update(val_accuracy=correct / max(asked, 1), val_questions=asked)
            if counts[1] and counts[3]:  # a mix: say which side the misses are on
                values.update(
                    val_accuracy_image=counts[0] / counts[1],
                    val_accuracy_text=counts[2] / counts[3],
                )
        values["val_seconds"] = time.perf_counter() - started
        return values

    def _loss(self, engine) -> tuple[float, int, int]:
        """Summed token loss, target tokens and samples over every rank."""
        loss_sum, tokens, samples = 0.0, 0, 0
        rank, world = self.runtime.rank, self.runtime.world_size
        for positions in _shard_batches(range(self.count), rank, world, self.config.batch_size):
            dummy = not positions
            items = [self.dataset[i] for i in (positions or [0])]
            batch = self.collator(items)
            skipped = batch.pop("skipped", ())
            if not batch["input_ids"].shape[0]:  # every image of the batch failed (skip)
                batch, dummy = self.collator([self.dataset[0]]), True
                batch.pop("skipped", None)
            batch = {
                k: v.to(self.runtime.device) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()
            }
            batch.pop("num_tokens", None)
            output = engine(**batch)
            # transformers' loss is the mean over target tokens after the shift
            targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            if not dummy:
                loss_sum += float(output.loss.float()) * targets
                tokens += targets
                samples += len(items) - len(skipped)
        loss_sum, tokens, samples = all_reduce_sum([loss_sum, tokens, samples], self.runtime.device)
        return loss_sum, int(tokens), int(samples)

    def _accuracy(self) -> list[int]:
        """Correct answers and questions asked over every rank: ``[correct, asked]`` for
        questions with images, then for text-only ones."""
        counts = [0, 0, 0, 0]
        rank, world = self.runtime.rank, self.runtime.world_size
        settings = SamplingSettings(max_new_tokens=self.config.max_new_tokens)
        for batch in _shard_batches(self.questions, rank, world, self.config.batch_size):
            dummy = not batch
            requests = [self._request(question) for question in batch or self.questions[:1]]
            asking = [request for request in requests if request is not None]
            if not asking:  # every image failed to load (skip): still join the collectives
                dummy, asking = True, [self._request(self.questions[0], dummy=True)]
            completions = complete(self.generator, [request for _, request in asking], settings)
            if dummy:
                continue
            for (question, _), completion in zip(asking, completions, strict=True):
                side = 0 if question.images else 2
                counts[side] += is_correct(completion.text, question.answer)
                counts[side + 1] += 1
        return [int(c) for c in all_reduce_sum(counts, self.runtime.device)]

    def _request(
        self, question: Question, *, dummy: bool = False
    ) -> tuple[Question, GenerationRequest] | None:
        """The question as a generation request, or None when an image fails under ``skip``
        (a dummy request gets blank images instead)."""
        images: list[Image.Image] = []
        folder = self.dataset.image_folder
        for path in question.images:
            try:
                images.append(
                    load_image(
                        resolve_image_path(folder, path), max_pixels=self.dataset.max_image_pixels
                    )
                )
            except ImageLoadError as err:
                if dummy:
                    images.append(Image.new("RGB", (32, 32)))
                    continue
                if self.dataset.on_bad_record == "fail":
                    raise DataError(f"{question.where}, field 'image': {err}") from None
                return None
        return question, GenerationRequest(question.prompt, images)
