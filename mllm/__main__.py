"""``python -m mllm``: the ``mllm`` command line, also for launchers that start modules
(``deepspeed --module mllm train RECIPE``, ``torchrun -m mllm train RECIPE``)."""

import sys

from mllm.cli import main

sys.exit(main())
