"""What only a CUDA machine can check: the attention kernels, packed attention, bf16 training,
4-bit bitsandbytes layers, and ZeRO-3 in one process. Each test skips without CUDA;
``scripts/gpu_check.sh`` runs them (with the ``gpu`` tests of test_attention.py and
test_packing.py, which need flash-attn itself)."""

from __future__ import annotations

import pytest
import torch
from training_utils import (
    REPO,
    make_workspace,
    run_train,
    tiny_recipe,
    workspace_dataset,
    write_recipe,
)

from mllm.config import validate_recipe
from mllm.data.collator import DataCollator
from mllm.data.packing import PackingCollator
from mllm.data.recipe_templates import special_tokens_for
from mllm.models import build_model
from mllm.models.attention import flash_attention_unavailable_reason
from mllm.models.llm import qlora_unavailable_reason
from mllm.training.metrics import read_metrics
from mllm.training.stage import apply_stage, parameter_groups

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
#: The kernel packed rows run on here: flash-attn's variable-length path, else SDPA.
KERNEL = "flash_attention_2" if flash_attention_unavailable_reason() is None else "sdpa"
QLORA_PROBLEM = qlora_unavailable_reason()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def _built(ws, tmp_path, kernel: str = KERNEL, **instruct):
    raw = tiny_recipe(ws, tmp_path, instruct={"init_from": None, **instruct})
    raw["model"]["llm"]["attn_implementation"] = kernel
    raw["model"]["vision"]["attn_implementation"] = "sdpa"
    recipe = validate_recipe(raw, "test")
    built = build_model(
        recipe.model, dtype=torch.bfloat16, special_tokens=special_tokens_for(recipe)
    )
    return recipe, built


def _cuda(batch: dict) -> dict:
    return {
        k: v.cuda() for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "num_tokens"
    }


def test_sdpa_flash_backend_matches_math_backend(ws, tmp_path):
    """PyTorch's own FlashAttention kernel (what ``sdpa`` runs on CUDA when flash-attn cannot
    be installed) gives the reference attention's logits."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    _, built = _built(ws, tmp_path, "sdpa")
    model = built.model.cuda().eval()
    ids = torch.randint(3, 200, (2, 96), device="cuda")
    logits = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with torch.no_grad(), sdpa_kernel(backend):
            logits[backend] = model.llm(input_ids=ids).logits.float()
    torch.testing.assert_close(
        logits[SDPBackend.FLASH_ATTENTION], logits[SDPBackend.MATH], rtol=2e-2, atol=2e-2
    )


def test_packed_rows_give_the_padded_loss(ws, tmp_path):
    """Variable-length attention on packed rows (flash-attn's varlen path, or SDPA's mask)
    equals attention on padded rows, in bf16 on the GPU."""
    _, built = _built(ws, tmp_path)
    model = built.model.cuda().eval()
    samples = [workspace_dataset(ws, built)[i] for i in range(8)]
    pad = built.tokenizer.pad_token_id
    packed = PackingCollator(pad_token_id=pad, max_length=256)(samples)
    assert packed["input_ids"].shape[0] < len(samples)
    with torch.no_grad():
        padded_loss = model(**_cuda(DataCollator(pad_token_id=pad)(samples))).loss.float()
        packed_loss = model(**_cuda(packed)).loss.float()
    torch.testing.assert_close(packed_loss, padded_loss, rtol=2e-2, atol=2e-2)


def test_bf16_training_steps_learn(ws, tmp_path):
    recipe, built = _built(ws, tmp_path)
    stage = recipe.stages["instruct"]
    apply_stage(built.model, stage.train)
    model = built.model.cuda().train()
    optimizer = torch.optim.AdamW(parameter_groups(model, stage.optim), lr=1e-3)
    samples = [workspace_dataset(ws, built)[i] for i in range(4)]
    batch = _cuda(
        PackingCollator(pad_token_id=built.tokenizer.pad_token_id, max_length=256)(samples)
    )
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(p.dtype == torch.bfloat16 for p in model.llm.parameters())
    assert torch.isfinite(torch.tensor(losses)).all() and losses[-1] < losses[0]


@pytest.mark.skipif(QLORA_PROBLEM is not None, reason=f"QLoRA cannot run: {QLORA_PROBLEM}")
def test_qlora_stage_trains_4bit_layers_on_cuda(ws, tmp_path):
    """A qlora stage through scripts/train.py: the LLM's linear layers load as bitsandbytes
    4-bit layers on the GPU, and only the adapters are saved."""
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    from mllm.models.lora import lora_settings

    settings = {"init_from": None, "train": {"llm": "qlora"}, "precision": "bf16"}
    raw = tiny_recipe(ws, tmp_path / "run", instruct=settings)
    recipe = validate_recipe(raw, "test")
    built = build_model(
        recipe.model,
        dtype=torch.bfloat16,
        special_tokens=special_tokens_for(recipe),
        quantize_llm=lora_settings(recipe, "instruct"),
    )
    llm = built.model.llm.cuda()  # where the engine puts it; 4-bit weights stay packed
    layers = [m for m in llm.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.device.type == "cuda" for m in layers)
    assert all(m.weight.dtype == torch.uint8 for m in layers)  # two 4-bit values per byte
    del built
    run_train([str(write_recipe(tmp_path / "r.yaml", raw)), "--stage", "instruct"])
    rows = read_metrics(tmp_path / "run/instruct/metrics.jsonl")
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    saved = load_file(tmp_path / "run/instruct/final/model.safetensors")
    llm_keys = [k for k in saved if k.startswith("llm.")]
    assert llm_keys and all("lora_" in k for k in llm_keys)


def test_zero3_one_process_bf16(ws, tmp_path):
    settings = {
        "init_from": None,
        "precision": "bf16",
        "zero_config": str(REPO / "zero_configs" / "zero3.json"),
        "data": {"packing": True},
    }
    raw = tiny_recipe(ws, tmp_path / "run", instruct=settings)
    run_train([str(write_recipe(tmp_path / "r.yaml", raw)), "--stage", "instruct"])
    rows = read_metrics(tmp_path / "run/instruct/metrics.jsonl")
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (tmp_path / "run/instruct/final/model.safetensors").is_file()
