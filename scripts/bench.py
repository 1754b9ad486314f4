"""Training and generation speed of a recipe against transformers' Llava + Trainer.

CPU (about 1.5 minutes on 2 busy cores):
    python scripts/bench.py
    python scripts/bench.py --variants padded grouped packed packed+grouped --rounds 3
Options: --recipe FILE [--stage NAME] [key.sub=value ...] benchmarks a recipe's model and
stage settings on the synthetic length mix; --help lists the rest.
"""

from __future__ import annotations

import sys

from mllm.commands.bench import main

if __name__ == "__main__":
    sys.exit(main())
