"""Typed recipe schema: what a YAML recipe may say, with defaults and types.

Component sections (``model.vision``, ``model.projector``) are validated against the config
class their implementation registered, so each component declares its own options in its own
file. Cross-field rules (batch sizes that divide, stages that exist) live in ``checks.py``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny

#: frozen: no gradients; full: every weight trains; lora: low-rank adapters (peft) on a frozen
#: base; qlora: the same with the base loaded in 4-bit NF4 (bitsandbytes).
TuneMode = Literal["frozen", "full", "lora", "qlora"]
ADAPTER_MODES = ("lora", "qlora")
Precision = Literal["fp32", "bf16", "fp16"]
AttnImplementation = Literal["auto", "flash_attention_2", "sdpa", "eager"]
#: Error type a section's validator raises for a key that was removed; ``ctx["key"]`` names
#: it and the message says what to write instead (the loader reports it at that key).
REMOVED_KEY = "removed_key"


def _as_list(value: object) -> object:
    """Let a recipe write ``feature_layer: -2`` where a list of layers is also allowed."""
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


class StrictModel(BaseModel):
    """Base for recipe sections: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ComponentConfig(StrictModel):
    """Options of a registered component; ``name`` selects the implementation."""

    name: str


class VisionTowerConfig(ComponentConfig):
    """Options shared by every vision tower."""

    path: str = Field(description="hub id or local folder, loaded with from_pretrained")
    feature_layer: Annotated[list[int], BeforeValidator(_as_list)] = Field(
        default_factory=lambda: [-2],
        description="hidden-state index (or list, concatenated on the channel axis); LLaVA uses -2",
    )
    select: Literal["patch", "cls_patch"] = Field(
        default="patch", description="'patch' drops the CLS token, 'cls_patch' keeps it"
    )
    attn_implementation: AttnImplementation | None = Field(
        default=None, description="defaults to the LLM's choice"
    )


class ProjectorConfig(ComponentConfig):
    """Options shared by every projector (subclasses add their own)."""


class LLMConfig(StrictModel):
    path: str = Field(description="hub id or local folder of a transformers causal LM")
    family: str = Field(
        description="exact family name from mllm.models.families (llama, vicuna, ...)"
    )
    attn_implementation: AttnImplementation = Field(
        default="auto",
        description="auto: flash_attention_2 when flash-attn and CUDA are present, else sdpa, "
        "else eager",
    )
    attn_fallback: Literal["error", "warn"] = Field(
        default="error",
        description="when the requested kernel cannot run here: fail at start, or warn and use "
        "the next one available",
    )
    trust_remote_code: bool = False
    modality_adaptive: bool = Field(
        default=False,
        description="mPLUG-Owl2's modality-adaptive module: image tokens get their own copies "
        "of each decoder layer's two norms and K/V projections, initialised from the text "
        "weights; Q, O and the MLP stay shared (mllm.models.modality_adaptive)",
    )


class ModelConfig(StrictModel):
    vision: SerializeAsAny[VisionTowerConfig]
    projector: SerializeAsAny[ProjectorConfig]
    llm: LLMConfig
    image_token: str = Field(default="<image>", description="marker in data; one special token")
    mm_patch_merge_type: Literal["flat", "spatial_unpad"] = Field(
        default="flat",
        description="how an image's tiles become tokens: flat: each tile's tokens in turn; "
        "spatial_unpad (LLaVA-NeXT): the anyres grid stitched, cut to the image's aspect "
        "ratio, with a learned image_newline after each row (mllm.models.anyres)",
    )


