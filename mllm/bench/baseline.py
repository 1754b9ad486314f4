"""The baseline: transformers' ``LlavaForConditionalGeneration`` trained with its ``Trainer``.

The Llava model is built from the same tower and LLM configs as ours, with our weights copied
in, so both sides start from identical parameters (their first losses agree). It trains on
the same tokenized samples in the same order (our dataset's output, padded by our collator,
which is what a Llava processor plus a padding collator would produce), with the same batch
sizes, learning rate schedule, clipping, precision and DataLoader workers.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from mllm.bench.measure import PeakMemory, TrainRun
from mllm.config import RecipeConfig, StageConfig
from mllm.data import DataCollator
from mllm.models.assembly import BuiltModel
from mllm.models.lora import is_adapted
from mllm.models.packed_attention import PACKED_SDPA
from mllm.training.sampler import StepBatchSampler, total_optimizer_steps
from mllm.training.timing import StepRecord

_TOWERS = ("clip", "siglip")


class BaselineUnsupportedError(ValueError):
    """The recipe's model has a part transformers' Llava cannot express."""


def llava_from(built: BuiltModel, recipe: RecipeConfig) -> LlavaForConditionalGeneration:
    """A Llava model with the architecture and weights of ``built`` (a clip/siglip tower and
    an ``mlp`` projector of depth 2, i.e. LLaVA-1.5's layout).

    Raises:
        BaselineUnsupportedError: another tower, projector, feature selection or layer list,
            or an LLM with LoRA adapters.
    """
    vision, projector = recipe.model.vision, recipe.model.projector
    if is_adapted(built.model.llm):
        raise BaselineUnsupportedError(
            "the baseline trains whole weights; benchmark a stage whose llm is full or frozen"
        )
    if vision.name not in _TOWERS or projector.name != "mlp" or projector.depth != 2:
        raise BaselineUnsupportedError(
            f"the baseline is transformers' Llava: model.vision must be one of {_TOWERS} and "
            f"model.projector mlp with depth 2 (got {vision.name}, {projector.name})"
        )
    if len(vision.feature_layer) != 1:
        raise BaselineUnsupportedError("the baseline takes a single model.vision.feature_layer")
    keeps_cls = vision.select == "cls_patch" or vision.name == "siglip"
    model = built.model
    config = LlavaConfig(
        vision_config=model.vision.encoder.config.to_dict(),
        text_config=model.llm.config.to_dict(),
        image_token_id=model.image_token_id,
        image_seq_length=model.num_image_tokens,
        projector_hidden_act="gelu",
        vision_feature_layer=vision.feature_layer[0],
        vision_feature_select_strategy="full" if keeps_cls else "default",
        multimodal_projector_bias=True,
    )
    attn = model.llm.config._attn_implementation
    attn = "sdpa" if attn == PACKED_SDPA else attn  # transformers' own kernel for the baseline
    llava = LlavaForConditionalGeneration(config)
    state = {}
    for key, value in model.vision.encoder.state_dict().items():
        state[f"model.vision_tower.{key}"] = value
    for ours, theirs in (("layers.0", "linear_1"), ("layers.2", "linear_2")):
        for kind in ("weight", "bias"):
            state[f"model.multi_modal_projector.{theirs}.{kind}"] = model.projector.state_dict()[
                f"{ours}.{kind}"
            ]
    for key, value in model.llm.state_dict().items():
        name = key.removeprefix("model.")
        state[f"model.language_model.{name}" if key.startswith("model.") else key] = value
    llava.load_state_dict(state, strict=True)
    llava.set_attn_implementation(attn)
    llava.generation_config.pad_token_id = built.tokenizer.pad_token_id
    for part, module in (
        ("vision", llava.model.vision_tower),
        ("projector", llava.model.multi_modal_projector),
    ):
        module.requires_grad_(any(p.requires_grad for p in model.component(part).parameters()))
    llm_trains = any(p.requires_grad for p in model.llm.parameters())
    llava.model.language_model.requires_grad_(llm_trains)
    llava.lm_head.requires_grad_(llm_trains)
    return llava.to(next(model.parameters()).device)


def drawn_batches(
    num_samples: int, recipe: RecipeConfig, stage: StageConfig
) -> tuple[int, list[list[int]]]:
    """``(optimizer steps, micro-batches of sample indices)`` our sampler draws for ``stage``
    on one process: what every other side is given to train on, in this order."""
    steps = total_optimizer_steps(
        num_samples, stage.global_batch_size, stage.epochs, stage.max_steps
    )
    sampler = StepBatchSampler(
        num_samples,
        micro_batch_size=stage.micro_batch_size,
        accumulation=stage.global_batch_size // stage.micro_batch_size,
        rank=0,
        world_size=1,
        seed=recipe.seed,
        total_steps=steps,
    )
    return steps, list(sampler)


def step_records(
    ends: list[float], micro_batches: list[list[int]], lengths: list[int], per_step: int
) -> list[StepRecord]:
    """One record per optimizer step from its end time and the micro-batches it trained on
    (tokens, padded slots of batches padded to their longest sample, samples)."""
    records = []
    for step, end in enumerate(ends):
        batches = micro_batches[step * per_step : (step + 1) * per_step]
        tokens = sum(lengths[i] for batch in batches for i in batch)
        slots = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
        records.append(StepRecord(end, tokens, slots, sum(len(batch) for batch in batches)))
    return records


class _InOrder(Dataset):
    """Our dataset's samples in a fixed order (the HF Trainer reads it sequentially)."""

    def __init__(self, dataset: Dataset, order: list[int]) -> None:
        self.dataset = dataset
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int):
        return self.dataset[self.order[index]]


class _StepClock(TrainerCallback):
    """Records the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.losses: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


@contextlib.contextmanager
def _single_process() -> Iterator[None]:
    """Hide the launcher variables our side set: with them (and the process group our
    DeepSpeed engine needs), transformers would wrap the baseline in a one-process
    DistributedDataParallel and time its gradient all-reduce too."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def train_baseline(
    llava: LlavaForConditionalGeneration,
    dataset: Dataset,
    recipe: RecipeConfig,
    stage: StageConfig,
    pad_token_id: int,
    *,
    warmup: int,
) -> TrainRun:
    """Train ``llava`` with ``transformers.Trainer`` on the samples our sampler would draw.

    Args:
        llava: from :func:`llava_from`.
        dataset: our tokenized dataset (``lengths`` gives each sample's tokens).
        recipe, stage: batch sizes, steps, optimiser and precision to match.
        pad_token_id: the tokenizer's pad id.
        warmup: steps left out of the measurement.
    """
    steps, micro_batches = drawn_batches(len(dataset), recipe, stage)
    order = [index for batch in micro_batches for index in batch]
    optim = stage.optim
    with tempfile.TemporaryDirectory() as output_dir, _single_process():
        args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=stage.micro_batch_size,
            gradient_accumulation_steps=stage.global_batch_size // stage.micro_batch_size,
            max_steps=steps,
            learning_rate=optim.lr,
            weight_decay=optim.weight_decay,
            adam_beta1=optim.betas[0],
            adam_beta2=optim.betas[1],
            adam_epsilon=optim.eps,
            lr_scheduler_type={"constant": "constant_with_warmup"}.get(
                optim.scheduler, optim.scheduler
            ),
            warmup_steps=math.ceil(optim.warmup_ratio * steps),  # as our Trainer rounds it
            max_grad_norm=optim.max_grad_norm or 0.0,
            bf16=stage.precision == "bf16",
            gradient_checkpointing=stage.gradient_checkpointing,
            fp16=stage.precision == "fp16",
            dataloader_num_workers=stage.data.num_workers,
            train_sampling_strategy="sequential",
            remove_unused_columns=False,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            seed=recipe.seed,
        )
        clock = _StepClock()
        trainer = Trainer(
            model=llava,
            args=args,
            train_dataset=_InOrder(dataset, order),
            data_collator=DataCollator(pad_token_id=pad_token_id),
            callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every step's logs (no tqdm)
        with PeakMemory() as memory:
            trainer.train()
        if trainer.model_wrapped is not llava:
            raise RuntimeError(
                f"the baseline was wrapped in {type(trainer.model_wrapped).__name__}"
            )
    per_step = stage.global_batch_size // stage.micro_batch_size
    records = step_records(clock.ends, micro_batches, dataset.lengths, per_step)
    return TrainRun(
        name="baseline",
        steps=records[warmup - 1 :],
        peak_mib=memory.peak_mib,
        losses=clock.losses,
    )
