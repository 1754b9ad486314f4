"""The data pipeline: templates, tokenization with label masks, images, dataset, collator."""

from mllm.data.collator import DataCollator
from mllm.data.dataset import (
    ConversationDataset,
    DataError,
    RecordOrigin,
    place_image_markers,
    read_records,
    record_images,
)
from mllm.data.images import (
    IMAGE_MODES,
    ImageLoadError,
    ImageMode,
    expand_to_square,
    load_image,
    pad_colour,
    prepare_image,
    target_size,
    to_rgb,
)
from mllm.data.templates import (
    DEFAULT_IMAGE_TOKEN,
    TEMPLATES,
    ConversationError,
    Segment,
    Template,
    get_template,
    parse_conversation,
)
from mllm.data.tokenize import (
    IGNORE_INDEX,
    DroppedSample,
    TokenizedSample,
    check_tokenizer,
    render_text,
    tokenize_conversation,
    tokenize_rendered,
)

__all__ = [
    "DEFAULT_IMAGE_TOKEN",
    "IGNORE_INDEX",
    "IMAGE_MODES",
    "TEMPLATES",
    "ConversationDataset",
    "ConversationError",
    "DataCollator",
    "DataError",
    "DroppedSample",
    "ImageLoadError",
    "ImageMode",
    "RecordOrigin",
    "Segment",
    "Template",
    "TokenizedSample",
    "check_tokenizer",
    "expand_to_square",
    "get_template",
    "load_image",
    "pad_colour",
    "parse_conversation",
    "place_image_markers",
    "prepare_image",
    "read_records",
    "record_images",
    "render_text",
    "target_size",
    "to_rgb",
    "tokenize_conversation",
    "tokenize_rendered",
]
