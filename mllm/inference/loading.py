"""Load a model folder for inference: an mllm checkpoint, a merged model, or a foreign layout.

``load_model`` is the entry point of ``mllm chat``, ``mllm serve`` and ``mllm eval``: it loads
mllm checkpoints (stage outputs, periodic checkpoints, LoRA/QLoRA runs, ``mllm merge`` outputs)
through ``mllm.checkpoint.load_checkpoint`` and hands every other folder to ``mllm.interop``
(LLaVA's original layout, transformers' Llava folders). Optionally the LLM is quantised to 4 or
8 bits.
Those commands share their model options: :func:`add_model_arguments` declares them and
:func:`load_model_from_args` loads what they name.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import warnings
from pathlib import Path

import torch

from mllm.checkpoint import FORMAT, MANIFEST_NAME, CheckpointError, LoadedModel, load_checkpoint
from mllm.inference.quantize import (
    QUANTIZE_MODES,
    QuantizationUnavailableError,
    check_quantization,
    load_quantized_checkpoint,
)
from mllm.models.builder import DTYPES
from mllm.models.llm import configure_cpu_4bit_kernels

logger = logging.getLogger(__name__)


def is_mllm_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` says it is an mllm checkpoint (its manifest has mllm's format).

    A complete-looking manifest is enough: an incomplete mllm checkpoint should fail with
    :func:`load_checkpoint`'s message, not be handed to the foreign-layout loaders.
    """
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: let read_manifest say what is wrong with it


def _foreign_loader():
    """``mllm.interop.load_foreign`` where this install has it, else ``None``."""
    try:
        interop = importlib.import_module("mllm.interop")
    except ModuleNotFoundError as exc:
        if exc.name in ("mllm.interop", "mllm"):
            return None
        raise
    return getattr(interop, "load_foreign", None)


def _checkpoints_inside(folder: Path) -> str:
    """``"; checkpoints inside it: ..."`` for a run or stage folder given by mistake, else ``""``."""
    inside = sorted(p.parent for p in folder.glob(f"*/{MANIFEST_NAME}"))
    inside += sorted(p.parent for p in folder.glob(f"*/*/{MANIFEST_NAME}"))
    return f"; checkpoints inside it: {', '.join(map(str, inside[:3]))}" if inside else ""


def load_model(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    quantize: str | None = None,
    vision_tower_path: str | None = None,
    base_llm: str | None = None,
    template: str | None = None,
) -> LoadedModel:
    """Load any model folder mllm can generate with.

    Args:
        folder: an mllm checkpoint (stage output ``RUN/STAGE/final``, periodic checkpoint,
            LoRA/QLoRA run, ``mllm merge`` output), or a LLaVA / transformers Llava folder.
        dtype: parameter dtype (and the compute dtype of a quantised LLM).
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``).
        quantize: ``"4bit"`` (NF4) or ``"8bit"`` for the LLM's linear layers (bitsandbytes);
            the vision tower and projector stay in ``dtype``.
        vision_tower_path, base_llm, template: for foreign folders, passed on to
            ``mllm.interop.load_foreign`` (a local copy of the tower an original LLaVA config
            names by hub id; the LLM a projector-only LLaVA folder was trained on; a template
            other than the folder's default). An mllm checkpoint knows all three.

    Returns:
        The model in eval mode, with its template and image mode.

    Raises:
        CheckpointError: the folder is missing, or no layout mllm reads (the message names it),
            or foreign-folder options were given for an mllm checkpoint.
        QuantizationUnavailableError: ``quantize`` was asked for where bitsandbytes cannot run.
    """
    folder = Path(folder)
    if quantize is not None:
        check_quantization(quantize)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    foreign = {"vision_tower_path": vision_tower_path, "base_llm": base_llm, "template": template}
    if is_mllm_checkpoint(folder):
        given = [name for name, value in foreign.items() if value is not None]
        if given:
            raise CheckpointError(
                f"{folder}: an mllm checkpoint records its tower, LLM and template; "
                f"{', '.join(given)} only apply to LLaVA and transformers Llava folders"
            )
        if quantize is None:
            loaded = load_checkpoint(folder, dtype=dtype, device=device)
        else:
            loaded = load_quantized_checkpoint(
                folder, quantize=quantize, dtype=dtype, device=device
            )
        return _for_inference(loaded)
    load_foreign = _foreign_loader()
    if load_foreign is None:
        raise CheckpointError(
            f"{folder}: not an mllm checkpoint (no {MANIFEST_NAME}); this install of mllm cannot "
            f"read LLaVA or transformers Llava folders{_checkpoints_inside(folder)}"
        )
    try:
        loaded = load_foreign(folder, dtype=dtype, device=device, quantize=quantize, **foreign)
    except ValueError as exc:
        hint = _checkpoints_inside(folder)
        if hint:
            raise CheckpointError(f"{exc}{hint}") from exc
        raise
    return _for_inference(loaded)


def _for_inference(loaded: LoadedModel) -> LoadedModel:
    """Nothing trains through a model loaded here: its 4-bit layers (a QLoRA run, or
    ``quantize="4bit"``) may use bitsandbytes' CPU kernel where it fits them."""
    configure_cpu_4bit_kernels(loaded.built.model, inference=True)
    tower_weight = next(loaded.built.model.vision.parameters())
    logger.info(
        "device: %s (%s)", tower_weight.device, str(tower_weight.dtype).removeprefix("torch.")
    )
    return loaded


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
    """The model options of ``mllm chat``, ``mllm serve`` and ``mllm eval``.

    ``--model``, ``--dtype``, ``--device``, ``--quantize``, and for original LLaVA folders
    ``--vision-tower`` and ``--base-llm``; :func:`load_model_from_args` loads what they name.
    """
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
    if args.quantize == "8bit":
        # bitsandbytes warns on every 8-bit matmul that fp32 inputs are cast to fp16.
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    try:
        return load_model(
            args.model,
            dtype=DTYPES[args.dtype],
            device=args.device,
            quantize=args.quantize,
            vision_tower_path=args.vision_tower,
            base_llm=args.base_llm,
        )
    except (ValueError, OSError, QuantizationUnavailableError) as exc:
        raise ModelLoadError(f"cannot load --model {args.model}: {exc}") from exc
