"""Build a stage's dataset and collator from its ``data`` section and the assembled model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mllm.config.schema import DataConfig, StageConfig
from mllm.data.anyres import ANYRES, AnyresSpec, anyres_spec
from mllm.data.collator import DataCollator
from mllm.data.dataset import ConversationDataset
from mllm.data.label_audit import check_pair
from mllm.data.packing import PackingCollator
from mllm.data.records import RecordOrigin, hold_out, read_files
from mllm.data.row_width import attention_crossover, choose_packing
from mllm.data.tokenizer_template import resolve_template
from mllm.models.assembly import BuiltModel

logger = logging.getLogger(__name__)


def build_dataset(
    data: DataConfig,
    built: BuiltModel,
    template: str,
    *,
    records: tuple[list, list[RecordOrigin]] | None = None,
) -> ConversationDataset:
    """All of ``data.path`` (or the given ``records`` and their origins) tokenized with
    ``template`` (a registered name, or ``tokenizer`` for the tokenizer's own chat template);
    images expand to the projector's token count.

    Bad records are handled by ``data.on_bad_record`` (see ``ConversationDataset``): records
    and image files are checked here, before the first step, so a ``fail`` run stops early.
    Every rank runs the same deterministic checks and so keeps the same samples.

    Raises:
        LabelRuleError: if the tokenizer/template pair would train replies wrong
            (``label_audit.check_pair``), before any record is read.
    """
    resolved = resolve_template(template, built.tokenizer)
    check_pair(built.tokenizer, resolved, image_token=built.image_token)
    records, origins = records if records is not None else read_files(data.path)
    dataset = ConversationDataset(
        records,
        origins=origins,
        template=resolved,
        tokenizer=built.tokenizer,
        image_processor=built.image_processor,
        image_folder=data.image_folder,
        image_mode=data.image_aspect_ratio,
        image_token=built.image_token,
        num_image_tokens=built.model.num_image_tokens,
        max_length=data.max_length,
        on_bad_record=data.on_bad_record,
        anyres=stage_anyres(data, built),
    )
    dataset.check_image_files(workers=max(1, data.num_workers))
    return dataset


def stage_anyres(data: DataConfig, built: BuiltModel) -> AnyresSpec | None:
    """The anyres tiling of a stage's images for this model, or None for the other modes.

    Raises:
        ValueError: grid resolutions the tower cannot tile (named by their recipe key).
    """
    if data.image_aspect_ratio != ANYRES:
        return None
    assert data.image_grid_pinpoints  # config.checks: anyres has pinpoints
    try:
        return anyres_spec(data.image_grid_pinpoints, built.image_processor, built.model)
    except ValueError as err:
        raise ValueError(f"data.image_grid_pinpoints: {err}") from None


def build_stage_datasets(
    stage: StageConfig, built: BuiltModel, template: str, seed: int
) -> tuple[ConversationDataset, ConversationDataset | None]:
    """The stage's training set and, when it has an ``eval`` section, its validation set.

    ``eval.split`` holds a share of the training records out (``records.hold_out``: chosen by
    ``seed``, so identical on every rank and resume); ``eval.path`` reads other files with the
    stage's data settings, images under ``eval.image_folder`` (default: the stage's).
    """
    data, validation = stage.data, stage.eval
    if validation is None:
        return build_dataset(data, built, template), None
    if validation.split is not None:
        records, origins = read_files(data.path)
        kept, held = hold_out(len(records), validation.split, seed)

        def subset(positions: list[int]) -> tuple[list, list[RecordOrigin]]:
            return [records[i] for i in positions], [origins[i] for i in positions]

        return (
            build_dataset(data, built, template, records=subset(kept)),
            build_dataset(data, built, template, records=subset(held)),
        )
    assert validation.path is not None  # checks.py: path or split
    held_out = data.model_copy(
        update={
            "path": validation.path,
            "image_folder": validation.image_folder or data.image_folder,
        }
    )
    return build_dataset(data, built, template), build_dataset(held_out, built, template)


def build_collator(
    data: DataConfig, pad_token_id: int, crossover: float | None = None
) -> DataCollator | PackingCollator:
    """Rows padded to the longest sample, or packed rows of up to ``data.max_length`` tokens
    (as wide as pays for a whole-row attention kernel's ``crossover``, see
    ``mllm.data.packing``); ``packing: auto`` must be resolved first (:func:`stage_collator`)."""
    if data.packing == "auto":
        raise ValueError("data.packing is 'auto': resolve it with stage_collator")
    if data.packing:
        return PackingCollator(pad_token_id, max_length=data.max_length, crossover=crossover)
    return DataCollator(pad_token_id=pad_token_id)


def stage_collator(
    stage: StageConfig, built: BuiltModel, lengths: Sequence[int], key: str
) -> DataCollator | PackingCollator:
    """The collator of a stage: its ``data.packing`` for the LLM's attention kernel, with
    ``auto`` decided from the data's ``lengths`` (``row_width.choose_packing``) and logged.

    Args:
        stage: the stage (``data``, ``train.llm``, ``micro_batch_size``).
        built: the model; its LLM's config and attention kernel set the packed row widths.
        lengths: tokens per sample of the stage's training data.
        key: the recipe key of the setting, for the log (``stages.S.data.packing``).
    """
    data = stage.data
    llm_config = built.model.llm.config
    crossover = attention_crossover(llm_config, trains_weights=stage.train.llm == "full")
    if data.packing == "auto":
        choice = choose_packing(lengths, stage.micro_batch_size, data.max_length, crossover)
        logger.info(
            "%s: auto -> %s: %s", key, "packed" if choice.packed else "padded", choice.reason
        )
        data = data.model_copy(update={"packing": choice.packed})
    return build_collator(data, built.tokenizer.pad_token_id, crossover)
