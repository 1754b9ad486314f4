"""The ``mllm`` command line: a table of sub-commands, each a module of ``mllm.commands``.

A command's module is imported only when it runs, so ``mllm --help`` and user errors stay fast.
A user error ends any sub-command with one message and exit status 2 (1 for bad data), no
traceback; ``mllm ... --debug`` shows it (``mllm.errors``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mllm.errors import DEBUG_FLAG, run_command

#: name -> (module with ``main(argv) -> int``, help). Each module parses its own arguments.
COMMANDS: dict[str, tuple[str, str]] = {
    "recipe": ("mllm.commands.recipe_check", "work with recipe files"),
    "train": (
        "mllm.commands.train",
        "train a recipe's stages (as scripts/train.py; under deepspeed/torchrun too)",
    ),
    "data": (
        "mllm.commands.data_check",
        "check data files (or a recipe's stages) for bad records before training",
    ),
    "make-tiny": (
        "mllm.commands.make_tiny",
        "save tiny random CLIP/SigLIP/Llama model folders (no download)",
    ),
    "demo-data": ("mllm.commands.demo_data", "generate the synthetic shapes visual-QA dataset"),
    "eval": (
        "mllm.commands.eval",
        "answer LLaVA-format questions with a checkpoint and score them",
    ),
    "merge": (
        "mllm.commands.merge",
        "fold LoRA adapters into the LLM and write a standalone model folder",
    ),
    "chat": (
        "mllm.commands.chat",
        "chat with a checkpoint about an image in the terminal (or --prompt once)",
    ),
    "serve": ("mllm.commands.serve", "serve a checkpoint over an OpenAI-compatible HTTP API"),
    "web": ("mllm.commands.web", "chat with a checkpoint about images in the browser (Gradio)"),
    "export": (
        "mllm.commands.export",
        "export a checkpoint to another layout (hf-llava, hf-llava-next)",
    ),
    "bench": ("mllm.commands.bench", "training and generation speed against transformers' Llava"),
    "cache-features": (
        "mllm.commands.cache_features",
        "precompute a stage's frozen vision-tower features (data.feature_cache)",
    ),
    "convert-llava": (
        "mllm.commands.convert_llava",
        "convert an original LLaVA checkpoint to safetensors",
    ),
}
#: Commands that never save or load a model (no DeepSpeed accelerator to pin, no torch import).
_NO_MODEL = {"recipe"}


def build_parser() -> argparse.ArgumentParser:
    """``mllm``'s own parser: ``--debug`` and the command names (for ``mllm --help``)."""
    parser = argparse.ArgumentParser(prog="mllm", description="Train and use multimodal LLMs.")
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help="show the traceback of a user error (any command)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    # `deepspeed --module mllm train ...` puts its --local_rank=N before the sub-command.
    launcher = [arg for arg in argv if arg.startswith("--local_rank=")]
    argv = [arg for arg in argv if arg not in launcher] + launcher
    command = next((arg for arg in argv if arg != DEBUG_FLAG), "")
    prog = f"mllm {command}" if command in COMMANDS else "mllm"
    return run_command(_dispatch, argv, prog)


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # --help, or a usage error (exits)
        return 2
    name = argv[0]
    if name not in _NO_MODEL:
        from mllm.accelerator import pin_deepspeed_accelerator

        pin_deepspeed_accelerator()  # any command that saves or loads a model may import it
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
