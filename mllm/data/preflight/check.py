"""What ``mllm data check`` checks: a recipe's stages, each with its own settings, or data files
with settings given by hand (``mllm.commands.data_check`` holds the command line)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mllm.data.images import DEFAULT_MAX_PIXELS
from mllm.data.preflight.report import CheckReport
from mllm.data.preflight.scan import TokenSettings, check_data
from mllm.data.templates import DEFAULT_IMAGE_TOKEN, get_template


class DataCheckUsageError(Exception):
    """The check cannot start (a recipe, stage, template or tokenizer to fix); the message
    names it."""


@dataclass(frozen=True)
class ImageCheckOptions:
    """How images are checked, in both modes.

    Attributes:
        image_folder: overrides the recipe's ``image_folder`` (data files: the folder).
        check_images: ``False`` skips the image files.
        decode_images: decode every image (finds all damage), not only its header.
        workers: processes for the image pass.
        max_pixels: largest image (w*h).
    """

    image_folder: str | None = None
    check_images: bool = True
    decode_images: bool = False
    workers: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class FileCheckSettings:
    """What a recipe stage would say, for data files checked without a recipe.

    Attributes:
        on_bad_record: ``fail`` or ``skip``.
        template: render with it (structure and template checks).
        tokenizer, max_length, image_tokens: token lengths (all three and ``template``).
        image_token: the image marker.
        image_aspect_ratio: ``pad`` (``max_pixels`` applies to the padded square), ``crop`` or
            ``resize``.
    """

    on_bad_record: str = "fail"
    template: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    image_tokens: int | None = None
    image_token: str = DEFAULT_IMAGE_TOKEN
    image_aspect_ratio: str = "pad"


def check_files(
    paths: Sequence[str], options: ImageCheckOptions, settings: FileCheckSettings
) -> CheckReport:
    """Check data files (.json/.jsonl) with ``settings`` in place of a recipe stage's.

    Raises:
        DataCheckUsageError: an unknown template, a tokenizer that does not load, or token
            settings given in part.
    """
    template = None
    if settings.template:
        template = _template(settings.template)
    wanted = (settings.tokenizer, settings.max_length, settings.image_tokens)
    tokens = None
    if any(value is not None for value in wanted):
        if None in wanted or template is None:
            raise DataCheckUsageError(
                "token lengths need --tokenizer, --max-length, --image-tokens and --template"
            )
        tokens = TokenSettings(
            _bare_tokenizer(settings.tokenizer, settings.image_token, template.special_tokens),
            settings.image_tokens,
            settings.max_length,
        )
    return check_data(
        list(paths),
        name="data",
        image_folder=options.image_folder,
        policy=settings.on_bad_record,
        image_token=settings.image_token,
        template=template,
        tokens=tokens,
        check_images=options.check_images,
        decode_images=options.decode_images,
        workers=options.workers,
        max_pixels=options.max_pixels,
        image_mode=settings.image_aspect_ratio,
    )


def check_recipe(
    recipe_path: str,
    overrides: Sequence[str],
    stages: Sequence[str] | None,
    options: ImageCheckOptions,
) -> list[CheckReport]:
    """Check each stage's data with its own template, ``max_length``, image folder and
    ``on_bad_record`` policy, the LLM's tokenizer (no weights load) and its tokens per image.

    Args:
        recipe_path, overrides: the recipe and its ``key.sub=value`` overrides.
        stages: the stages to check; ``None`` for all.
        options: how images are checked.

    Raises:
        DataCheckUsageError: the recipe, a stage name or the model's configs.
    """
    from mllm.config import RecipeError, load_recipe
    from mllm.data.preflight.model_info import image_tokens_per_image, tile_and_tokens
    from mllm.data.recipe_templates import special_tokens_for, stage_template
    from mllm.data.tokenizer_template import resolve_template
    from mllm.models.llm import load_tokenizer

    try:
        recipe = load_recipe(recipe_path, list(overrides))
    except RecipeError as err:
        raise DataCheckUsageError(str(err)) from None
    stages = list(stages or recipe.stages)
    unknown = [stage for stage in stages if stage not in recipe.stages]
    if unknown:
        raise DataCheckUsageError(
            f"{recipe_path}: no stage {unknown[0]!r}; stages: {list(recipe.stages)}"
        )
    model = recipe.model
    try:
        tokenizer = load_tokenizer(model.llm, model.image_token, special_tokens_for(recipe))
        image_tokens = image_tokens_per_image(model)
        tile, tile_tokens = tile_and_tokens(model)
    except (OSError, ValueError) as err:
        raise DataCheckUsageError(
            f"{recipe_path}: cannot read the model's configs: {err}"
        ) from None
    reports = []
    for name in stages:
        data = recipe.stages[name].data
        reports.append(
            check_data(
                data.path,
                name=f"stage {name}",
                image_folder=options.image_folder or data.image_folder,
                policy=data.on_bad_record,
                image_token=model.image_token,
                template=resolve_template(stage_template(recipe, recipe.stages[name]), tokenizer),
                tokens=TokenSettings(
                    tokenizer,
                    image_tokens,
                    data.max_length,
                    _anyres(recipe_path, name, data, model, tile, tile_tokens),
                ),
                check_images=options.check_images,
                decode_images=options.decode_images,
                workers=options.workers,
                max_pixels=options.max_pixels,
                image_mode=data.image_aspect_ratio,
            )
        )
    return reports


def _anyres(recipe_path: str, stage: str, data, model, tile: int, tile_tokens: int):
    """The stage's anyres tiling (``mllm.data.anyres.AnyresSpec``), or None for the other
    image modes.

    Raises:
        DataCheckUsageError: grid resolutions the tower cannot tile.
    """
    from mllm.data.anyres import ANYRES, AnyresSpec, check_pinpoints
    from mllm.models.anyres import tile_side

    if data.image_aspect_ratio != ANYRES:
        return None
    try:
        check_pinpoints(data.image_grid_pinpoints, tile)
        tile_side(tile_tokens)
    except ValueError as err:
        raise DataCheckUsageError(f"{recipe_path}: stage {stage}: {err}") from None
    pinpoints = tuple((int(h), int(w)) for h, w in data.image_grid_pinpoints)
    return AnyresSpec(pinpoints, tile, model.mm_patch_merge_type, tile_tokens)


def _template(name: str):
    from mllm.registry import UnknownComponentError

    try:
        return get_template(name)
    except UnknownComponentError as err:
        raise DataCheckUsageError(str(err)) from None


def _bare_tokenizer(folder: str, image_token: str, special_tokens: Sequence[str]):
    """A tokenizer folder with the image marker and template tokens added, as the model
    builder adds them."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise DataCheckUsageError(f"--tokenizer {folder}: {err}") from None
    vocab = tokenizer.get_vocab()
    missing = [
        token for token in dict.fromkeys((image_token, *special_tokens)) if token not in vocab
    ]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer
