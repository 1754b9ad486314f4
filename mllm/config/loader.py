"""Read a YAML recipe (with ``extends`` and ``key.sub=value`` overrides) into a RecipeConfig.

Every problem is reported at once, each with the recipe file and the dotted key, before
anything is built or downloaded.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mllm.config.schema import REMOVED_KEY, RecipeConfig
from mllm.registry import Registry, UnknownComponentError


class RecipeError(ValueError):
    """A recipe that cannot be used; lists every ``file: key: reason`` found."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{key}: {reason}" if key else reason for key, reason in problems]
        super().__init__(f"invalid recipe {source}:\n  " + "\n  ".join(lines))


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load ``path`` and, recursively, the recipe it ``extends`` (relative to ``path``)."""
    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise RecipeError(str(path), [("extends", f"cycle: {chain}")])
    if not path.is_file():
        raise RecipeError(str(path), [("", "file not found")])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(str(path), [("", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise RecipeError(str(path), [("", "top level must be a mapping")])
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(str(path), [("extends", "must be a path to another recipe")])
    base = read_yaml(path.parent / parent, (*_seen, path))
    return deep_merge(base, data)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the base's.

    A mapping whose ``name`` differs from the base's is another component with other options,
    so it replaces the base's mapping instead of merging into it.
    """
    merged = copy.deepcopy(base)
    for key, value in update.items():
        old = merged.get(key)
        other_component = (
            isinstance(old, dict) and "name" in value if isinstance(value, dict) else False
        )
        if other_component and value["name"] != old.get("name"):
            merged[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(old, dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings; values are parsed as YAML (``1e-4``, ``true``, ``[1, 2]``)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RecipeError("command line", [(item, "override must look like key.sub=value")])
        value = yaml.safe_load(text) if text else ""
        node = raw
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise RecipeError("command line", [(key, f"{where} is not a mapping")])
            node = child
        node[parts[-1]] = value
    return raw


def _format_loc(prefix: tuple[str, ...], loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in (*prefix, *loc))


def _errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        reason, loc = err["msg"], err["loc"]
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        elif err["type"] == REMOVED_KEY:  # raised by the section: point at the key itself
            loc = (*loc, err["ctx"]["key"])
        elif "input" in err and err["type"] not in ("missing",):
            reason = f"{reason} (got {err['input']!r})"
        problems.append((_format_loc(prefix, loc), reason))
    return problems


def _resolve_component(
    raw_model: dict[str, Any], key: str, registry: Registry, problems: list[tuple[str, str]]
) -> None:
    """Replace ``raw_model[key]`` (a mapping) by its registered config object, in place."""
    section = raw_model.get(key)
    if not isinstance(section, dict):
        return  # missing or mistyped: the schema reports it
    prefix = ("model", key)
    name = section.get("name")
    if not isinstance(name, str):
        problems.append((_format_loc(prefix, ("name",)), f"required; one of {registry.names()}"))
        raw_model.pop(key)
        return
    try:
        config_class: type[BaseModel] = registry.get(name).config_class
    except UnknownComponentError as exc:
        problems.append((_format_loc(prefix, ("name",)), str(exc)))
        raw_model.pop(key)
        return
    try:
        raw_model[key] = config_class.model_validate(section)
    except ValidationError as exc:
        problems.extend(_errors(exc, prefix))
        raw_model.pop(key)


def validate_recipe(raw: dict[str, Any], source: str, *, check_files: bool = True) -> RecipeConfig:
    """Turn a plain mapping into a checked RecipeConfig or raise RecipeError listing all problems.

    ``check_files`` also checks files the recipe names that must exist before training (ZeRO
    configs); loading a finished checkpoint for inference does not need them.
    """
    # Imported here, not at the top: the component modules import mllm.config themselves.
    from mllm.config.checks import check_recipe
    from mllm.models import projectors, vision  # noqa: F401 - registers every component
    from mllm.models.catalog import PROJECTORS, VISION_TOWERS

    raw = copy.deepcopy(raw)
    problems: list[tuple[str, str]] = []
    model = raw.get("model")
    if isinstance(model, dict):
        _resolve_component(model, "vision", VISION_TOWERS, problems)
        _resolve_component(model, "projector", PROJECTORS, problems)
    try:
        recipe = RecipeConfig.model_validate(raw)
    except ValidationError as exc:
        # A component section dropped above would also show up as "missing": skip the echo.
        reported = {key for key, _ in problems}
        for key, reason in _errors(exc):
            if not any(key == done or done.startswith(key + ".") for done in reported):
                problems.append((key, reason))
        raise RecipeError(source, problems) from None
    if problems:
        raise RecipeError(source, problems)
    problems = check_recipe(recipe, check_files=check_files)
    if problems:
        raise RecipeError(source, problems)
    return anchor_paths(recipe)


def _anchor(path: str) -> str:
    """An existing relative path made absolute; anything else (a hub id, a future file) as is."""
    candidate = Path(path)
    return str(candidate.resolve()) if not candidate.is_absolute() and candidate.exists() else path


def anchor_paths(recipe: RecipeConfig) -> RecipeConfig:
    """Pin relative paths to the directory the recipe was loaded from.

    Relative paths in a recipe start at the current directory (as in LLaVA's scripts); the
    saved copy next to a checkpoint must still point at the same files from anywhere.
    """
    recipe = recipe.model_copy(deep=True)
    model = recipe.model
    model.vision.path = _anchor(model.vision.path)
    model.llm.path = _anchor(model.llm.path)
    recipe.output_dir = str(Path(recipe.output_dir).resolve())
    for stage in recipe.stages.values():
        stage.data.path = [_anchor(p) for p in stage.data.path]
        if stage.data.image_folder:
            stage.data.image_folder = _anchor(stage.data.image_folder)
        if stage.zero_config:
            stage.zero_config = _anchor(stage.zero_config)
        if stage.data.feature_cache not in (None, "auto"):  # like output_dir: may not exist yet
            stage.data.feature_cache = str(Path(stage.data.feature_cache).resolve())
        if stage.init_from and not stage.init_from.startswith("stage:"):
            stage.init_from = _anchor(stage.init_from)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Load, merge, override and validate a recipe file.

    Args:
        path: the YAML recipe; ``extends`` inside it is relative to this file.
        overrides: ``key.sub=value`` strings applied after merging, validated like the file.

    Returns:
        The validated recipe.

    Raises:
        RecipeError: naming the file, each offending key and the reason.
    """
    raw = apply_overrides(read_yaml(Path(path)), overrides or [])
    source = str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return validate_recipe(raw, source)


def dump_recipe(recipe: RecipeConfig) -> str:
    """The resolved recipe as YAML, as saved next to every checkpoint."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
