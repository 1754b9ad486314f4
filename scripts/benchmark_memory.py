"""Peak memory of training one small Llama with full fine-tuning, LoRA and QLoRA (CPU or GPU).

Each mode runs in a fresh process (peak RSS on CPU, peak allocated CUDA memory on a GPU), after
building a random Llama from a config (no download) and running a few AdamW steps.

CPU:  python scripts/benchmark_memory.py                      # ~60M-parameter Llama, ~2 min
      python scripts/benchmark_memory.py --hidden 256 --layers 4 --steps 2   # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

MODES = ("full", "lora", "qlora")


def _peak_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _run_mode(args: argparse.Namespace) -> dict:
    import torch

    from mllm.config.schema import LLMConfig, LoraConfig
    from mllm.models.llm import load_llm
    from mllm.models.lora import add_adapters

    device = "cuda" if torch.cuda.is_available() else "cpu"
    baseline = _peak_mib(device)
    lora = LoraConfig(r=args.rank, alpha=2 * args.rank, dropout=0.0)
    lora = lora.model_copy(
        update={
            "target_modules": [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
        }
    )
    config = LLMConfig(path=args.model, family="llama")
    llm = load_llm(config, torch.float32, "sdpa", lora if args.mode == "qlora" else None)
    holder = SimpleNamespace(llm=llm)
    if args.mode != "full":
        add_adapters(holder, lora, args.mode)
        for name, param in holder.llm.named_parameters():
            param.requires_grad_("lora_" in name)
    model = holder.llm.to(device) if args.mode != "qlora" else holder.llm
    loaded = _peak_mib(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, 1000, (args.batch, args.seq), device=device)
    model.train()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {
        "mode": args.mode,
        "trainable": sum(p.numel() for p in params),
        "baseline_mib": baseline,
        "after_load_mib": loaded,
        "peak_mib": _peak_mib(device),
        "step_s": (time.perf_counter() - start) / args.steps,
        "device": device,
    }


def _make_model(folder: Path, hidden: int, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=8192,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.6875) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1),
        num_key_value_heads=max(hidden // 64, 1),
        max_position_embeddings=1024,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one child process
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps(_run_mode(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        _make_model(Path(tmp), args.hidden, args.layers)
        rows = []
        for mode in args.modes:
            child = [sys.executable, __file__, "--mode", mode, "--model", tmp]
            child += [f"--{k}={getattr(args, k)}" for k in ("batch", "seq", "steps", "rank")]
            result = subprocess.run(child, capture_output=True, text=True, check=False)
            if result.returncode:
                print(f"{mode}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, batch {args.batch}x{args.seq}, "
        f"{args.steps} AdamW steps, LoRA r {args.rank}, fp32 compute"
    )
    print(
        f"{'mode':<6} {'trainable':>12} {'load MiB':>10} {'peak MiB':>10} {'train MiB':>10} "
        f"{'s/step':>7}"
    )
    for row in rows:
        print(
            f"{row['mode']:<6} {row['trainable']:>12,} "
            f"{row['after_load_mib'] - row['baseline_mib']:>10.0f} "
            f"{row['peak_mib'] - row['baseline_mib']:>10.0f} "
            f"{row['peak_mib'] - row['after_load_mib']:>10.0f} {row['step_s']:>7.2f}"
        )


if __name__ == "__main__":
    main()
