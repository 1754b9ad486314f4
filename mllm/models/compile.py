"""Regional compilation: each repeated block of the LLM and the vision tower compiled on its own.

``stages.S.compile`` compiles every decoder layer of the LLM and every block of the tower with
``torch.compile``, one block at a time (``nn.Module.compile``, as torchtune does), rather than
the whole model:

* the blocks of a stack run the same code, so with parameters traced as inputs (torch's
  default ``inline_inbuilt_nn_modules``) the first block's graph serves all of them: compile
  time is that of one block, not of the model;
* what runs between the blocks (the image scatter, packing's joins, the loss, peft's and
  DeepSpeed's wrappers) stays eager, so none of it can break the graph;
* ``Module.compile`` compiles in place: parameter names, ``state_dict`` keys and checkpoints
  are the same as without it (``torch.compile(module)`` would prefix them with ``_orig_mod.``).

The blocks are the modules transformers itself checkpoints, ``GradientCheckpointingLayer``
instances; a tower without them (none registered today) is left eager and said so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompiledRegions:
    """What :func:`compile_regions` compiled.

    Attributes:
        llm: decoder layers of the LLM compiled.
        vision: blocks of the vision tower compiled.
        block_types: class name of each kind of block compiled, e.g. ``LlamaDecoderLayer``.
    """

    llm: int
    vision: int
    block_types: tuple[str, ...]


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks inside ``module``: every ``GradientCheckpointingLayer``, outermost
    only (a block inside a block is compiled as part of it)."""
    blocks: list[nn.Module] = []
    skip: set[int] = set()
    for child in module.modules():
        if id(child) in skip:
            continue
        if isinstance(child, GradientCheckpointingLayer):
            blocks.append(child)
            skip.update(id(inner) for inner in child.modules())
    return blocks


def compile_regions(model: nn.Module, *, dynamic: bool = True) -> CompiledRegions:
    """Compile each block of ``model.llm`` and ``model.vision`` in place.

    Call it last, once adapters, frozen parts and activation checkpointing are in place: peft
    swaps linear layers inside the blocks, and transformers' checkpointing runs inside a
    block's ``forward``, so the compiled block recomputes itself in backward. The DeepSpeed
    engine may wrap the model afterwards; ZeRO-3's hooks sit on the blocks' submodules and run
    where dynamo meets them (see ``docs/benchmarks.md`` for what that costs).

    Args:
        model: a ``MultimodalModel`` (anything with ``llm`` and ``vision`` modules).
        dynamic: compile for symbolic batch and sequence sizes. A packed row's width and the
            number of rows change every micro-batch (so do padded lengths and the number of
            images): with static shapes the first change recompiles and dynamo only then
            turns to symbolic sizes. ``True`` leaves only the recompiles a backend's own
            guards ask for (inductor's CPU code recompiles once when a call first passes
            4,096 tokens; see ``docs/benchmarks.md``).

    Returns:
        How many blocks of each component were compiled.
    """
    counts = {}
    types: dict[str, None] = {}
    for name in ("llm", "vision"):
        blocks = repeated_blocks(getattr(model, name))
        for block in blocks:
            block.compile(dynamic=dynamic)
            types[type(block).__name__] = None
        counts[name] = len(blocks)
        if not blocks:
            logger.warning("compile: %s has no transformer blocks to compile; it runs eager", name)
    regions = CompiledRegions(llm=counts["llm"], vision=counts["vision"], block_types=tuple(types))
    logger.info(
        "compile: %d LLM layers and %d tower blocks compiled one by one (%s, dynamic shapes: %s)",
        regions.llm,
        regions.vision,
        ", ".join(regions.block_types),
        dynamic,
    )
    return regions


def is_compiled(module: nn.Module) -> bool:
    """Whether :func:`compile_regions` (``Module.compile``) compiled ``module``."""
    return getattr(module, "_compiled_call_impl", None) is not None


__all__ = ["CompiledRegions", "compile_regions", "is_compiled", "repeated_blocks"]
