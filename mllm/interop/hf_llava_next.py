"""transformers' LlavaNext ("llava-next-hf" folders) <-> mllm anyres models with ``spatial_unpad``.

``LlavaNextForConditionalGeneration`` is Llava's composition (``mllm.interop.hf_llava``) plus
LLaVA-NeXT's anyres: its ``image_grid_pinpoints`` are mllm's stage setting of that name, its
tiles are the tower's crop (``LlavaNextImageProcessor``), and its learned row separator
``model.image_newline`` is mllm's ``projector.patch_merge.image_newline``. transformers always
unpads and appends the newline, so only ``mm_patch_merge_type: spatial_unpad`` maps onto it.
"""

from __future__ import annotations

import torch
from transformers import LlavaNextConfig
from transformers.image_processing_utils import BaseImageProcessor

from mllm.checkpoint import LoadedModel

#: The image processor settings copied from the tower's processor into LlavaNext's (on export)
#: and back into a per-tile processor (on import).
_PROCESSOR_FIELDS = (
    "do_resize",
    "do_center_crop",
    "size",
    "resample",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)
#: mllm's name for LlavaNext's ``model.image_newline``.
NEWLINE = "patch_merge.image_newline"


def llava_next_config(loaded: LoadedModel, llava: dict) -> LlavaNextConfig:
    """The ``LlavaNextConfig`` of a loaded mllm anyres model.

    Args:
        loaded: the model, loaded with the anyres stage it was trained with.
        llava: the ``LlavaConfig`` fields the two formats share (``export.llava_fields``).
    """
    return LlavaNextConfig(
        **llava,
        image_grid_pinpoints=[[int(h), int(w)] for h, w in loaded.image_grid_pinpoints],
    )


def llava_next_image_processor(
    processor: BaseImageProcessor, pinpoints: list
) -> BaseImageProcessor:
    """A ``LlavaNextImageProcessor`` giving the tiles ``mllm.data.anyres.prepare_anyres`` gives:
    the tower's resize and crop for every tile and for the base image."""
    from transformers import LlavaNextImageProcessorPil

    fields = {f: getattr(processor, f) for f in _PROCESSOR_FIELDS if hasattr(processor, f)}
    fields = {k: v for k, v in fields.items() if v is not None}
    return LlavaNextImageProcessorPil(
        **fields, image_grid_pinpoints=[[int(h), int(w)] for h, w in pinpoints], do_pad=True
    )


def newline_state(projector: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LlavaNext tensor that Llava has not: ``model.image_newline``."""
    return {"model.image_newline": projector.get_parameter(NEWLINE)}


def tile_processor(processor: BaseImageProcessor) -> BaseImageProcessor:
    """The per-tile processor mllm's anyres pipeline wants from a folder's LlavaNext processor:
    the same resize, crop and normalisation, applied to one tile as one image (no tiling)."""
    from transformers import LlavaImageProcessorPil

    fields = {f: getattr(processor, f) for f in _PROCESSOR_FIELDS if hasattr(processor, f)}
    return LlavaImageProcessorPil(
        **{k: v for k, v in fields.items() if v is not None}, do_pad=False
    )
