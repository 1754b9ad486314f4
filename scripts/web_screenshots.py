"""Screenshots of ``mllm web`` for the docs: the page at rest, and after a short conversation
about one of the example images. Drives the system's Chromium with Playwright, as
``tests/test_web.py`` does (``mllm.web.page``). CPU-sized command, after ``scripts/demo.sh``::

    python scripts/web_screenshots.py --model runs/demo/shapes-mlp/instruct/final \\
        --examples runs/demo/data --out docs/images
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import mllm
from mllm.demo.shapes import QUESTIONS, SHORT_ANSWER
from mllm.web.app import build_app, launch
from mllm.web.examples import read_examples
from mllm.web.page import DemoPage, chromium

#: Asked about the example image, in this order: the first with the image, the rest as
#: follow-up turns.
CATEGORIES = ("color", "shape", "count")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained checkpoint")
    parser.add_argument("--examples", type=Path, required=True, help="an `mllm demo-data` folder")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--example", type=int, default=0, help="which example image to ask about")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=860)
    args = parser.parse_args()

    loaded = mllm.load(args.model)
    examples = read_examples(args.examples)
    app = build_app(loaded, examples=examples)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = launch(app, port=port, allowed_paths=[args.examples])
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with chromium() as browser:
            tab = browser.new_page(viewport={"width": args.width, "height": args.height})
            page = DemoPage(tab, url)
            tab.screenshot(path=args.out / "web_demo_rest.png", full_page=True)
            page.upload(examples[args.example].image)
            for category in CATEGORIES:
                question = f"{QUESTIONS[category][0]}\n{SHORT_ANSWER}"
                print(f"{question!r} -> {page.ask(question)!r}")
            tab.screenshot(path=args.out / "web_demo_answer.png", full_page=True)
    finally:
        app.close()
    print(f"wrote {args.out / 'web_demo_rest.png'} and {args.out / 'web_demo_answer.png'}")


if __name__ == "__main__":
    main()
