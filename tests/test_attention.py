"""Attention kernel selection: transformers' switch, chosen and logged, with a clear fallback."""

from __future__ import annotations

import logging

import pytest
import torch
from training_utils import make_workspace, tiny_recipe

from mllm.config import RecipeError, validate_recipe
from mllm.data.recipe_templates import special_tokens_for
from mllm.models import attention, build_model
from mllm.models.attention import (
    AttentionUnavailableError,
    load_with_attention,
    resolve_attn_implementation,
)
from mllm.models.packed_attention import PACKED_SDPA
from mllm.training.environment import check_environment

FLASH_PROBLEM = attention.flash_attention_unavailable_reason()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def _recipe(ws, tmp_path, **llm):
    raw = tiny_recipe(ws, tmp_path)
    raw["model"]["llm"].update(llm)
    return validate_recipe(raw, "test")


def test_auto_is_the_default_and_picks_sdpa_without_flash(ws, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(attention, "flash_attention_unavailable_reason", lambda: "no CUDA device")
    recipe = _recipe(ws, tmp_path)
    assert recipe.model.llm.attn_implementation == "auto"
    with caplog.at_level(logging.INFO, logger="mllm.models.attention"):
        built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    # sdpa, with per-sample attention on packed rows (mllm.models.packed_attention)
    assert built.model.llm.config._attn_implementation == PACKED_SDPA
    assert built.model.vision.encoder.config._attn_implementation == "sdpa"
    assert "auto -> sdpa (no CUDA device)" in caplog.text


def test_auto_picks_flash_when_it_can_run(monkeypatch):
    monkeypatch.setattr(attention, "flash_attention_unavailable_reason", lambda: None)
    assert resolve_attn_implementation("auto") == "flash_attention_2"


def test_eager_is_passed_through(ws, tmp_path):
    recipe = _recipe(ws, tmp_path, attn_implementation="eager")
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    assert built.model.llm.config._attn_implementation == "eager"


@pytest.mark.skipif(FLASH_PROBLEM is None, reason="flash-attn can run here")
def test_flash_where_it_cannot_run_fails_clearly_or_falls_back(ws, tmp_path, caplog):
    recipe = _recipe(ws, tmp_path, attn_implementation="flash_attention_2")
    with pytest.raises(AttentionUnavailableError, match="attn_fallback: warn"):
        build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    problems = check_environment(recipe, list(recipe.stages))
    assert len(problems) == 1 and problems[0].startswith("model.llm.attn_implementation")

    recipe = _recipe(ws, tmp_path, attn_implementation="flash_attention_2", attn_fallback="warn")
    assert check_environment(recipe, list(recipe.stages)) == []
    with caplog.at_level(logging.WARNING, logger="mllm.models.attention"):
        built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    assert built.model.llm.config._attn_implementation == PACKED_SDPA  # sdpa's packed form
    assert "flash_attention_2 cannot run here" in caplog.text


def test_a_model_without_sdpa_falls_back_to_eager(caplog):
    calls = []

    def load(attn_implementation):
        calls.append(attn_implementation)
        if attn_implementation == "sdpa":
            raise ValueError(
                "Foo does not support an attention implementation through "
                "torch.nn.functional.scaled_dot_product_attention yet."
            )
        return "model"

    with caplog.at_level(logging.WARNING, logger="mllm.models.attention"):
        assert load_with_attention(load, "sdpa", "model.llm.path x") == "model"
    assert calls == ["sdpa", "eager"] and "using eager" in caplog.text


def test_unknown_kernel_is_a_recipe_error(ws, tmp_path):
    raw = tiny_recipe(ws, tmp_path)
    raw["model"]["llm"]["attn_implementation"] = "flash_attention_3"
    with pytest.raises(RecipeError, match="model.llm.attn_implementation"):
        validate_recipe(raw, "bad.yaml")


@pytest.mark.gpu
@pytest.mark.skipif(FLASH_PROBLEM is not None, reason=f"FlashAttention cannot run: {FLASH_PROBLEM}")
def test_flash_attention_matches_sdpa_on_gpu(ws, tmp_path):
    logits = {}
    for kernel in ("sdpa", "flash_attention_2"):
        recipe = _recipe(ws, tmp_path, attn_implementation=kernel)
        built = build_model(
            recipe.model, dtype=torch.bfloat16, special_tokens=special_tokens_for(recipe)
        )
        model = built.model.to("cuda").eval()
        assert model.llm.config._attn_implementation == kernel
        ids = torch.tensor([[1, 5, 6, 7, 2]], device="cuda")
        with torch.no_grad():
            logits[kernel] = model.llm(input_ids=ids).logits.float()
    torch.testing.assert_close(logits["flash_attention_2"], logits["sdpa"], rtol=2e-2, atol=2e-2)
