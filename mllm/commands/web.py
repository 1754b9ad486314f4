"""``mllm web``: a chat page for one model in the browser (Gradio), answers streamed as they
come: upload an image, ask about it over several turns, tune temperature, top-p and max
tokens, stop, regenerate or clear, try the example images and questions of the shapes demo
data, and read the model card. Answers are ``mllm chat``'s. The page listens on 127.0.0.1
unless ``--host`` says otherwise; it has no login, so only open it to people you trust.
CPU-sized command::

    mllm web --model runs/demo/shapes-mlp/instruct/final --examples runs/demo/data
    # then open http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from mllm.commands.listening import add_address_arguments, is_loopback
from mllm.commands.model_options import ModelLoadError, add_model_arguments, load_model_from_args

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mllm web", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    add_address_arguments(parser, port=7860)
    parser.add_argument(
        "--examples",
        type=Path,
        metavar="DIR",
        help="an `mllm demo-data` folder whose held-out questions the page offers as examples "
        "(default: a few demo images written to a temporary folder)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=512, help="the most tokens an answer may ask for"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.exit(2, "mllm web: --max-new-tokens must be at least 1\n")
    try:
        import gradio  # noqa: F401  (the page's library, an optional dependency)
    except ImportError:
        parser.exit(2, "mllm web: needs gradio: pip install 'mllm[web]'\n")
    from mllm.web.app import build_app, launch
    from mllm.web.examples import ExamplesError, read_examples, write_examples

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's requests to itself

    with tempfile.TemporaryDirectory(prefix="mllm-web-") as scratch:
        try:
            if args.examples is not None:
                examples_dir = args.examples
                examples = read_examples(examples_dir)
            else:
                examples_dir = Path(scratch)
                examples = write_examples(examples_dir)
        except ExamplesError as exc:
            parser.exit(2, f"mllm web: --examples: {exc}\n")
        try:
            loaded = load_model_from_args(args)
        except ModelLoadError as exc:
            parser.exit(2, f"mllm web: {exc}\n")
        if not is_loopback(args.host):
            logger.warning(
                "listening on %s: anyone who can reach it may use the model (no login)", args.host
            )
        app = build_app(loaded, examples=examples, max_new_tokens=args.max_new_tokens)
        url = launch(app, host=args.host, port=args.port, allowed_paths=[examples_dir])
        print(f"mllm web: serving {loaded.recipe.name!r} at {url}", file=sys.stderr, flush=True)
        try:
            app.block_thread()  # until Ctrl-C
        finally:
            app.close()
    return 0
