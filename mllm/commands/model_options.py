"""The model options of ``mllm chat``, ``mllm serve`` and ``mllm eval`` (and ``mllm export``'s
LLaVA-only ones): :func:`add_model_arguments` declares them, :func:`load_model_from_args`
loads what they name through ``mllm.load``."""

from __future__ import annotations

import argparse
import warnings

import torch

from mllm.checkpoint import LoadedModel
from mllm.models.assembly import DTYPES
from mllm.models.quantization import QUANTIZE_MODES, QuantizationUnavailableError


class ModelLoadError(Exception):
    """The model a command line names cannot be loaded; the message says which and why."""


def add_foreign_arguments(parser: argparse.ArgumentParser) -> None:
    """``--vision-tower`` and ``--base-llm``: what an original LLaVA folder may not hold."""
    group = parser.add_argument_group("original LLaVA folders")
    group.add_argument(
        "--vision-tower",
        metavar="PATH",
        help="for original LLaVA checkpoints whose config names the tower by hub id "
        "(mm_vision_tower): a local copy of that tower (nothing is downloaded)",
    )
    group.add_argument(
        "--base-llm",
        metavar="PATH",
        help="for stage-1 (projector-only) LLaVA folders: the LLM the projector was trained on",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--device``, ``--quantize``, and for original LLaVA folders
    ``--vision-tower`` and ``--base-llm``; :func:`load_model_from_args` loads what they name."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        required=True,
        help="an mllm checkpoint, an original LLaVA folder or a transformers Llava folder",
    )
    group.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    group.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the model runs: cpu, cuda, cuda:1, ... (default: %(default)s)",
    )
    group.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        help="the LLM's linear layers in 4 or 8 bits (bitsandbytes)",
    )
    add_foreign_arguments(parser)


def load_model_from_args(args: argparse.Namespace) -> LoadedModel:
    """Load the model named by the options of :func:`add_model_arguments`.

    Raises:
        ModelLoadError: the folder, a file in it or a setting is wrong, or bitsandbytes
            cannot run here; the message starts with ``cannot load --model PATH:``.
    """
    from mllm.inference.loading import load

    if args.quantize == "8bit":
        # bitsandbytes warns on every 8-bit matmul that fp32 inputs are cast to fp16.
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    try:
        return load(
            args.model,
            dtype=DTYPES[args.dtype],
            device=args.device,
            quantize=args.quantize,
            vision_tower_path=args.vision_tower,
            base_llm=args.base_llm,
        )
    except (ValueError, OSError, QuantizationUnavailableError) as exc:
        raise ModelLoadError(f"cannot load --model {args.model}: {exc}") from exc
