"""Which bitsandbytes CPU kernel each 4-bit layer uses (``configure_cpu_4bit_kernels``).

bitsandbytes repacks a ``Linear4bit`` for AVX512-BF16 CPUs on its first no-grad forward; that
fails for layers narrower than the 64-wide quantisation block and breaks gradients through the
layer afterwards. The CPU capability is forced both ways here (``has_avx512bf16`` patched in
the test only), so both branches of the rule run on any CPU; a forward through the repacked
kernel itself needs a CPU that has it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mllm.config.schema import LLMConfig, LoraConfig
from mllm.models.llm import qlora_unavailable_reason
from mllm.tiny import make_tiny_llm

QLORA_SKIP = qlora_unavailable_reason()
pytestmark = pytest.mark.skipif(QLORA_SKIP is not None, reason=f"no 4-bit here: {QLORA_SKIP}")

# hidden 32 (every layer but down_proj reads 32 < 64 features), hidden 128 (every layer fits)
SIZES = {"narrow": (32, 128), "wide": (128, 256)}
# the layers whose shape fits the packed layout: out % 32 == 0 and in % 64 == 0
FITS = {
    "narrow": {"mlp.down_proj"},  # 128 -> 32; q/o 32 -> 32, k/v 32 -> 16, gate/up 32 -> 128 don't
    "wide": {f"self_attn.{p}_proj" for p in "qkvo"}
    | {f"mlp.{p}_proj" for p in ("gate", "up", "down")},
}
LORA = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])


def _cpu_has_kernel() -> bool:
    from bitsandbytes import functional

    return bool(functional.has_avx512bf16())


REAL_KERNEL = _cpu_has_kernel() if QLORA_SKIP is None else False


@pytest.fixture(scope="module")
def llms(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("llms")
    return {
        name: make_tiny_llm(
            root / name, tokenizer_dir=tiny_tokenizer_dir, hidden_size=h, intermediate_size=i
        )
        for name, (h, i) in SIZES.items()
    }


@pytest.fixture(params=[True, False], ids=["avx512bf16", "no-avx512bf16"])
def cpu_kernel(request, monkeypatch):
    """Force the capability mllm reads, whatever this CPU has."""
    from bitsandbytes import functional

    monkeypatch.setattr(functional, "has_avx512bf16", lambda: request.param)
    return request.param


def _named(llm):
    """``(layer index.name, module)`` for every ``Linear4bit`` (``0.self_attn.q_proj``)."""
    import bitsandbytes as bnb

    for name, module in llm.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            yield name.split(".layers.", 1)[1], module


def _inputs(llm) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, llm.config.vocab_size, (2, 12), generator=generator)


def _load_for_inference(path):
    from mllm.models.quantization import load_quantized_llm

    llm = load_quantized_llm(
        path, "4bit", dtype=torch.float32, device="cpu", attn_implementation="sdpa"
    )
    return llm.eval()


@pytest.mark.parametrize("size", SIZES)
def test_inference_repacks_only_layers_that_fit(llms, size, cpu_kernel):
    from mllm.models.llm import configure_cpu_4bit_kernels

    llm = _load_for_inference(llms[size])
    assert not any(m.support_avx512bf16_for_cpu for _, m in _named(llm))  # as loaded
    with torch.no_grad():
        exact = llm(_inputs(llm)).logits  # [2, 12, vocab]

    assert configure_cpu_4bit_kernels(llm, inference=True) == 14  # 2 decoder layers x 7
    on = {name.split(".", 1)[1] for name, m in _named(llm) if m.support_avx512bf16_for_cpu}
    assert on == (FITS[size] if cpu_kernel else set())
    if cpu_kernel and not REAL_KERNEL:
        pytest.skip("this CPU lacks AVX512-BF16: the repacked kernel cannot run here")
    with torch.no_grad():
        first = llm(_inputs(llm)).logits  # repacks the layers that fit
        again = llm(_inputs(llm)).logits
    packed = {
        name.split(".", 1)[1]
        for name, m in _named(llm)
        if getattr(m.weight.quant_state, "packing_format_for_cpu", False)
    }
    assert packed == on
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    if not on:
        torch.testing.assert_close(first, exact, rtol=0, atol=0)
    else:  # bf16 activations in the repacked kernel: close, not equal
        assert (first - exact).abs().max() <= 0.02 * exact.abs().max()  # 0.006 measured


def _qlora(path):
    """The QLoRA path: 4-bit through ``load_llm``, adapters through ``add_adapters``; LoRA A
    and B set from a seed (B starts at zero, A at random) so every adapter gets a gradient."""
    from mllm.models.llm import load_llm
    from mllm.models.lora import add_adapters

    llm = load_llm(LLMConfig(path=str(path), family="llama"), torch.float32, quantize=LORA)
    holder = SimpleNamespace(llm=llm)
    add_adapters(holder, LORA, "qlora")
    generator = torch.Generator().manual_seed(1)
    for name, param in holder.llm.named_parameters():
        if "lora_" in name:
            param.data.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return holder.llm


def _lora_gradients(llm) -> dict[str, torch.Tensor]:
    llm.train()
    ids = _inputs(llm)
    llm(ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in llm.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return grads


@pytest.mark.parametrize("size", SIZES)
def test_qlora_gradients_after_a_no_grad_forward_equal_a_fresh_load(llms, size, cpu_kernel):
    fresh = _lora_gradients(_qlora(llms[size]))
    used = _qlora(llms[size])
    assert not any(m.support_avx512bf16_for_cpu for _, m in _named(used))
    used.eval()
    with torch.no_grad():  # an evaluation, or generate, between training steps
        used(_inputs(used))
    assert not any(
        getattr(m.weight.quant_state, "packing_format_for_cpu", False) for _, m in _named(used)
    )
    after = _lora_gradients(used)
    assert after.keys() == fresh.keys()
    for name, grad in fresh.items():
        torch.testing.assert_close(
            after[name], grad, rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_a_repacked_layer_is_not_made_trainable_again(llms, monkeypatch):
    from mllm.models.llm import configure_cpu_4bit_kernels

    llm = _load_for_inference(llms["wide"])
    state = next(_named(llm))[1].weight.quant_state
    monkeypatch.setattr(state, "packing_format_for_cpu", True, raising=False)
    with pytest.raises(RuntimeError, match="already repacked .* load the model again"):
        configure_cpu_4bit_kernels(llm, inference=False)
