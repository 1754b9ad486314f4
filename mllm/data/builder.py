"""Build a stage's dataset and collator from its ``data`` section and the assembled model."""

from __future__ import annotations

from mllm.config.schema import DataConfig
from mllm.data.collator import DataCollator
from mllm.data.dataset import ConversationDataset
from mllm.data.label_audit import check_pair
from mllm.data.packing import PackingCollator
from mllm.data.templates import get_template
from mllm.models.builder import BuiltModel


def build_dataset(data: DataConfig, built: BuiltModel, template: str) -> ConversationDataset:
    """All of ``data.path`` tokenized with ``template``; images expand to the projector's token count.

    Bad records are handled by ``data.on_bad_record`` (see ``ConversationDataset``): records
    and image files are checked here, before the first step, so a ``fail`` run stops early.
    Every rank runs the same deterministic checks and so keeps the same samples.

    Raises:
        LabelRuleError: if the tokenizer/template pair would train replies wrong
            (``label_audit.check_pair``), before any record is read.
    """
    check_pair(built.tokenizer, get_template(template), image_token=built.image_token)
    dataset = ConversationDataset.from_files(
        data.path,
        template=get_template(template),
        tokenizer=built.tokenizer,
        image_processor=built.image_processor,
        image_folder=data.image_folder,
        image_mode=data.image_aspect_ratio,
        image_token=built.image_token,
        num_image_tokens=built.model.num_image_tokens,
        max_length=data.max_length,
        on_bad_record=data.on_bad_record,
    )
    dataset.check_image_files(workers=max(1, data.num_workers))
    return dataset


def build_collator(data: DataConfig, pad_token_id: int) -> DataCollator | PackingCollator:
    """Rows padded to the longest sample, or packed rows of up to ``data.max_length`` tokens."""
    if data.packing:
        return PackingCollator(pad_token_id=pad_token_id, max_length=data.max_length)
    return DataCollator(pad_token_id=pad_token_id)
