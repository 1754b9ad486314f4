"""Training throughput of a ~1.2B-parameter LLaVA-shaped model: tokens/s, MFU and peak memory.

The model is built from config with random weights (no download): a ViT-L/14-336-sized CLIP
tower (304M, 576 image tokens), LLaVA's 2-layer MLP projector, and a Llama of width 2048 and
16 layers (GQA, 32000-token vocabulary, 0.85B). It trains LLaVA's stage 2 (projector and LLM
full, tower frozen) through the real stage set-up and trainer (``mllm.bench.ours``), packed,
in bf16, on the synthetic LLaVA-665k length mix (``mllm.bench.data``). ``scripts/gpu_check.sh``
runs it; ``--dry-run`` runs the same code at a shrunk size for one step on CPU (CI)::

    python -m mllm.bench.gpu_throughput                 # CUDA, about 2 minutes on one H100
    python -m mllm.bench.gpu_throughput --compile       # the same with stages.S.compile
    python -m mllm.bench.gpu_throughput --dry-run       # CPU, shrunk, one step (seconds)

MFU is model FLOPs per second over the card's dense bf16 peak (:data:`PEAK_BF16_TFLOPS`).
Model FLOPs count the work the step must do, not what the kernels did (PaLM's definition,
without recomputation): per token 2 FLOPs per weight of a matmul in the forward pass and 4
more in the backward pass of a trained part (2 in a frozen part that gradients cross, none in
the frozen tower), and causal attention as ``2 * layers * width * n^2`` per sample of ``n``
tokens in the forward pass (the tower's attention is not causal: twice that).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from mllm.bench.model_section import llava_model_section

#: Dense bf16 tensor-core peak in TFLOPS by the name CUDA reports (no sparsity).
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 SXM": 989.0,  # "NVIDIA H100 80GB HBM3"
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
}


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the benchmarked model: the CLIP tower, then the Llama."""

    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_intermediate: int
    vocab_size: int

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


#: LLaVA-1.5's tower (CLIP ViT-L/14 at 336 px) and a TinyLlama-like LLM of 16 layers.
FULL = ModelShape(336, 14, 1024, 24, 16, 4096, 2048, 16, 16, 4, 5632, 32000)
#: The same layout shrunk for a CPU dry run (16 image tokens).
SHRUNK = ModelShape(56, 14, 64, 2, 4, 128, 64, 2, 4, 2, 128, 1024)


@dataclass(frozen=True)
class RunSettings:
    """How long and how wide the benchmark trains."""

    samples: int = 1200
    micro_batch: int = 16
    max_length: int = 2048
    warmup: int = 5
    steps: int = 30
    precision: str = "bf16"
    compile: bool = False
    peak_tflops: float | None = None  # the card's bf16 peak; None: looked up by its name


