"""A tiny training workspace (models, shapes data, recipe) shared by the training tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from mllm.demo.shapes import make_shapes_dataset
from mllm.tiny import make_tiny_models

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "scripts" / "train.py"


def make_workspace(root: Path) -> dict[str, Path]:
    models = make_tiny_models(
        root / "models", image_size=32, patch_size=8, llm_hidden=32, vision_hidden=32
    )
    data = make_shapes_dataset(
        root / "data", num_align=32, num_instruct=32, num_test=4, image_size=32
    )
    return {
        "root": root,
        **models,
        "data": data.root,
        "images": data.image_folder,
        "align": data.align_json,
        "instruct": data.instruct_json,
    }


def tiny_recipe(
    ws: dict[str, Path],
    output_dir: Path,
    *,
    align: dict | None = None,
    instruct: dict | None = None,
) -> dict:
    def stage(data: Path, template: str, train: dict, extra: dict | None) -> dict:
        base = {
            "data": {
                "path": str(data),
                "image_folder": str(ws["images"]),
                "template": template,
                "max_length": 256,
            },
            "train": train,
            "optim": {"lr": 1e-2, "warmup_ratio": 0.0},
            "max_steps": 3,
            "global_batch_size": 4,
            "micro_batch_size": 2,
            "precision": "fp32",
        }
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return base

    return {
        "name": "tiny",
        "output_dir": str(output_dir),
        "seed": 0,
        "model": {
            "vision": {"name": "clip", "path": str(ws["clip"])},
            "projector": {"name": "mlp", "depth": 2},
            "llm": {"path": str(ws["llama"]), "family": "llama"},
        },
        "stages": {
            "align": stage(
                ws["align"],
                "plain",
                {"vision": "frozen", "projector": "full", "llm": "frozen"},
                align,
            ),
            "instruct": {
                "init_from": "stage:align",
                **stage(
                    ws["instruct"],
                    "vicuna_v1",
                    {"vision": "frozen", "projector": "full", "llm": "full"},
                    instruct,
                ),
            },
        },
    }


def workspace_dataset(ws: dict[str, Path], built, split: str = "instruct", records=None, **options):
    """A ``ConversationDataset`` over the workspace's ``split`` (or ``records``), prepared for
    ``built``'s tokenizer, image processor and image tokens: ``vicuna_v1`` for instruct, ``plain``
    for align, 128 tokens."""
    from mllm.data import ConversationDataset, get_template, read_records

    return ConversationDataset(
        records if records is not None else read_records(ws[split]),
        template=get_template("vicuna_v1" if split == "instruct" else "plain"),
        tokenizer=built.tokenizer,
        image_processor=built.image_processor,
        image_folder=ws["images"],
        image_mode="pad",
        num_image_tokens=built.model.num_image_tokens,
        max_length=128,
        **options,
    )


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def train_command(
    args: list[str], *, nproc: int = 1, launcher: str = "torchrun", module: bool = False
) -> tuple[list[str], dict[str, str]]:
    """Command line and environment that run scripts/train.py, or ``mllm train`` as a module
    with ``module`` (one thread per process)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if nproc == 1:
        entry = ["-m", "mllm", "train"] if module else [str(TRAIN_SCRIPT)]
        return [sys.executable, *entry, *args], env
    with socket.socket() as sock:  # torchrun's port 0 is not "any free port" for env:// ranks
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if launcher == "deepspeed":
        launch = ["deepspeed.launcher.runner", f"--num_gpus={nproc}"]
        entry = ["--module", "mllm", "train"] if module else [str(TRAIN_SCRIPT)]
    else:
        launch = ["torch.distributed.run", f"--nproc_per_node={nproc}"]
        entry = ["-m", "mllm", "train"] if module else [str(TRAIN_SCRIPT)]
    return [sys.executable, "-m", *launch, f"--master_port={port}", *entry, *args], env


def run_train(
    args: list[str],
    *,
    nproc: int = 1,
    launcher: str = "torchrun",
    module: bool = False,
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """Run scripts/train.py (or ``mllm train`` with ``module``) to completion; ``launcher`` is
    ``torchrun`` or ``deepspeed``."""
    command, env = train_command(args, nproc=nproc, launcher=launcher, module=module)
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result
