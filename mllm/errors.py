"""How a command ends on a user error: one message naming what to fix, an exit status, no traceback.

``scripts/train.py`` and ``mllm`` run their work through :func:`run_command`. Exit statuses:

- 2: usage: the command line, the recipe, a path it names, or what this machine offers
  (``RecipeError``, ``UsageError``, ``CheckpointError``, ``ModelLoadError``, ...);
- 1: bad data found while reading it under ``on_bad_record: fail`` (``DataError``, an image
  that cannot be read, a tokenizer/template pair that would train replies wrong).

``--debug`` anywhere on the command line prints the traceback as well. Under a launcher
(``RANK`` set) only rank 0 prints; the other ranks exit with the same status in silence.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

DEBUG_FLAG = "--debug"
USAGE, BAD_DATA = 2, 1


class UsageError(ValueError):
    """A command line, recipe or path the user must change (exit status 2)."""


#: (module, class, exit status). Looked up in ``sys.modules`` only: an exception class whose
#: module was never imported cannot have been raised, and the check imports nothing heavy.
USER_ERRORS: tuple[tuple[str, str, int], ...] = (
    ("mllm.errors", "UsageError", USAGE),
    ("mllm.config.loader", "RecipeError", USAGE),
    ("mllm.registry", "UnknownComponentError", USAGE),
    ("mllm.training.deepspeed_config", "BatchSizeError", USAGE),
    ("mllm.checkpoint.layout", "CheckpointError", USAGE),
    ("mllm.models.attention", "AttentionUnavailableError", USAGE),
    ("mllm.data.feature_cache", "FeatureCacheError", USAGE),
    ("mllm.commands.model_options", "ModelLoadError", USAGE),
    ("mllm.models.quantization", "QuantizationUnavailableError", USAGE),
    ("mllm.interop.detect", "ForeignFormatError", USAGE),
    ("mllm.interop.export", "UnsupportedExportError", USAGE),
    ("mllm.data.records", "DataError", BAD_DATA),
    ("mllm.data.templates", "ConversationError", BAD_DATA),
    ("mllm.data.label_audit", "LabelRuleError", BAD_DATA),
    ("mllm.data.images", "ImageLoadError", BAD_DATA),
)


def exit_status(exc: BaseException) -> int | None:
    """The exit status of a user error, or None for anything else (a bug: keep its traceback)."""
    for module, name, status in USER_ERRORS:
        error_class = getattr(sys.modules.get(module), name, None)
        if error_class is not None and isinstance(exc, error_class):
            return status
    return None


def is_main_rank() -> bool:
    """Rank 0, or no launcher: read from the environment, so it holds before any process group."""
    return os.environ.get("RANK", "0") == "0"


def run_command(
    main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, prog: str = ""
) -> int:
    """Run ``main(argv)``; a user error becomes one message on stderr and its exit status.

    Args:
        main: the command; returns its exit status (None for 0).
        argv: the arguments (default ``sys.argv[1:]``); ``--debug`` is taken out before
            ``main`` sees them.
        prog: the command's name, the message's prefix (``train.py``, ``mllm eval``).

    Returns:
        ``main``'s status, or the user error's (see the module docstring). Other exceptions
        propagate with their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        return main(argv) or 0
    except Exception as exc:  # noqa: BLE001 - sorted below; what is not a user error re-raises
        status = exit_status(exc)
        if status is None:
            raise
        if is_main_rank():
            if debug:
                traceback.print_exc()
            print(f"{prog}: {exc}" if prog else str(exc), file=sys.stderr, flush=True)
        return status
