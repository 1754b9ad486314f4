"""Train a recipe's stages: ``deepspeed scripts/train.py recipes/llava_v1_5.yaml``.

The same command as ``mllm train`` (``mllm/commands/train.py``: arguments, checks before
anything heavy, one process group). Each stage runs through ``mllm.training.run.run_stage``,
which reads as the data flow:

    recipe -> model -> start point (init_from) -> tune modes -> data (+ held-out, feature cache)
           -> Trainer (DeepSpeed engine) -> train (validate, checkpoint) -> STAGE/final

CPU:    mllm make-tiny tiny_models && mllm demo-data demo_data
        python scripts/train.py recipes/tiny/shapes_mlp.yaml --stage align stages.align.max_steps=5
Options: --stage NAME (default: every stage in order), --resume, key.sub=value overrides,
--debug (a traceback with a user error's message).
Exit status: 0 done, 2 a recipe/override/path to fix, 1 bad data; see mllm/errors.py.
"""

from __future__ import annotations

import sys

from mllm.commands.train import main
from mllm.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(lambda argv: main(argv, prog="train.py"), prog="train.py"))
