"""Training and generation speed against transformers' Llava + Trainer, on short captions and
the 665k-like mix, in stage 1 (projector) and stage 2 (projector + LLM), with a goal table.

CPU (about 4 minutes on 2 idle cores; 11 under heavy load):
    python scripts/bench.py
    python scripts/bench.py --variants padded packed cached --cache-epochs 3
    python scripts/bench.py --llava-python /tmp/llava-venv/bin/python   # + original LLaVA code
Options: --recipe FILE [--stage NAME] [key.sub=value ...] benchmarks a recipe's model and
stage settings on the synthetic length mix; --help lists the rest.
"""

from __future__ import annotations

import sys

from mllm.commands.bench import main

if __name__ == "__main__":
    sys.exit(main())
