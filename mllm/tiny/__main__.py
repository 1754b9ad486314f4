"""``python -m mllm.tiny OUT_DIR``: the same as ``mllm make-tiny``."""

from mllm.commands.make_tiny import main

raise SystemExit(main())
