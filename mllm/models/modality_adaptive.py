"""mPLUG-Owl2's modality-adaptive module: image tokens take their own copies of each decoder
layer's two norms and of its K and V projections; Q, O, the MLP and everything else are shared.

``model.llm.modality_adaptive: true`` turns a loaded LLM into this form without touching
transformers' classes: in every decoder layer, ``input_layernorm``, ``post_attention_layernorm``,
``self_attn.k_proj`` and ``self_attn.v_proj`` are replaced by a :class:`ModalitySplit` that holds
the original module as ``text`` and a copy of it as ``visual``. The copies start from the text
weights, so the converted model computes exactly what the plain one did until the copies train.

Which positions are image tokens reaches the splits through a block around the LLM call,
``with modality_positions(llm, is_image): llm(...)`` (``llm.generate`` too: it takes no unknown
arguments). A forward pre-hook on the decoder (``llm.get_decoder()``, registered by
:func:`make_modality_adaptive`) reads the block's ``[batch, seq]`` mask at every call and, for a
call that extends a KV cache, keeps only the columns of the new tokens (tokens beyond the mask
are text: what generation writes). It stores that ``[batch, new_tokens]`` mask where every split
of the LLM reads it; a call outside any block is all text. A gradient-checkpointed layer replays
its forward in backward, after the block has ended: the stored mask stays until the next LLM
call, so the replay sees the mask of the forward being differentiated.

Parameter names: ``...self_attn.k_proj.text.weight`` and ``...self_attn.k_proj.visual.weight``
(likewise for ``v_proj`` and the norms). LoRA targets written as ``k_proj`` adapt both copies,
each with its own adapter (:func:`lora_targets`), so merging is exact. :func:`plain_state_dict`
gives the text weights under transformers' own names (what ``mllm merge`` saves as the LLM
folder) and :func:`visual_state_dict` the copies (saved beside it in the mllm checkpoint).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from transformers import PreTrainedModel

from mllm.errors import UsageError

#: Modules of each decoder layer that get a visual copy, as paths inside the layer (mPLUG-Owl2's
#: choice: both norms, the key and the value projections).
ADAPTED_MODULES = (
    "input_layernorm",
    "post_attention_layernorm",
    "self_attn.k_proj",
    "self_attn.v_proj",
)
TEXT, VISUAL = "text", "visual"


class ModalityState:
    """Which positions of the current LLM call are image tokens, shared by the splits of one LLM.

    Attributes:
        positions: bool [batch, seq] set by :func:`modality_positions` for the calls inside it
            (their whole sequence, cached prefix included), or None.
        visual: bool [batch, new_tokens] of the call being run (or last run), or None (text).
    """

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None
        self.visual: torch.Tensor | None = None


class ModalitySplit(nn.Module):
    """One module of a decoder layer in two copies: ``text`` for text tokens, ``visual`` for
    image tokens (mPLUG-Owl2's ``MultiwayNetwork`` with two ways).

    Both copies run on every token and the output takes each position from its modality's copy
    (``torch.where``), so shapes stay static, no host sync is needed, every rank calls both
    copies in the same order (ZeRO-3 gathers them collectively), and a copy's gradient comes
    only from the positions of its modality. The price is one extra K and V projection and norm
    per token, about 15% of a Llama decoder layer's matmuls.

    Args:
        text: the LLM's own module (norm or linear layer), used for text tokens.
        visual: its copy for image tokens, same type and shapes.
        state: where the LLM's decoder hook stores the current call's image positions.
    """

    def __init__(self, text: nn.Module, visual: nn.Module, state: ModalityState) -> None:
        super().__init__()
        self.text = text
        self.visual = visual
        self.state = state

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, seq, in] -> [batch, seq, out], image positions through ``visual``."""
        text_out = self.text(hidden)
        is_visual = self.state.visual  # [batch, seq] or None
        if is_visual is None:
            return text_out
        if tuple(is_visual.shape) != tuple(hidden.shape[:2]):
            raise RuntimeError(
                f"modality mask of shape {tuple(is_visual.shape)} for hidden states of shape "
                f"{tuple(hidden.shape)}: call the LLM inside modality_positions(llm, mask) with "
                "the mask of its sequence [batch, seq]"
            )
        return torch.where(is_visual.unsqueeze(-1), self.visual(hidden), text_out)


def is_modality_adaptive(module: nn.Module) -> bool:
    """Whether ``module`` (an LLM, or a model holding one) has modality-adaptive layers."""
    return any(isinstance(m, ModalitySplit) for m in module.modules())


def make_modality_adaptive(llm: PreTrainedModel) -> int:
    """Give every decoder layer of ``llm`` visual copies of ``ADAPTED_MODULES``, in place.

    Works on a model loaded partitioned by ZeRO-3 (the originals are gathered to be copied; the
    copies are ordinary parameters that DeepSpeed partitions when its engine starts).

    Args:
        llm: a transformers causal LM whose decoder (``get_decoder()``) has ``layers`` with
            separate ``k_proj``/``v_proj`` and the two norms (Llama, Mistral, Qwen2, Gemma).

    Returns:
        The number of decoder layers converted.

    Raises:
        ValueError: the LLM is already modality-adaptive, or its layers lack one of the modules
            (Phi-3 fuses Q, K and V into ``qkv_proj``), naming what is missing.
    """
    if is_modality_adaptive(llm):
        raise ValueError("the LLM is modality-adaptive already")
    decoder = llm.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"model.llm.modality_adaptive: {type(decoder).__name__} has no `layers`")
    state = ModalityState()
    for index, layer in enumerate(layers):
        for path in ADAPTED_MODULES:
            parent_path, _, name = path.rpartition(".")
            try:
                parent = layer.get_submodule(parent_path) if parent_path else layer
                original = getattr(parent, name)
            except AttributeError:
                raise ValueError(
                    f"model.llm.modality_adaptive: decoder layer {index} "
                    f"({type(layer).__name__}) has no {path}; the modality-adaptive module needs "
                    f"{', '.join(ADAPTED_MODULES)}"
                ) from None
            setattr(parent, name, ModalitySplit(original, _copy(original), state))
    decoder.register_forward_pre_hook(_ModalityHook(state), with_kwargs=True)
    return len(layers)


