"""Where a stage writes; every write is collective and atomic (``checkpoint.write_folder``).

STAGE/final                 the stage's output: loadable weights, the summary in its manifest
STAGE/best                  the best validation's weights (``early_stop``)
STAGE/checkpoints/step_N    resumable: DeepSpeed engine state, each rank's RNG state, the
                            trainer's state, and loadable weights as in ``final``
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mllm import checkpoint as ckpt
from mllm.config import RecipeConfig, dump_recipe
from mllm.models.assembly import BuiltModel
from mllm.training.distributed import Runtime

logger = logging.getLogger(__name__)

#: The tag DeepSpeed files its engine state under inside ``ENGINE_DIR``.
ENGINE_TAG = "state"


@dataclass(frozen=True)
class ResumePoint:
    """The newest complete resumable checkpoint and the trainer state it recorded."""

    folder: Path
    state: dict  # trainer_state.json: step, total_steps, world_size, early_stop, ...


class StageOutputs:
    """The folders of one stage, written from this rank's view of the model.

    Args:
        recipe: the resolved recipe (saved beside the weights).
        stage_name: the stage.
        built: the model (its tokenizer is saved too).
        saved_components: components whose weights the outputs hold.
        runtime: this process's rank (rank 0 writes, every rank gathers).
    """

    def __init__(
        self,
        recipe: RecipeConfig,
        stage_name: str,
        built: BuiltModel,
        saved_components: list[str],
        runtime: Runtime,
    ) -> None:
        self.recipe = recipe
        self.stage_name = stage_name
        self.built = built
        self.saved_components = saved_components
        self.runtime = runtime
        self.root = Path(recipe.stage_output_dir(stage_name))

    @property
    def final_dir(self) -> Path:
        return self.root / "final"

    @property
    def best_dir(self) -> Path:
        return self.root / "best"

    @property
    def checkpoint_root(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoint_root / f"step_{step:08d}"

    def save_loadable(
        self, folder: Path, *, step: int, metrics: dict[str, float], extra: dict | None = None
    ) -> Path:
        """Write ``folder`` (``final_dir`` or ``best_dir``) with the weights and manifest."""
        return self._write(folder, lambda staging: self._weights(staging, step, metrics, extra))

    def save_resumable(self, engine, *, step: int, trainer_state: dict, keep: int) -> Path:
        """Write ``checkpoint_dir(step)``, then delete all but the newest ``keep``."""

        def write(staging: Path) -> None:
            engine.save_checkpoint(
                str(staging / ckpt.ENGINE_DIR),
                tag=ENGINE_TAG,
                save_latest=False,
                exclude_frozen_parameters=True,
            )
            rng_file = staging / f"rng_state_rank{self.runtime.rank}.safetensors"
            save_file({"cpu": torch.get_rng_state()}, str(rng_file))
            if self.runtime.is_main:
                text = json.dumps(trainer_state, indent=2) + "\n"
                (staging / ckpt.TRAINER_STATE_NAME).write_text(text)
            self._weights(staging, step, {}, None)

        folder = self._write(self.checkpoint_dir(step), write)
        if self.runtime.is_main:
            for old in ckpt.list_checkpoints(self.checkpoint_root)[:-keep]:
                shutil.rmtree(old)
        return folder

    def resume_point(self) -> ResumePoint | None:
        """The newest complete resumable checkpoint, if any.

        Raises:
            CheckpointError: it was written by another number of processes (the data order
                would change).
        """
        found = ckpt.list_checkpoints(self.checkpoint_root)
        if not found:
            return None
        folder = found[-1]
        state = json.loads((folder / ckpt.TRAINER_STATE_NAME).read_text())
        if state["world_size"] != self.runtime.world_size:
            raise ckpt.CheckpointError(
                f"{folder} was written by {state['world_size']} processes; resume with the same "
                f"number (now {self.runtime.world_size}) so the data order stays the same"
            )
        return ResumePoint(folder, state)

    def restore(self, engine, point: ResumePoint) -> None:
        """Load the engine state (optimizer, scheduler, trained weights) and this rank's RNG."""
        engine.load_checkpoint(
            str(point.folder / ckpt.ENGINE_DIR), tag=ENGINE_TAG, load_module_strict=False
        )
        rng = point.folder / f"rng_state_rank{self.runtime.rank}.safetensors"
        torch.set_rng_state(load_file(str(rng))["cpu"])

    def _weights(
        self, folder: Path, step: int, metrics: dict[str, float], extra: dict | None
    ) -> None:
        state = ckpt.gather_state_dict(
            self.built.model, self.saved_components, keep=self.runtime.is_main
        )
        if self.runtime.is_main:
            ckpt.write_weights_and_manifest(
                folder,
                state,
                stage=self.stage_name,
                step=step,
                components=self.saved_components,
                metrics=metrics,
                recipe_yaml=dump_recipe(self.recipe),
                tokenizer=self.built.tokenizer,
                extra=extra,
            )

    def _write(self, folder: Path, write: Callable[[Path], None]) -> Path:
        ckpt.write_folder(folder, write, is_main=self.runtime.is_main)
        if self.runtime.is_main:
            logger.info("saved %s", folder)
        return folder
