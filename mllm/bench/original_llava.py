"""The original LLaVA code as a second baseline: ``llava.train.train.train()`` in a side venv.

LLaVA 1.2.2 needs transformers 4.36, so it cannot share this process: each round runs
``scripts/llava_train_driver.py`` with the side venv's python (``--llava-python``; made by
``scripts/make_llava_side_venv.sh``). The driver starts from the weights our side starts
from (the LLM with our added embedding rows, the tiny CLIP tower, our projector as LLaVA's
``mm_projector.bin``), reads the bench's records and images through LLaVA's own dataset,
in the order our sampler draws them, with the same batch size, optimiser, schedule, clipping,
precision and DataLoader workers; its step times are turned into the same
:class:`~mllm.bench.measure.TrainRun` as the other sides', with our tokenized lengths (the
same tokens when LLaVA's tokenization agrees: the "loss diff" column says whether it does).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from mllm.bench.baseline import drawn_batches, step_records
from mllm.bench.measure import TrainRun
from mllm.config import RecipeConfig
from mllm.models.lora import is_adapted

#: The driver, run by the side venv's python.
DRIVER = Path(__file__).resolve().parents[2] / "scripts" / "llava_train_driver.py"
#: LLaVA's conversation version for each of our templates (the same prompt and labels).
LLAVA_VERSIONS = {"plain": "plain", "vicuna_v1": "v1"}
#: The side's name in the tables.
NAME = "original LLaVA"


class OriginalLlavaError(RuntimeError):
    """The driver failed; the message ends with its output."""


def llava_projector_state(projector: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our 2-layer MLP projector as LLaVA's ``mm_projector.bin`` names it (``mlp2x_gelu``:
    ``Sequential(Linear, GELU, Linear)``, the layout of ours)."""
    state = projector.state_dict()
    return {
        f"model.mm_projector.{key}": state[f"layers.{key}"].detach().clone()
        for key in ("0.weight", "0.bias", "2.weight", "2.bias")
    }


@dataclass
class OriginalLlava:
    """One cell's original-LLaVA side: start weights written once, then one run per round.

    Attributes:
        python: the side venv's python.
        folder: scratch folder of this cell (start weights, specs, the driver's copies).
        spec: what every round's driver run gets (see the driver's docstring).
        micro_batches, lengths: the samples each step trains on, and their tokens (ours).
        mismatches: samples of the last run whose labels LLaVA masked whole after its
            "tokenization mismatch" warning (its v1 round arithmetic; docs/benchmarks.md).
    """

    python: Path
    folder: Path
    spec: dict
    micro_batches: list[list[int]]
    lengths: list[int]
    mismatches: int = 0

    @classmethod
    def prepare(
        cls, python: Path, folder: Path, recipe: RecipeConfig, stage_name: str, threads: int
    ) -> OriginalLlava:
        """Build the stage as our side does and write its start weights and the spec.

        Raises:
            ValueError: the template has no LLaVA version, the model is not LLaVA-1.5's
                layout (a clip tower, an ``mlp`` projector of depth 2, one feature layer -2),
                or the stage accumulates gradients, is not fp32, trains the tower or has LoRA.
        """
        from mllm.bench.ours import set_up_without_cache

        stage = recipe.stages[stage_name]
        model = recipe.model
        if stage.data.template not in LLAVA_VERSIONS:
            raise ValueError(
                f"the original LLaVA side knows the templates {list(LLAVA_VERSIONS)}, "
                f"not {stage.data.template!r}"
            )
        if (model.vision.name, model.projector.name, model.projector.depth) != ("clip", "mlp", 2):
            raise ValueError("the original LLaVA side needs a clip tower and an mlp projector")
        if list(model.vision.feature_layer) != [-2] or stage.global_batch_size != (
            stage.micro_batch_size
        ):
            raise ValueError("the original LLaVA side runs feature layer -2 and no accumulation")
        if stage.precision != "fp32":
            raise ValueError("the original LLaVA side is wired for fp32 stages only")
        setup = set_up_without_cache(recipe, stage_name)
        dataset, built = setup.dataset, setup.built.model
        if is_adapted(built.llm) or any(p.requires_grad for p in built.vision.parameters()):
            raise ValueError(
                "the original LLaVA side trains the projector, or it and the whole LLM: "
                "benchmark a stage with a frozen tower and no LoRA"
            )
        llm_trains = any(p.requires_grad for p in built.llm.parameters())
        folder.mkdir(parents=True, exist_ok=True)
        llm = folder / "start" / "llm"
        built.llm.save_pretrained(llm)
        for name in ("tokenizer.model", "tokenizer_config.json", "tokenizer.json"):
            source = Path(model.llm.path) / name
            if source.is_file():
                (llm / name).write_bytes(source.read_bytes())
        projector = folder / "start" / "mm_projector.bin"
        torch.save(llava_projector_state(built.projector), projector)
        steps, micro_batches = drawn_batches(len(dataset), recipe, stage)
        records = [dataset.kept_record(i)[0] for i in range(len(dataset))]
        records_path = folder / "start" / "records.json"
        records_path.write_text(json.dumps(records))
        optim = stage.optim
        spec = {
            "stage": "instruct" if llm_trains else "align",
            "version": LLAVA_VERSIONS[stage.data.template],
            "llm": str(llm),
            "vision_tower": str(model.vision.path),
            "projector": str(projector),
            "records": str(records_path),
            "image_folder": str(stage.data.image_folder),
            "order": [i for batch in micro_batches for i in batch],
            "batch_size": stage.micro_batch_size,
            "max_steps": steps,
            "lr": optim.lr,
            "weight_decay": optim.weight_decay,
            "betas": list(optim.betas),
            "eps": optim.eps,
            "lr_scheduler": {"constant": "constant_with_warmup"}.get(
                optim.scheduler, optim.scheduler
            ),
            "warmup_steps": math.ceil(optim.warmup_ratio * steps),  # as our Trainer rounds it
            "max_grad_norm": optim.max_grad_norm or 0.0,
            "max_length": stage.data.max_length,
            "workers": stage.data.num_workers,
            "seed": recipe.seed,
            "attn_implementation": "sdpa",
            "tower_fp32": True,
            "threads": threads,
            "workdir": str(folder / "driver"),
            "result": str(folder / "result.json"),
        }
        (folder / "spec.json").write_text(json.dumps(spec))
        return cls(Path(python), folder, spec, micro_batches, list(dataset.lengths))

    def train(self, warmup: int) -> TrainRun:
        """One driver run; its steps after ``warmup`` are measured.

        Raises:
            OriginalLlavaError: the driver exited non-zero.
        """
        result = Path(self.spec["result"])
        result.unlink(missing_ok=True)
        threads = str(self.spec["threads"])
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        done = subprocess.run(
            [str(self.python), str(DRIVER), str(self.folder / "spec.json")],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not result.is_file():
            tail = (done.stdout + done.stderr)[-4000:]
            raise OriginalLlavaError(f"{DRIVER.name} exited {done.returncode}:\n{tail}")
        out = json.loads(result.read_text())
        self.mismatches = done.stdout.count("tokenization mismatch")
        records = step_records(out["step_ends"], self.micro_batches, self.lengths, per_step=1)
        return TrainRun(
            name=NAME, steps=records[warmup - 1 :], peak_mib=out["peak_mib"], losses=out["losses"]
        )
