"""Per-sample SDPA attention for packed rows, registered with transformers as ``mllm_packed_sdpa``.

Under ``sdpa`` transformers confines a packed row's attention to each sample with a dense
block-diagonal mask over the whole row (``masking_utils.find_packed_sequence_indices``), so a
row of width W costs W² scores however many samples it holds: packing 80-token captions into
rows of 1,000 made attention ~12x that of the same captions padded, and on a small LLM
packing lost to padding. This kernel computes each sample's attention alone instead, so a
packed row costs about the sum of its samples' squared lengths, as FlashAttention-2's
variable-length kernel does.

It is reached only through transformers' switches: :data:`PACKED_SDPA` is registered in
``AttentionInterface`` (:func:`packed_sdpa_attention`) and in ``AttentionMaskInterface``
(transformers' own ``sdpa_mask``), and :func:`use_packed_sdpa` selects it on an LLM loaded
with ``sdpa`` (``set_attn_implementation``). ``MultimodalModel.forward`` computes a packed
batch's :func:`segment_layout` once and passes it to the LLM as ``packed_segments``;
transformers hands keyword arguments down to every attention call. A call without it (padded
batches, generation with a KV cache, any other caller) runs transformers'
``sdpa_attention_forward`` on the mask transformers built, so it computes exactly what
``sdpa`` does.

Inside :func:`dense_mask_skipped`, which ``MultimodalModel.forward`` enters for a packed batch
whose layout it passes, the registered mask function builds nothing: transformers would
otherwise build the row's block-diagonal [rows, 1, width, width] mask that no layer reads
(on the benchmark's captions, 8% of a stage-1 step; 134 MB for 8 rows of 4,096 tokens). A
packed call that reaches attention there without its layout (a family whose attention drops
keyword arguments) would then have no mask at all, so it raises instead of attending across
samples.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

logger = logging.getLogger(__name__)

#: The kernel's name in transformers' attention and mask registries.
PACKED_SDPA = "mllm_packed_sdpa"
#: A segment joins a group while it is at least this share of the group's longest: a group
#: pads its segments to its longest, so this bounds the wasted scores to under 1/0.75² - 1.
GROUP_SHARE = 0.75
#: Set inside :func:`dense_mask_skipped`.
_MASK_SKIPPED: ContextVar[bool] = ContextVar("mllm_packed_mask_skipped", default=False)


@dataclass(frozen=True, eq=False)
class SegmentLayout:
    """Where each segment of packed rows lies (a segment: a sample, or a row's padding tail,
    which has its own run of positions), in groups of similar length.

    Attributes:
        groups: per group, ``(tokens, segments, longest)``: ``tokens`` [segments * longest]
            indexes the flattened ``rows * width`` tokens, each segment's tokens followed by
            copies of its first token up to the group's ``longest``.
        slots: [rows * width]: where each token's output lies in the groups' outputs laid
            end to end, each ``[segments * longest]``.
    """

    groups: tuple[tuple[torch.Tensor, int, int], ...]
    slots: torch.Tensor


def segment_layout(position_ids: torch.Tensor) -> SegmentLayout:
    """The :class:`SegmentLayout` of packed rows: one host sync, then index arithmetic.

    Segments start at every row start and wherever a position does not follow the previous
    one (transformers' rule in ``find_packed_sequence_indices``). They are grouped longest
    first, each group taking segments while they are at least :data:`GROUP_SHARE` of its
    longest: one attention call per group pads little, where one call over all segments
    padded to the batch's longest would cost as much as the padded batch on a mixed-length
    micro-batch, and a call per segment would pay per-call overhead on many short captions.

    Args:
        position_ids: [rows, width], restarting at 0 for every sample.
    """
    width = position_ids.shape[1]
    flat = position_ids.reshape(-1)  # [rows * width]
    device = flat.device
    starts_here = torch.ones_like(flat, dtype=torch.bool)
    starts_here[1:] = flat[1:] != flat[:-1] + 1
    starts_here[::width] = True
    starts = starts_here.nonzero().squeeze(-1)  # [segments]
    lengths = torch.diff(starts, append=starts.new_tensor([flat.numel()]))  # [segments]
    sizes = lengths.tolist()
    members: list[list[int]] = []
    for segment in sorted(range(len(sizes)), key=lambda s: -sizes[s]):
        if not members or sizes[segment] < GROUP_SHARE * sizes[members[-1][0]]:
            members.append([])
        members[-1].append(segment)
    groups = []
    first_slots = [0] * len(sizes)  # where each segment's first output lies
    base = 0
    for group in members:
        longest = sizes[group[0]]
        for rank, segment in enumerate(group):
            first_slots[segment] = base + rank * longest
        chosen = torch.tensor(group, device=device)
        offsets = torch.arange(longest, device=device)  # [longest]
        inside = offsets < lengths[chosen, None]  # [segments, longest]
        tokens = starts[chosen, None] + offsets * inside  # [segments, longest]
        groups.append((tokens.reshape(-1), len(group), longest))
        base += len(group) * longest
    segment_of = torch.cumsum(starts_here, 0) - 1  # [rows * width]
    offset_in = torch.arange(flat.numel(), device=device) - starts[segment_of]
    slots = torch.tensor(first_slots, device=device)[segment_of] + offset_in
    return SegmentLayout(tuple(groups), slots)


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    packed_segments: SegmentLayout | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention of each packed segment alone; transformers' SDPA without a layout.

    Args:
        module: the attention module (``num_key_value_groups`` for grouped-query attention).
        query: [rows, heads, width, head_dim].
        key, value: [rows, kv_heads, width, head_dim].
        attention_mask: transformers' mask; read only by the fallback (a packed batch's
            block-diagonal mask says what the layout says).
        dropout, scaling: as for ``scaled_dot_product_attention``.
        is_causal: False (a bidirectional call) takes the fallback.
        packed_segments: :func:`segment_layout` of the batch, or None.
        kwargs: ``sliding_window`` (keys closer than it, as transformers'
            ``sliding_window_overlay``); the fallback's arguments.

    Returns:
        ``(output [rows, width, heads, head_dim], None)``, as transformers' kernels return.
    """
    if packed_segments is None or is_causal is False or query.shape[2] != key.shape[2]:
        # A padded batch has a mask, so compiled layers never read the context variable.
        if attention_mask is None and _MASK_SKIPPED.get():
            raise RuntimeError(
                f"{PACKED_SDPA}: a packed batch reached {type(module).__name__} without its "
                "layout (packed_segments) or as a non-causal call, and no mask was built for "
                "it; this LLM's attention does not take the layout: train it padded "
                "(data.packing: false) or with attn_implementation: eager"
            )
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    if kwargs.get("softcap") is not None:
        raise ValueError(f"{PACKED_SDPA} does not support softcap, as sdpa does not")
    groups = getattr(module, "num_key_value_groups", 1)
    output = _segment_attention(
        query, key, value, packed_segments, groups, dropout, scaling, kwargs.get("sliding_window")
    )
    return output, None


@torch.compiler.disable
def _segment_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: SegmentLayout,
    kv_groups: int,
    dropout: float,
    scaling: float | None,
    window: int | None,
) -> torch.Tensor:
    """[rows, heads, width, head_dim] (key and value: kv_heads) -> [rows, width, heads,
    head_dim], each group of segments in one SDPA call.

    Eager under ``torch.compile`` (one graph break per layer): the groups' number and sizes
    change every batch, and traced they would recompile the layer for each new count.
    Right-padded causal attention needs no key mask: a segment's own queries never reach past
    its end, and the padding's queries are not gathered back.
    """
    rows, heads, width, head_dim = query.shape

    def flat(states: torch.Tensor) -> torch.Tensor:  # [rows * width, h, head_dim]
        return states.transpose(1, 2).reshape(rows * width, states.shape[1], head_dim)

    query, key, value = flat(query), flat(key), flat(value)
    outputs = []
    for tokens, segments, longest in layout.groups:
        shape = (segments, longest)
        mask = None
        if window is not None and longest > window:
            offsets = torch.arange(longest, device=query.device)
            causal = offsets[None, :] <= offsets[:, None]
            mask = causal & (offsets[None, :] > offsets[:, None] - window)  # [longest, longest]
        output = F.scaled_dot_product_attention(
            _gather(query, tokens, shape),
            repeat_kv(_gather(key, tokens, shape), kv_groups),
            repeat_kv(_gather(value, tokens, shape), kv_groups),
            attn_mask=mask,
            dropout_p=dropout,
            is_causal=mask is None,
            scale=scaling,
        )  # [segments, heads, longest, head_dim]
        outputs.append(output.transpose(1, 2).reshape(segments * longest, heads, head_dim))
    output = torch.cat(outputs).index_select(0, layout.slots)  # [rows * width, heads, head_dim]
    return output.view(rows, width, heads, head_dim)