class DataConfig(StrictModel):
    path: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = Field(
        description="LLaVA-format .json or .jsonl file(s)"
    )
    image_folder: str | None = Field(default=None, description="image paths are relative to it")
    template: str | None = Field(
        default=None,
        description="a registered template, or 'tokenizer' for the tokenizer's own chat "
        "template; defaults to the LLM family's template",
    )
    image_aspect_ratio: Literal["pad", "crop", "resize", "anyres"] = Field(
        default="pad",
        description="pad: square with the mean colour (LLaVA-1.5); crop: the processor's "
        "resize+center-crop; resize: stretch to the tower's size; anyres: LLaVA-NeXT's tiles "
        "of the best of image_grid_pinpoints plus the whole image (mllm.data.anyres)",
    )
    image_grid_pinpoints: list[tuple[int, int]] | None = Field(
        default=None,
        description="anyres only: the (height, width) resolutions an image may be tiled at, "
        "each a multiple of the tower's image size (LLaVA-NeXT at 336: [[336, 672], "
        "[672, 336], [672, 672], [1008, 336], [336, 1008]])",
    )
    max_length: int = Field(default=2048, gt=0)
    num_workers: int = Field(
        default=0, ge=0, description="DataLoader processes that read and preprocess images"
    )
    packing: bool | Literal["auto"] = Field(
        default=False,
        description="concatenate each micro-batch's samples into rows of up to max_length, "
        "attention confined to each sample; same loss, almost no padding. flash_attention_2 "
        "computes each sample's attention only; sdpa/eager compute a row's attention over the "
        "whole row, so their rows are only as wide as the estimated cost allows (a row per "
        "sample is the padded batch). auto: pack when the data's lengths make packed batches "
        "estimated >= 5% cheaper; the choice and why are logged (see docs/benchmarks.md)",
    )
    group_by: Literal["none", "modality_length"] = Field(
        default="none",
        description="modality_length: micro-steps of one modality (image / text-only) and "
        "similar lengths (LLaVA's group_by_modality_length)",
    )
    feature_cache: str | None = Field(
        default="auto",
        description="folder of the frozen vision tower's features per image "
        "(mllm.data.feature_cache): built on first use (or by `mllm cache-features`), then "
        "read instead of running the tower; only for stages whose tower is frozen. auto: "
        "cache when the tower is frozen and the stage sees its images more than once (over "
        "one epoch), in OUTPUT_DIR/feature_cache/STAGE-DIGEST; null: never",
    )
    on_bad_record: Literal["fail", "skip"] = Field(
        default="fail",
        description="fail: a malformed record, an untrainable over-long one or an unloadable "
        "image stops the run naming it; skip: drop it, count it and log it",
    )


class LastBlocks(StrictModel):
    """Train only the last ``last_blocks`` transformer blocks of the vision tower, at
    ``optim.vision_lr``; its embeddings, earlier blocks and final norm stay frozen (ShareGPT4V
    tunes the latter half of CLIP ViT-L's 24 blocks on its dense captions)."""

    mode: Literal["full"] = "full"
    last_blocks: int = Field(gt=0, description="blocks counted from the tower's last")


class TrainConfig(StrictModel):
    """How each component is tuned in a stage."""

    vision: TuneMode | LastBlocks = Field(
        default="frozen", description="a tune mode, or {mode: full, last_blocks: N}"
    )
    projector: TuneMode = "full"
    llm: TuneMode | Literal["visual"] = Field(
        default="frozen",
        description="a tune mode, or visual: only the visual copies of a modality-adaptive "
        "LLM train (mPLUG-Owl2's stage 1), the rest of it frozen",
    )

    def mode(self, component: str) -> TuneMode:
        """The tune mode of ``component`` (``full`` for a tower that trains its last blocks, and
        for an LLM whose visual copies train)."""
        setting = getattr(self, component)
        if isinstance(setting, LastBlocks):
            return setting.mode
        return "full" if setting == "visual" else setting

    def modes(self) -> dict[str, TuneMode]:
        """``{component: tune mode}`` for every component."""
        return {name: self.mode(name) for name in type(self).model_fields}

    def label(self, component: str) -> str:
        """How logs and errors show ``component``'s setting: ``full``, ``last 12 blocks``."""
        setting = getattr(self, component)
        if setting == "visual":
            return "visual copies"
        return f"last {setting.last_blocks} blocks" if isinstance(setting, LastBlocks) else setting


class LoraConfig(StrictModel):
    """Low-rank adapters for components in ``lora``/``qlora`` mode (peft)."""

    r: int = Field(default=8, gt=0, description="rank of the update")
    alpha: float = Field(default=16.0, gt=0, description="scale is alpha / r")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        default=None,
        description="module names to wrap; default: the LLM family's (every linear layer of "
        "the decoder, not the output head)",
    )
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="qlora only")
    double_quant: bool = Field(default=True, description="qlora only: quantise the scales too")