DRY_RUN = RunSettings(
    samples=16, micro_batch=4, max_length=512, warmup=1, steps=1, precision="fp32"
)


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak from :data:`PEAK_BF16_TFLOPS`, or None when unknown.

    CUDA's device names are free text ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"), so the
    model is found inside the name, most specific first; ``--peak-tflops`` overrides it.

    "H100" alone is an SXM card when it reports HBM3 memory; PCIe and NVL say so in the name.
    """
    name = device_name.replace("NVIDIA ", "")
    for key in ("GH200", "H200", "H100 NVL", "H100 PCIe", "A100", "L40S", "A10G", "L4"):
        if key.replace(" ", "") in name.replace(" ", "").replace("-", ""):
            return PEAK_BF16_TFLOPS[key]
    if "H100" in name:
        return PEAK_BF16_TFLOPS["H100 SXM"]
    return None


def build_models(folder: Path, shape: ModelShape) -> dict[str, Path]:
    """Write the tower and the LLM (random weights, from config) under ``folder``, once.

    The tokenizer is mllm's tiny one (about 1,100 pieces); the LLM keeps ``shape.vocab_size``
    rows so its output head costs what a real Llama's does.

    Returns:
        ``{"clip": path, "llama": path}``.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mllm.tiny import make_tiny_vision_tower, train_tiny_tokenizer

    tag = "x".join(str(v) for v in asdict(shape).values())
    clip, llama = folder / f"clip-{tag}", folder / f"llama-{tag}"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (clip / "config.json").is_file():
        make_tiny_vision_tower(
            clip,
            "clip",
            image_size=shape.image_size,
            patch_size=shape.patch_size,
            hidden_size=shape.vision_hidden,
            num_layers=shape.vision_layers,
            num_heads=shape.vision_heads,
            intermediate_size=shape.vision_intermediate,
        )
    if not (llama / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(train_tiny_tokenizer(folder / "tokenizer"))
        config = LlamaConfig(
            vocab_size=max(shape.vocab_size, len(tokenizer)),
            hidden_size=shape.llm_hidden,
            num_hidden_layers=shape.llm_layers,
            num_attention_heads=shape.llm_heads,
            num_key_value_heads=shape.llm_kv_heads,
            intermediate_size=shape.llm_intermediate,
            max_position_embeddings=4096,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
        # Initialised on the GPU when there is one: 0.85B normal draws take a minute on CPU.
        with torch.device(device):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(llama)
        tokenizer.save_pretrained(llama)
        del model
    return {"clip": clip, "llama": llama}


def write_recipe(workdir: Path, models: dict[str, Path], mix, settings: RunSettings) -> Path:
    """LLaVA stage 2 on the length mix: tower frozen, projector and LLM full, packed."""
    recipe = {
        "name": "gpu-throughput",
        "output_dir": str(workdir / "runs"),
        "seed": 0,
        "model": llava_model_section(models, attn_fallback="warn"),
        "stages": {
            "instruct": {
                "data": {
                    "path": str(mix.records),
                    "image_folder": str(mix.image_folder),
                    "template": "vicuna_v1",
                    "max_length": settings.max_length,
                    "packing": True,
                },
                "train": {"vision": "frozen", "projector": "full", "llm": "full"},
                "optim": {"lr": 2.0e-5, "warmup_ratio": 0.0},
                "max_steps": settings.warmup + settings.steps,
                "global_batch_size": settings.micro_batch,
                "micro_batch_size": settings.micro_batch,
                "precision": settings.precision,
                "compile": settings.compile,
                "log_every": 1,
            }
        },
    }
    path = workdir / "gpu_throughput.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _linear_weights(module) -> int:
    """Weights of the matmuls in ``module`` (every nn.Linear, embeddings excluded)."""
    from torch import nn

    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def flops_per_sample(model, lengths: list[int], has_image: list[bool]) -> float:
    """Mean model FLOPs of one training sample of the stage-2 recipe (see the module docstring).

    Args:
        model: the built ``MultimodalModel`` (tower frozen; projector and LLM trained).
        lengths: tokens of each sample of the data, image placeholders included.
        has_image: whether each sample has an image.

    Returns:
        Forward plus backward FLOPs, averaged over the data's samples.
    """
    llm_config = model.llm.config
    width, layers = llm_config.hidden_size, llm_config.num_hidden_layers
    vision = model.vision.encoder.config
    patches = (vision.image_size // vision.patch_size) ** 2 + 1  # the tower sees CLS too
    llm_weights = _linear_weights(model.llm)  # decoder matmuls and the output head
    tower = 2 * _linear_weights(model.vision) * patches  # frozen: forward only
    tower += 4 * vision.num_hidden_layers * vision.hidden_size * patches**2  # bidirectional
    projector = 6 * _linear_weights(model.projector) * model.num_image_tokens
    total = 0.0
    for n, image in zip(lengths, has_image, strict=True):
        flops = 6 * llm_weights * n + 3 * 2 * layers * width * n**2
        if image:
            flops += tower + projector
        total += flops
    return total / max(len(lengths), 1)


def run(workdir: Path, shape: ModelShape, settings: RunSettings) -> dict:
    """Build, train and measure; returns the figures printed by :func:`main`."""
    import torch

    from mllm.bench.data import write_length_mix
    from mllm.bench.ours import train_ours
    from mllm.config import load_recipe
    from mllm.training.run import set_up_stage

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    models = build_models(workdir / "models", shape)
    mix = write_length_mix(
        workdir / "data", num_samples=settings.samples, image_size=shape.image_size
    )
    recipe = load_recipe(write_recipe(workdir, models, mix, settings))
    # One set-up to count the model's weights and the data's lengths; train_ours builds its own.
    setup = set_up_stage(recipe, "instruct", feature_cache=False)
    model = setup.built.model
    params = {
        name: sum(p.numel() for p in model.component(name).parameters())
        for name in ("vision", "projector", "llm")
    }
    per_sample = flops_per_sample(model, setup.dataset.lengths, setup.dataset.has_image)
    attn = model.llm.config._attn_implementation
    del setup, model
    build_s = time.perf_counter() - started
    result = train_ours(recipe, "instruct", "gpu throughput", warmup=settings.warmup)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    peak = settings.peak_tflops or (peak_tflops(device) if cuda else None)
    model_tflops = per_sample * result.samples_per_s / 1e12
    figures = {
        "device": device,
        "parameters": params,
        "parameters_total": sum(params.values()),
        "image_tokens": shape.image_tokens,
        "attention": attn,
        "precision": settings.precision,
        "compile": settings.compile,
        "measured_steps": len(result.measured),
        "tokens_per_s": result.tokens_per_s,
        "samples_per_s": result.samples_per_s,
        "padding_share": result.padding_share,
        "step_s": result.step_s,
        "model_tflops_per_s": model_tflops,
        "peak_bf16_tflops": peak,
        "mfu": model_tflops / peak if peak else None,
        # On CUDA the whole process's peak (weights, optimizer state, activations); on CPU the
        # resident memory the steps added.
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else result.peak_mib,
        "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
        "peak_memory_kind": "CUDA allocated, whole run" if cuda else "RSS added by the steps",
        "first_losses": [round(x, 4) for x in result.losses[:3]],
        "setup_s": build_s,
        "total_s": time.perf_counter() - started,
    }
    return figures


def report(figures: dict) -> str:
    """The figures as the few lines a person reads after the run."""
    params = figures["parameters"]
    mfu = figures["mfu"]
    lines = [
        f"device: {figures['device']}; attention {figures['attention']}, "
        f"{figures['precision']}, compile {figures['compile']}",
        f"model: {figures['parameters_total'] / 1e6:,.1f}M parameters (tower "
        f"{params['vision'] / 1e6:,.1f}M, projector {params['projector'] / 1e6:,.1f}M, LLM "
        f"{params['llm'] / 1e6:,.1f}M), {figures['image_tokens']} image tokens, packed",
        f"throughput: {figures['tokens_per_s']:,.0f} tokens/s, "
        f"{figures['samples_per_s']:.1f} samples/s, {figures['step_s']:.3f} s/step over "
        f"{figures['measured_steps']} steps, padding {100 * figures['padding_share']:.1f}%",
        f"MFU: {100 * mfu:.1f}% ({figures['model_tflops_per_s']:.1f} model TFLOPS / "
        f"{figures['peak_bf16_tflops']:.0f} peak bf16)"
        if mfu is not None
        else f"MFU: n/a ({figures['model_tflops_per_s']:.3f} model TFLOPS; no bf16 peak known "
        f"for {figures['device']})",
        f"peak memory: {figures['peak_memory_mib']:,.0f} MiB ({figures['peak_memory_kind']})"
        + (
            f", {figures['peak_reserved_mib']:,.0f} MiB reserved"
            if figures["peak_reserved_mib"]
            else ""
        ),
        f"first losses {figures['first_losses']}; set-up {figures['setup_s']:.0f} s, "
        f"{figures['total_s']:.0f} s in all",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mllm.bench.gpu_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/gpu_throughput"))
    parser.add_argument(
        "--dry-run", action="store_true", help="shrunk model, one step, CPU allowed"
    )
    parser.add_argument("--compile", action="store_true", help="stages.S.compile: true")
    parser.add_argument("--steps", type=int, help="measured steps (default 30)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the card's dense bf16 peak for MFU, where its CUDA name is not in the table",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device; use --dry-run to check the wiring", file=sys.stderr)
        return 2
    shape, settings = (SHRUNK, DRY_RUN) if args.dry_run else (FULL, RunSettings())
    overrides = {"compile": args.compile, "peak_tflops": args.peak_tflops}
    if args.steps:
        overrides["steps"] = args.steps
    settings = RunSettings(**{**asdict(settings), **overrides})
    figures = run(args.workdir, shape, settings)
    print(report(figures), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
