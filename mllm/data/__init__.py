"""The data pipeline: templates, tokenization with label masks, images, dataset, collator."""

from mllm.data.bad_records import BadRecord
from mllm.data.collator import DataCollator
from mllm.data.conversation import ConversationError, parse_conversation
from mllm.data.dataset import ConversationDataset
from mllm.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_MODES,
    ImageLoadError,
    ImageMode,
    ImagePathError,
    ImageTooLargeError,
    expand_to_square,
    load_image,
    pad_colour,
    prepare_image,
    resolve_image_path,
    target_size,
    to_rgb,
)
from mllm.data.records import DataError, RecordOrigin, read_records, record_images
from mllm.data.templates import (
    DEFAULT_IMAGE_TOKEN,
    TEMPLATES,
    Segment,
    Template,
    get_template,
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
from mllm.data.validate import (
    RECORD_KINDS,
    CheckedRecord,
    InvalidJson,
    RecordProblem,
    check_record,
    place_image_markers,
)

__all__ = [
    "DEFAULT_IMAGE_TOKEN",
    "DEFAULT_MAX_PIXELS",
    "IGNORE_INDEX",
    "IMAGE_MODES",
    "RECORD_KINDS",
    "TEMPLATES",
    "BadRecord",
    "CheckedRecord",
    "ConversationDataset",
    "ConversationError",
    "DataCollator",
    "DataError",
    "DroppedSample",
    "ImageLoadError",
    "ImageMode",
    "ImagePathError",
    "ImageTooLargeError",
    "InvalidJson",
    "RecordOrigin",
    "RecordProblem",
    "Segment",
    "Template",
    "TokenizedSample",
    "check_record",
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
    "resolve_image_path",
    "target_size",
    "to_rgb",
    "tokenize_conversation",
    "tokenize_rendered",
]
