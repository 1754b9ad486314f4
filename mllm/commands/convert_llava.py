"""``mllm convert-llava SRC --out DST``: an original LLaVA checkpoint's pickled weights as
safetensors (``mllm.interop.llava.convert_llava``)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mllm convert-llava",
        description="Copy an original LLaVA checkpoint with its pickled .bin weights converted "
        "to safetensors (read with torch.load(weights_only=True)); mllm loads the copy.",
    )
    parser.add_argument("src", help="LLaVA checkpoint folder (config.json with mm_* keys)")
    parser.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    args = parser.parse_args(argv)
    from mllm.interop.detect import ForeignFormatError
    from mllm.interop.llava import convert_llava

    try:
        convert_llava(args.src, args.out)
    except ForeignFormatError as exc:
        parser.exit(2, f"mllm convert-llava: {exc}\n")
    return 0