@contextmanager
def modality_positions(llm: nn.Module, is_image: torch.Tensor) -> Iterator[None]:
    """LLM calls inside this block see ``is_image`` as their image positions.

    Args:
        llm: a modality-adaptive LLM (adapters or not).
        is_image: bool [batch, seq], the whole sequence of the calls (a generation's prompt:
            the tokens it writes are text).

    Raises:
        ValueError: ``llm`` is not modality-adaptive.
    """
    state = next((m.state for m in llm.modules() if isinstance(m, ModalitySplit)), None)
    if state is None:
        raise ValueError("modality_positions: the LLM is not modality-adaptive")
    state.positions = is_image
    try:
        yield
    finally:
        state.positions = None


class _ModalityHook:
    """The decoder's forward pre-hook: the columns of ``ModalityState.positions`` for the tokens
    this call processes, stored as ``ModalityState.visual``."""

    def __init__(self, state: ModalityState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        positions = self.state.positions
        if positions is None:
            self.state.visual = None
            return
        tokens = kwargs.get("inputs_embeds")
        if tokens is None:
            tokens = kwargs.get("input_ids", args[0] if args else None)
        batch, new = tokens.shape[0], tokens.shape[1]
        if positions.shape[0] != batch:
            raise RuntimeError(
                f"modality_positions has {positions.shape[0]} rows for a batch of {batch}"
            )
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None else 0
        window = positions[:, past : past + new].to(device=tokens.device, dtype=torch.bool)
        if window.shape[1] < new:  # tokens past the mask: generated text
            window = torch.cat([window, window.new_zeros(batch, new - window.shape[1])], dim=1)
        self.state.visual = window  # [batch, new]


def _copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with its own parameters, gathered first under ZeRO-3."""
    params = list(module.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        return copy.deepcopy(module)
    with _gathered(params):
        # Plain parameters in place of the partitioned ones: the copy must not share their
        # DeepSpeed bookkeeping. The engine partitions them like any parameter it is given.
        memo = {
            id(p): nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad) for p in params
        }
        return copy.deepcopy(module, memo)


def _gathered(params: list[nn.Parameter]):
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params)
    return nullcontext()


def visual_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every visual copy inside ``module``, adapter weights excluded."""
    found = []
    for name, param in module.named_parameters():
        if f".{VISUAL}." in f".{name}" and "lora_" not in name:
            found.append((name, param))
    return found


def train_visual_copies(llm: nn.Module, *, key: str = "stages.S.train.llm") -> int:
    """Freeze ``llm`` except its visual copies (``train.llm: visual``, mPLUG-Owl2's stage 1).

    Returns:
        The number of parameter tensors that train.

    Raises:
        UsageError: the LLM has no visual copies (``model.llm.modality_adaptive`` is off).
    """
    llm.requires_grad_(False)
    copies = visual_parameters(llm)
    if not copies:
        raise UsageError(
            f"{key}: visual, but the LLM has no visual copies; set "
            "model.llm.modality_adaptive: true"
        )
    for _, param in copies:
        param.requires_grad_(True)
    return len(copies)


def lora_targets(llm: nn.Module, targets: Sequence[str]) -> list[str]:
    """LoRA target names for peft: a target that names split modules (``k_proj``) becomes its
    two copies (``k_proj.text``, ``k_proj.visual``), each then adapted on its own."""
    split_names = {
        name.rpartition(".")[2] for name, m in llm.named_modules() if isinstance(m, ModalitySplit)
    }
    expanded: list[str] = []
    for target in targets:
        if target in split_names:
            expanded += [f"{target}.{TEXT}", f"{target}.{VISUAL}"]
        else:
            expanded.append(target)
    return expanded


def plain_state_dict(llm: nn.Module) -> dict[str, torch.Tensor]:
    """The LLM's state dict with the text copies under the names transformers gives them and
    no visual copies: what a plain model of the same class loads."""
    splits = _split_names(llm)
    plain = {}
    for name, tensor in llm.state_dict().items():
        owner = _split_owner(name, splits)
        if owner is None:
            plain[name] = tensor
        elif owner[1] == TEXT:
            plain[f"{owner[0]}.{owner[2]}"] = tensor
    return plain


def visual_state_dict(llm: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The visual copies' tensors, named as in ``llm`` (with ``prefix``)."""
    splits = _split_names(llm)
    return {
        f"{prefix}{name}": tensor
        for name, tensor in llm.state_dict().items()
        if (owner := _split_owner(name, splits)) is not None and owner[1] == VISUAL
    }


def _split_names(llm: nn.Module) -> set[str]:
    return {name for name, m in llm.named_modules() if isinstance(m, ModalitySplit)}


def _split_owner(name: str, splits: set[str]) -> tuple[str, str, str] | None:
    """``(split, copy, rest)`` when state-dict entry ``name`` is ``SPLIT.COPY.REST``."""
    parts = name.split(".")
    for index in range(1, len(parts) - 1):
        if parts[index] in (TEXT, VISUAL) and ".".join(parts[:index]) in splits:
            return ".".join(parts[:index]), parts[index], ".".join(parts[index + 1 :])
    return None
