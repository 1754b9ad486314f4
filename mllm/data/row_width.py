"""How wide packed rows should be, and whether to pack at all (``packing: auto``).

Packing's cost depends on the attention kernel. ``flash_attention_2`` and ``mllm_packed_sdpa``
(what mllm runs when a recipe asks for ``sdpa``, see ``mllm.models.packed_attention``) compute
each sample's attention alone, so a packed row costs what its samples cost padded, less the
padding: rows fill up to ``max_length``. ``eager`` (and transformers' own ``sdpa``) compute a
packed row's attention over the whole row (masked), which grows with the square of the row's
width. The estimates here weigh that against the padding packing removes, in
token-equivalents: a batch of ``rows x width`` slots costs ``rows * width * (1 + width /
crossover)``, the crossover being the row width at which a token's dense attention costs as
much as its linear layers and output head (:func:`attention_crossover` gives None for a
per-sample kernel). Used by ``mllm.data.packing.PackingCollator`` (per micro-batch) and
``stage_data.stage_collator`` (per stage).
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mllm.models.attention import PER_SAMPLE_ATTENTION

#: The estimated saving for which a dense kernel's rows grow past the longest sample.
WIDER_ROWS_GAIN = 0.05


def dense_attention_crossover(config: Any, *, trains_weights: bool = True) -> float:
    """The row width at which a dense (masked, whole-row) attention costs a token as much as
    the rest of its forward and backward: FLOPs of the layers' linear parts and the output
    head against the attention's ``4 * hidden`` per key and layer.

    Args:
        config: the LLM's transformers config (``hidden_size``, ``num_hidden_layers``,
            ``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``,
            ``vocab_size``; a multimodal config's text part is read).
        trains_weights: whether the LLM's own weights get gradients (``full``; a frozen LLM
            or one with adapters does not): without them its backward skips the linear
            layers' weight gradients, while attention's backward costs the same.

    Returns:
        The crossover width in tokens (about 830 for a width-128 2-layer Llama, 25,000 for
        Llama-2-7B).
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers = text.hidden_size, text.num_hidden_layers
    heads = text.num_attention_heads
    kv_width = hidden // heads * (getattr(text, "num_key_value_heads", None) or heads)
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    linear = 2 * hidden * (2 * hidden + 2 * kv_width) + 6 * hidden * intermediate  # per layer
    head = 2 * hidden * text.vocab_size
    # Backward: linear layers take 2x their forward with weight gradients, 1x without;
    # attention (scores and weighted sum) takes 2x either way.
    linear_passes = 3 if trains_weights else 2
    return (layers * linear + head) * linear_passes / (layers * 4 * hidden * 3)


def attention_crossover(config: Any, *, trains_weights: bool = True) -> float | None:
    """The crossover to size packed rows by: None when the LLM's kernel computes each sample
    alone (``attention.PER_SAMPLE_ATTENTION``: rows then fill up), else
    :func:`dense_attention_crossover`.

    Args:
        config: the LLM's transformers config, with the kernel it runs
            (``_attn_implementation``).
        trains_weights: as for :func:`dense_attention_crossover`.
    """
    if config._attn_implementation in PER_SAMPLE_ATTENTION:
        return None
    return dense_attention_crossover(config, trains_weights=trains_weights)


def _packed_shape(lengths: Sequence[int], capacity: int) -> tuple[int, int]:
    """``(rows, width)`` estimated for :func:`plan_rows`: the rows first-fit-decreasing needs
    at ``capacity``, the samples then dealt longest first to the shortest row."""
    order = sorted(lengths, reverse=True)
    loads: list[int] = []
    for length in order:
        row = next((r for r, load in enumerate(loads) if load + length <= capacity), None)
        if row is None:
            loads.append(length)
        else:
            loads[row] += length
    heap = [0] * len(loads)
    for length in order:
        heapq.heappush(heap, heapq.heappop(heap) + length)
    return len(loads), max(heap)


def batch_cost(rows: int, width: int, crossover: float | None) -> float:
    """Estimated compute of a batch of ``rows x width`` tokens, in token-equivalents: each
    slot's linear layers plus a dense attention over its row. With ``crossover`` None (a
    per-sample kernel) attention is left out: it is about the samples' own, packed or not."""
    return rows * width * (1 + (width / crossover if crossover else 0.0))


def pack_width(lengths: Sequence[int], max_length: int, crossover: float | None) -> int:
    """The row capacity to pack ``lengths`` into: ``max_length`` when attention is per sample
    (``crossover`` None); otherwise, of widths from the longest sample up to ``max_length``,
    the one whose rows have the smallest estimated :func:`batch_cost`, if it beats rows of
    the longest sample by :data:`WIDER_ROWS_GAIN`."""
    if crossover is None or not lengths:
        return max_length
    longest = max(lengths)
    widths = {min(max_length, math.ceil(longest * f)) for f in (1, 1.25, 1.5, 2, 3, 4, 6, 8)}
    widths |= {max_length} if max_length < 16 * longest else set()

    def cost(width: int) -> float:
        return batch_cost(*_packed_shape(lengths, width), crossover)

    best = min(sorted(widths, reverse=True), key=cost)  # ties: the fewest rows
    # Wider rows only for a clear gain: the estimate is rough, and rows of the longest
    # sample never cost more than padding.
    return best if cost(best) <= (1 - WIDER_ROWS_GAIN) * cost(longest) else longest


@dataclass(frozen=True)
class PackingChoice:
    """What ``packing: auto`` chose for a stage, and why (one log line)."""

    packed: bool
    reason: str


def choose_packing(
    lengths: Sequence[int],
    micro_batch_size: int,
    max_length: int,
    crossover: float | None,
    *,
    min_gain: float = 0.05,
    batches: int = 64,
    seed: int = 0,
) -> PackingChoice:
    """Pack when packed micro-batches are estimated to cost at least ``min_gain`` less than
    padded ones, over ``batches`` micro-batches drawn at random from ``lengths``.

    Args:
        lengths: tokens per sample of the stage's data.
        micro_batch_size: samples per micro-batch.
        max_length: the data's ``max_length``.
        crossover: :func:`attention_crossover` (None for a per-sample kernel).
        min_gain: the estimated saving below which padding (the simpler batch) is kept.
        batches, seed: the sample of micro-batches.

    Returns:
        The choice and a sentence giving the length statistics and estimated costs.
    """
    if not lengths:
        return PackingChoice(False, "no samples")
    rng = random.Random(seed)
    size = min(micro_batch_size, len(lengths))
    padded = packed = 0.0
    slots = tokens = 0
    for _ in range(batches):
        batch = rng.sample(list(lengths), size)
        longest = max(batch)
        padded += batch_cost(size, longest, crossover)
        slots += size * longest
        tokens += sum(batch)
        packed += batch_cost(
            *_packed_shape(batch, pack_width(batch, max_length, crossover)), crossover
        )
    ratio = packed / padded
    kernel = "attention per sample" if crossover is None else f"crossover {crossover:.0f}"
    reason = (
        f"samples of {min(lengths)}-{max(lengths)} tokens (median "
        f"{statistics.median(lengths):.0f}) in micro-batches of {size} pad to "
        f"{1 - tokens / slots:.0%} padding; packed rows are estimated at {ratio:.2f}x the "
        f"padded cost ({kernel})"
    )
    return PackingChoice(ratio <= 1 - min_gain, reason)
