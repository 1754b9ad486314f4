"""The device DeepSpeed's accelerator layer uses, said once for every command.

Training, and any command that saves or loads a model (accelerate inside transformers'
``save_pretrained`` imports DeepSpeed whenever it is installed), may import DeepSpeed; it must
find its device named rather than guess it and warn. Kept apart from ``mllm.training`` so that
inference commands set it without importing training.
"""

from __future__ import annotations

import os

import torch


def pin_deepspeed_accelerator() -> None:
    """Tell DeepSpeed the device through its own switch (``DS_ACCELERATOR``); an explicit
    setting in the environment wins."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