def _gather(states: torch.Tensor, tokens: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """[tokens, h, head_dim] -> [segments, h, longest, head_dim] for ``shape`` (segments,
    longest)."""
    picked = states.index_select(0, tokens)
    return picked.view(*shape, *states.shape[1:]).transpose(1, 2)


@contextmanager
def dense_mask_skipped() -> Iterator[None]:
    """Run a packed forward whose layout every attention call gets, without the dense mask.

    Only mask creation reads the switch, once per forward and outside the layers, so the
    recomputation of checkpointed layers during backward (outside this block) is unaffected:
    their kernels get the layout as an argument.
    """
    token = _MASK_SKIPPED.set(True)
    try:
        yield
    finally:
        _MASK_SKIPPED.reset(token)


def packed_sdpa_mask(*args, **kwargs) -> torch.Tensor | None:
    """transformers' ``sdpa_mask``, or nothing inside :func:`dense_mask_skipped`."""
    if _MASK_SKIPPED.get():
        return None
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def uses_packed_sdpa(llm: PreTrainedModel) -> bool:
    """Whether ``llm`` runs :data:`PACKED_SDPA` (and so wants a packed batch's layout)."""
    return llm.config._attn_implementation == PACKED_SDPA


def use_packed_sdpa(llm: PreTrainedModel, what: str = "model.llm") -> bool:
    """Switch an LLM that runs ``sdpa`` to :data:`PACKED_SDPA` (logged); others are left.

    The switch changes nothing but packed batches: every other call runs ``sdpa`` itself.

    Returns:
        Whether ``llm`` runs :data:`PACKED_SDPA` now.
    """
    if llm.config._attn_implementation == "sdpa":
        llm.set_attn_implementation(PACKED_SDPA)
        logger.info("%s: sdpa, with per-sample attention on packed rows (%s)", what, PACKED_SDPA)
    return uses_packed_sdpa(llm)
