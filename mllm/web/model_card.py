"""The model card of ``mllm web``: what was loaded, read from the loaded model's recipe and
manifest (an mllm checkpoint's, or the one ``mllm.interop`` writes for a LLaVA folder)."""

from __future__ import annotations

from mllm.checkpoint import LoadedModel


def model_card_rows(loaded: LoadedModel) -> list[tuple[str, str]]:
    """``(field, value)`` rows: recipe, stage, tower, projector, LLM, template and format.

    The stage row says which components the stage trained and how (mllm checkpoints; a
    LLaVA or transformers Llava folder records none), so a projector-only stage-1 checkpoint
    is told apart from an instruction-tuned one.
    """
    recipe, manifest = loaded.recipe, loaded.manifest
    model = loaded.built.model
    stage = manifest.get("stage", "?")
    stage_text = f"`{stage}`"
    if "step" in manifest:
        stage_text += f", step {manifest['step']}"
    trained = manifest.get("components") or []
    if trained and stage in recipe.stages:
        modes = recipe.stages[stage].train
        stage_text += "; trained: " + ", ".join(f"{c} ({getattr(modes, c)})" for c in trained)
    adapters = manifest.get("adapters") or {}
    if adapters:
        stage_text += "; adapters: " + ", ".join(f"{c} {a['mode']}" for c, a in adapters.items())
    vision, projector, llm = recipe.model.vision, recipe.model.projector, recipe.model.llm
    return [
        ("Recipe", f"`{recipe.name}`"),
        ("Stage", stage_text),
        ("Vision tower", f"`{vision.name}` from `{vision.path}`"),
        ("Projector", f"`{projector.name}`, {model.num_image_tokens} tokens per image"),
        ("LLM", f"`{llm.family}` from `{llm.path}`"),
        ("Template", f"`{loaded.template}`, images {loaded.image_aspect_ratio}"),
        ("Format", f"`{manifest.get('format', '?')}`"),
    ]


def model_card_markdown(loaded: LoadedModel) -> str:
    """The rows of :func:`model_card_rows` as a Markdown list."""
    return "\n".join(f"- **{name}:** {value}" for name, value in model_card_rows(loaded))
