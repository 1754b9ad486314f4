"""The ``mllm`` command line: one sub-command per task, each a thin call into the package.

A user error ends any sub-command with one message and exit status 2 (1 for bad data), no
traceback; ``mllm ... --debug`` shows it (``mllm.errors``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from mllm.errors import DEBUG_FLAG, run_command


def _recipe_check(args: argparse.Namespace) -> int:
    from mllm.config import dump_recipe, load_recipe

    print(dump_recipe(load_recipe(args.recipe, args.overrides)), end="")
    return 0


def _train(argv: list[str]) -> int:
    from mllm.commands.train import main as train_main

    return train_main(argv) or 0


def _make_tiny(argv: list[str]) -> int:
    from mllm import tiny

    return tiny.main(argv) or 0


def _demo_data(argv: list[str]) -> int:
    from mllm.demo import shapes

    return shapes.main(argv) or 0


def _eval(argv: list[str]) -> int:
    from mllm.eval.run import main as eval_main

    return eval_main(argv) or 0


def _data(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mllm data check RECIPE_OR_JSON [...]  (mllm data check --help)")
        return 0 if argv else 2
    if argv[0] != "check":
        print(f"mllm data: unknown command {argv[0]!r}; use: mllm data check", file=sys.stderr)
        return 2
    from mllm.data.preflight.cli import main as check_main

    return check_main(argv[1:])


def _merge(argv: list[str]) -> int:
    from mllm.merge import main as merge_main

    return merge_main(argv) or 0


def _chat(argv: list[str]) -> int:
    from mllm.inference.chat import main as chat_main

    return chat_main(argv) or 0


def _serve(argv: list[str]) -> int:
    from mllm.serve.server import main as serve_main

    return serve_main(argv) or 0


def _export(argv: list[str]) -> int:
    from mllm.interop.export import main as export_main

    return export_main(argv) or 0


def _bench(argv: list[str]) -> int:
    from mllm.bench.cli import main as bench_main

    return bench_main(argv) or 0


def _cache_features(argv: list[str]) -> int:
    from mllm.cache_features import main as cache_main

    return cache_main(argv) or 0


def _convert_llava(argv: list[str]) -> int:
    from mllm.interop.llava import main as convert_main

    return convert_main(argv) or 0


#: Sub-commands that own their argument parsing (each has ``--help``).
DELEGATED = {
    "train": (
        _train,
        "train a recipe's stages (as scripts/train.py; under deepspeed/torchrun too)",
    ),
    "data": (_data, "check data files (or a recipe's stages) for bad records before training"),
    "make-tiny": (_make_tiny, "save tiny random CLIP/SigLIP/Llama model folders (no download)"),
    "demo-data": (_demo_data, "generate the synthetic shapes visual-QA dataset"),
    "eval": (_eval, "answer LLaVA-format questions with a checkpoint and score them"),
    "merge": (_merge, "fold LoRA adapters into the LLM and write a standalone model folder"),
    "chat": (_chat, "chat with a checkpoint about an image in the terminal (or --prompt once)"),
    "serve": (_serve, "serve a checkpoint over an OpenAI-compatible HTTP API"),
    "export": (_export, "export a checkpoint to another layout (hf-llava)"),
    "bench": (_bench, "training and generation speed against transformers' Llava"),
    "cache-features": (
        _cache_features,
        "precompute a stage's frozen vision-tower features (data.feature_cache)",
    ),
    "convert-llava": (_convert_llava, "convert an original LLaVA checkpoint to safetensors"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mllm", description="Train and use multimodal LLMs.")
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help="show the traceback of a user error (any command)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    recipe = commands.add_parser("recipe", help="work with recipe files")
    recipe_commands = recipe.add_subparsers(dest="recipe_command", required=True)
    check = recipe_commands.add_parser("check", help="validate a recipe and print it resolved")
    check.add_argument("recipe")
    check.add_argument("overrides", nargs="*", help="key.sub=value")
    check.set_defaults(func=_recipe_check)

    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    # `deepspeed --module mllm train ...` puts its --local_rank=N before the sub-command.
    launcher = [arg for arg in argv if arg.startswith("--local_rank=")]
    argv = [arg for arg in argv if arg not in launcher] + launcher
    command = next((arg for arg in argv if arg != DEBUG_FLAG), "")
    prog = f"mllm {command}" if command in DELEGATED or command == "recipe" else "mllm"
    return run_command(_dispatch, argv, prog)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED:
        from mllm.accelerator import pin_deepspeed_accelerator

        pin_deepspeed_accelerator()  # any command that saves or loads a model may import it
        return DELEGATED[argv[0]][0](argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