class OptimConfig(StrictModel):
    lr: float = Field(gt=0)
    projector_lr: float | None = Field(default=None, gt=0, description="defaults to lr")
    vision_lr: float | None = Field(
        default=None, gt=0, description="the vision tower's, when it trains; defaults to lr"
    )
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)


class EvalConfig(StrictModel):
    """Held-out validation during a stage: loss on the training labels, and answers generated
    the way ``mllm eval`` asks them, scored by the same exact-match rule."""

    path: Annotated[
        list[str] | None, BeforeValidator(lambda v: [v] if isinstance(v, str) else v)
    ] = Field(default=None, description="LLaVA-format .json/.jsonl file(s) to validate on")
    image_folder: str | None = Field(
        default=None, description="images of path; defaults to the stage's data.image_folder"
    )
    split: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="instead of path: hold out this share of the stage's training records "
        "(chosen by the recipe's seed, the same on every rank and every resume)",
    )
    every: int | None = Field(
        default=None, gt=0, description="optimizer steps between validations; always at the end"
    )
    max_samples: int | None = Field(
        default=None, gt=0, description="validate on the first N held-out records (all)"
    )
    batch_size: int = Field(default=8, gt=0, description="samples per forward pass, per process")
    max_new_tokens: int = Field(
        default=32,
        ge=0,
        description="answer budget for the accuracy; single-exchange records whose reference "
        "answer fits it are asked; 0 turns generation (and val_accuracy) off",
    )


class EarlyStopConfig(StrictModel):
    """Stop a stage once its validation metric has stopped improving; ``best/`` keeps the best."""

    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(
        default=3, gt=0, description="validations in a row without improvement before stopping"
    )
    min_delta: float = Field(
        default=0.0, ge=0, description="the smallest change that counts as an improvement"
    )


class StageConfig(StrictModel):
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    frozen_modules: list[str] = Field(
        default_factory=list,
        description="module paths in the model (projector.qformer) kept frozen and in eval "
        "mode although their component trains (MiniGPT-4 trains only the Q-Former's output)",
    )
    lora: LoraConfig | None = Field(
        default=None, description="adapter settings when a component is lora/qlora (defaults apply)"
    )
    optim: OptimConfig
    init_from: str | None = Field(
        default=None,
        description="'stage:NAME' for an earlier stage of this recipe, or a stage output folder",
    )
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(
        default=None, gt=0, description="optimizer steps; overrides epochs"
    )
    global_batch_size: int = Field(gt=0)
    micro_batch_size: int = Field(gt=0, description="per device")
    precision: Precision = "bf16"
    zero_config: str | None = Field(default=None, description="DeepSpeed JSON with ZeRO settings")
    gradient_checkpointing: bool = False
    compile: bool = Field(
        default=False,
        description="compile each LLM decoder layer and each vision-tower block with "
        "torch.compile, one block at a time, for any batch and sequence size (packing); the "
        "first steps pay the compile, later steps may be faster; docs/benchmarks.md says when "
        "it pays (mllm.models.compile)",
    )
    save_every: int | None = Field(default=None, gt=0, description="resumable checkpoint period")
    keep_checkpoints: int = Field(default=2, gt=0, description="periodic checkpoints kept")
    log_every: int = Field(default=1, gt=0)
    eval: EvalConfig | None = Field(default=None, description="validation during the stage")
    early_stop: EarlyStopConfig | None = Field(
        default=None, description="needs eval.every; the best weights go to STAGE/best"
    )


class LoggingConfig(StrictModel):
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str | None = None


class RecipeConfig(StrictModel):
    name: str
    output_dir: str = Field(description="each stage writes to OUTPUT_DIR/STAGE_NAME")
    seed: int = 42
    model: ModelConfig
    stages: dict[str, StageConfig] = Field(min_length=1, description="run in the order written")
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def stage_output_dir(self, stage: str) -> str:
        return f"{self.output_dir.rstrip('/')}/{stage}"
