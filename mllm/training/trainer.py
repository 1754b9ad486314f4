"""The optimisation loop of one stage on a DeepSpeed engine, with resumable checkpoints."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mllm.config import RecipeConfig
from mllm.models.assembly import BuiltModel
from mllm.training.deepspeed_config import offloads_optimizer
from mllm.training.distributed import Runtime
from mllm.training.early_stop import EarlyStopping
from mllm.training.interrupt import StopRequests, TrainingInterrupted
from mllm.training.lr_schedule import build_lr_scheduler
from mllm.training.metric_window import MetricWindow, sample_tokens
from mllm.training.metrics import MetricsLogger, global_grad_norm
from mllm.training.sampler import (
    StepBatchSampler,
    grouping_for,
    step_loader,
    total_optimizer_steps,
)
from mllm.training.stage import build_optimizer, parameter_groups, set_modes
from mllm.training.stage_outputs import StageOutputs
from mllm.training.summary import RunSummary, RunTotals, summarise
from mllm.training.timing import NullTimer
from mllm.training.validation import Validator, describe_validation

logger = logging.getLogger(__name__)


class Trainer:
    """Runs one stage: steps, logging, periodic checkpoints, resume and the final save.

    Args:
        recipe: the validated recipe.
        stage_name: which of its stages this is.
        built: the model (stage already applied), tokenizer and image processor.
        dataset: yields samples the ``collator`` turns into model inputs.
        ds_config: the full DeepSpeed config (see ``build_deepspeed_config``).
        runtime: this process's rank and device.
        saved_components: components whose weights the outputs must hold (trained now or earlier).
        timer: receives the step's sections (data, forward, backward, optimizer) and batch
            sizes; the default records nothing (see ``mllm.training.timing``).
        validator: validates every ``eval.every`` steps and at the end (``stages.S.eval``);
            with ``early_stop`` the best weights go to ``STAGE/best``.
    """

    def __init__(
        self,
        *,
        recipe: RecipeConfig,
        stage_name: str,
        built: BuiltModel,
        dataset: Dataset,
        collator,
        ds_config: dict,
        runtime: Runtime,
        saved_components: list[str],
        timer: NullTimer | None = None,
        validator: Validator | None = None,
    ) -> None:
        import deepspeed

        self.recipe = recipe
        self.stage_name = stage_name
        self.stage = recipe.stages[stage_name]
        self.built = built
        self.dataset = dataset
        self.collator = collator
        self.runtime = runtime
        self.timer = timer or NullTimer()
        self.validator = validator
        self.early_stop = EarlyStopping(self.stage.early_stop) if self.stage.early_stop else None
        self.validation: dict[str, float] | None = None  # the last validation's values
        self._validated_step = -1
        self.stopped_early: str | None = None
        self._postfix: dict[str, str] = {}
        self.outputs = StageOutputs(recipe, stage_name, built, saved_components, runtime)
        self.out_dir = self.outputs.root
        self.accumulation = ds_config["gradient_accumulation_steps"]
        self.total_steps = total_optimizer_steps(
            len(dataset), self.stage.global_batch_size, self.stage.epochs, self.stage.max_steps
        )
        optim = self.stage.optim
        groups = parameter_groups(built.model, optim)
        optimizer = None
        if not offloads_optimizer(ds_config):
            optimizer = build_optimizer(groups, optim)
        warmup = math.ceil(optim.warmup_ratio * self.total_steps)

        def make_scheduler(opt):
            return build_lr_scheduler(opt, optim.scheduler, warmup, self.total_steps)

        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=built.model,
            optimizer=optimizer,
            model_parameters=groups if optimizer is None else None,
            lr_scheduler=make_scheduler,
            config=ds_config,
        )
        # ZeRO and DeepSpeed's bf16/fp16 optimizers compute the global norm in their step; with a
        # plain torch optimizer (no ZeRO) the trainer takes it before the step, as clipping does.
        self._own_grad_norm = not hasattr(self.engine.optimizer, "_global_grad_norm")
        self._grad_norm: float | None = None
        self.step = 0
        self.start_step = 0
        self.summary: RunSummary | None = None
        self.skipped_records: set[str] = set()  # distinct records dropped at load time (this rank)
        self.metrics = MetricsLogger(
            self.out_dir, recipe.logging, f"{recipe.name}/{stage_name}", runtime.is_main
        )

    # ------------------------------------------------------------------ data
    def _loader(self) -> DataLoader:
        sampler = StepBatchSampler(
            len(self.dataset),
            micro_batch_size=self.stage.micro_batch_size,
            accumulation=self.accumulation,
            rank=self.runtime.rank,
            world_size=self.runtime.world_size,
            seed=self.recipe.seed,
            total_steps=self.total_steps,
            start_step=self.step,
            grouping=grouping_for(
                self.dataset, self.stage.data.group_by, f"stages.{self.stage_name}.data.group_by"
            ),
        )
        return step_loader(
            self.dataset,
            sampler,
            self.collator,
            num_workers=self.stage.data.num_workers,
            pin_memory=self.runtime.device.type == "cuda",
            seed=self.recipe.seed + self.step,
        )

    def _to_device(self, batch: dict) -> dict:
        return {
            k: v.to(self.runtime.device, non_blocking=True) if v is not None else None
            for k, v in batch.items()
        }

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, float]:
        """Run from ``self.step`` to the last step; returns the final logged metrics."""
        model = self.engine
        self._train_mode()
        progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.runtime.is_main,
            desc=self.stage_name,
            dynamic_ncols=True,
        )
        self.start_step = self.step
        self._totals = RunTotals()
        start = time.perf_counter()
        # Log lines during the loop go through tqdm, above the bar instead of through it.
        with logging_redirect_tqdm():
            with StopRequests() as stop:
                last = self._run_steps(model, progress, MetricWindow(), stop)
            if self.validator is not None and self._validated_step != self.step:
                self._validate(progress)
        if self.validation is not None:
            last = {**last, **self.validation}
        self.summary = summarise(
            self.stage_name,
            self._totals,
            steps=(self.start_step, self.step),
            wall_s=time.perf_counter() - start,
            final_loss=last.get("loss"),
            output=self.final_dir,
            device=self.runtime.device,
            validation=self.validation,
            stopped_early=self.stopped_early,
        )
        dropped = len(getattr(self.dataset, "dropped", ()))
        if dropped or self.skipped_records:
            logger.warning(
                "stage %s skipped %d records before training and %d while loading (rank %d)",
                self.stage_name,
                dropped,
                len(self.skipped_records),
                self.runtime.rank,
            )
        progress.close()
        self.metrics.close()
        return last

    def _run_steps(
        self, model, progress: tqdm, window: MetricWindow, stop: StopRequests
    ) -> dict[str, float]:
        last: dict[str, float] = {}
        micro = 0
        timer = self.timer
        batches = iter(self._loader())
        while True:
            with timer.section("data"):
                batch = next(batches, None)
            if batch is None:
                break
            skipped = batch.pop("skipped", ())
            window.skipped += self._note_skipped(skipped)
            tokens = sample_tokens(batch)
            if batch["input_ids"].shape[0]:
                batch = self._to_device(batch)
                with timer.section("forward"):
                    loss = model(**batch).loss
                    window.loss += loss.item()
                window.micro += 1
                window.tokens += tokens
            else:
                loss = self._zero_loss(model)
            with timer.section("backward"):
                model.backward(loss)
            if self._own_grad_norm and (micro + 1) % self.accumulation == 0:
                self._grad_norm = global_grad_norm(self.engine.module.parameters())
            with timer.section("optimizer"):
                model.step()
            sizes = {
                "tokens": tokens,
                "slots": batch["input_ids"].numel(),
                "samples": self.stage.micro_batch_size - len(skipped),
            }
            timer.end_micro(**sizes)
            self._totals.add(**sizes)
            micro += 1
            if micro % self.accumulation:
                continue
            timer.end_step()
            self.step += 1
            progress.update(1)
            if self.step % self.stage.log_every == 0 or self.step == self.total_steps:
                last = self._log(window, progress)
                window = MetricWindow()
            if self._validation_due():
                self._validate(progress)
                if self.early_stop is not None and self.early_stop.should_stop:
                    self.stopped_early = self.early_stop.describe()
                    logger.info(
                        "stage %s stops at step %d: %s",
                        self.stage_name,
                        self.step,
                        self.stopped_early,
                    )
                    break
            if (
                self.stage.save_every
                and self.step % self.stage.save_every == 0
                and self.step < self.total_steps
            ):
                self.save_resumable()
            signum = stop.agreed(self.runtime) if self.step < self.total_steps else 0
            if signum:
                progress.close()
                saved = self.outputs.checkpoint_dir(self.step)
                if not saved.is_dir():
                    saved = self.save_resumable()
                raise TrainingInterrupted(signum, str(saved))
        return last

    def _train_mode(self) -> None:
        """The engine in train mode, each component in the mode its stage gives it."""
        self.engine.train()
        set_modes(
            self.built.model,
            self.stage.train,
            self.stage.frozen_modules,
            key=f"stages.{self.stage_name}.frozen_modules",
        )

    def _validation_due(self) -> bool:
        every = self.stage.eval.every if self.stage.eval is not None else None
        return self.validator is not None and bool(every) and self.step % every == 0

    def _validate(self, progress: tqdm) -> None:
        """Validate now (collective), log it, and keep the weights when they are the best."""
        assert self.validator is not None
        values = self.validator.run(self.engine)
        self._train_mode()
        self._validated_step = self.step
        self.validation = values
        self.metrics.log(self.step, values)
        self._postfix["val_loss"] = f"{values['val_loss']:.4f}"
        if "val_accuracy" in values:
            self._postfix["val_acc"] = f"{values['val_accuracy']:.1%}"
        progress.set_postfix(self._postfix)
        logger.info("step %d: %s", self.step, describe_validation(values))
        if self.early_stop is not None and self.early_stop.update(self.step, values):
            self.save_best(values)

    def _note_skipped(self, skipped) -> int:
        """Log each record dropped at load time once; returns how many this batch lost."""
        for bad in skipped:
            if bad.where not in self.skipped_records:
                self.skipped_records.add(bad.where)
                logger.warning("skipped %s [%s]: %s", bad.where, bad.kind, bad.reason)
        return len(skipped)

    def _zero_loss(self, model) -> torch.Tensor:
        """A loss of exactly 0 through the whole model, for a micro-batch whose samples were
        all dropped: every rank still runs forward/backward, keeping collectives and gradient
        accumulation in step, and the update is unchanged."""
        pad = self.built.tokenizer.pad_token_id
        dummy = {"input_ids": torch.tensor([[pad]]), "attention_mask": torch.tensor([[1]])}
        cache = getattr(self.dataset, "feature_cache", None)
        if cache is not None:  # like the other batches: no image and no tower on any rank
            dummy["image_features"] = cache.features([])  # [0, P, D]
        return model(**self._to_device(dummy)).logits.sum() * 0.0

    def _log(self, window: MetricWindow, progress: tqdm) -> dict[str, float]:
        values = window.row(self.runtime.device, lr=self.scheduler.get_last_lr()[0])
        grad_norm = self._grad_norm if self._own_grad_norm else self.engine.get_global_grad_norm()
        if grad_norm is not None:  # this (the logged) optimizer step's norm, before clipping
            values["grad_norm"] = float(grad_norm)
        self._postfix.update(
            loss=f"{values['loss']:.4f}",
            lr=f"{values['lr']:.2e}",
            tok_s=f"{values['tokens_per_s']:.0f}",
        )
        progress.set_postfix(self._postfix)
        self.metrics.log(self.step, values)
        return values

    # ------------------------------------------------------------------ checkpoints
    @property
    def final_dir(self) -> Path:
        return self.outputs.final_dir

    def save_final(self, metrics: dict[str, float]) -> Path:
        """Write ``STAGE/final`` with the run's summary in its manifest, then print the summary
        (collective)."""
        extra = {"summary": self.summary.to_dict()} if self.summary is not None else None
        final = self.outputs.save_loadable(
            self.final_dir, step=self.step, metrics=metrics, extra=extra
        )
        if self.summary is not None and self.runtime.is_main:
            logger.info("%s", self.summary.line())
        return final

    def save_best(self, values: dict[str, float]) -> Path:
        """Write ``STAGE/best``: the weights of the best validation so far (collective)."""
        return self.outputs.save_loadable(
            self.outputs.best_dir, step=self.step, metrics=values, extra={"validation": values}
        )

    def save_resumable(self) -> Path:
        """Write ``STAGE/checkpoints/step_N`` with optimizer, scheduler and data position (collective)."""
        state = {
            "step": self.step,
            "total_steps": self.total_steps,
            "world_size": self.runtime.world_size,
        }
        if self.early_stop is not None:
            state["early_stop"] = self.early_stop.state_dict()
        return self.outputs.save_resumable(
            self.engine, step=self.step, trainer_state=state, keep=self.stage.keep_checkpoints
        )

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint of this stage, if any."""
        point = self.outputs.resume_point()
        if point is None:
            return False
        self.outputs.restore(self.engine, point)
        self.step = point.state["step"]
        if self.early_stop is not None and "early_stop" in point.state:
            self.early_stop.load_state_dict(point.state["early_stop"])
        self.metrics.drop_after(self.step)  # rows a killed run logged past its last checkpoint
        logger.info("resumed from %s at step %d of %d", point.folder, self.step, self.total_steps)
        return True
