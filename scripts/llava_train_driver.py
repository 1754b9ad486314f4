"""The original LLaVA code as a benchmark side: trains through ``llava.train.train.train()``.

Run by the side venv's python (``scripts/make_llava_side_venv.sh``: ``llava-torch`` 1.2.2.post1
on transformers 4.36); never imports mllm. ``mllm bench --llava-python PY`` writes a spec
(``mllm.bench.original_llava``) and runs this once per round::

    /tmp/llava-venv/bin/python scripts/llava_train_driver.py SPEC.json

The spec names the start weights (the LLM folder with mllm's added embedding rows, the CLIP
tower folder, the projector as ``mm_projector.bin``), the bench's records and image folder,
the order in which mllm's sampler draws them, and the optimiser settings. The driver writes
``spec["result"]``: the end time of every optimizer step, every step's loss, and the peak RSS
from ``on_train_begin``. What is adapted, all inside this process:

- **Folders.** Folders written by transformers 5 are read by 4.36 through a copy
  (:func:`compat_copy`): ``dtype`` and ``rope_parameters`` become 4.36's ``torch_dtype``,
  ``rope_theta`` and ``rope_scaling``; a CLIP tower's weights get back their ``vision_model.``
  prefix (without it 4.36 initialises the tower at random, with only a warning); the tokenizer
  config keeps 4.36's keys, with ``legacy`` read from ``tokenizer.json`` (Metaspace
  ``prepend_scheme: first`` is ``legacy: False``, Vicuna-v1.5's setting).
- **Sample order.** LLaVA's trainer draws with ``RandomSampler`` (no seed of its own). A
  callback seeds torch at ``on_epoch_begin``, which fixes that permutation; the driver
  computes it beforehand (:func:`sampler_order`) and writes the records so that the sampler
  reads them in mllm's order. Every side then sees the same batches.
- **Precision.** Under ``--bf16 False`` ``train()`` casts the frozen tower to float16 (it
  assumes mixed precision); with ``"tower_fp32": true`` (the bench's choice, as every other
  side computes in float32) the callback puts it back in float32 with the folder's weights at
  ``on_train_begin``, before any step.
- **Timing.** ``train()`` builds its trainer itself and takes no callbacks, so the callback
  (``_Probe``: step ends, losses, peak RSS, the seeding and the tower above) is appended to
  ``transformers.trainer.DEFAULT_CALLBACKS`` in this process only. It ends ``train()`` at
  ``on_train_end`` (:class:`TrainingDone`), before the final save.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

#: What trains in each bench stage: the projector alone (``pretrain.sh``), or the projector and
#: the LLM (``finetune.sh``).
STAGES = ("align", "instruct")
#: LLaVA conversation versions the bench's templates map to (``plain`` and ``vicuna_v1``).
VERSIONS = ("plain", "v1")
#: Tokenizer-config keys transformers 4.36's slow ``LlamaTokenizer`` understands.
TOKENIZER_KEYS = (
    "add_bos_token",
    "add_eos_token",
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "clean_up_tokenization_spaces",
    "legacy",
    "model_max_length",
    "sp_model_kwargs",
    "tokenizer_class",
)


def compat_config(config: dict) -> dict:
    """A model ``config.json`` of transformers 5 as transformers 4.36 reads it.

    5 writes ``dtype`` (4.36: ``torch_dtype``) and ``rope_parameters`` (4.36: ``rope_theta``
    and ``rope_scaling``, ``None`` for the default rope); 4.36 would ignore both silently and
    fall back to its defaults.
    """
    out = dict(config)
    if "dtype" in out:
        out.setdefault("torch_dtype", out.pop("dtype"))
    rope = out.pop("rope_parameters", None)
    if rope is not None:
        rope = dict(rope)
        out["rope_theta"] = rope.pop("rope_theta", 10000.0)
        kind = rope.pop("rope_type", "default")
        out["rope_scaling"] = None if kind == "default" else {"type": kind, **rope}
    return out


def compat_tokenizer_config(config: dict, tokenizer_json: dict | None) -> dict:
    """A ``tokenizer_config.json`` of transformers 5 for 4.36's slow ``LlamaTokenizer``.

    Only the keys 4.36 knows are kept; ``legacy`` follows the fast tokenizer's Metaspace
    pre-tokenizer when the config does not say (4.36 would default to ``legacy: True``, which
    splits text after special tokens differently from the tokenizer mllm uses).
    """
    out = {key: config[key] for key in TOKENIZER_KEYS if key in config}
    out.setdefault("add_bos_token", True)
    out.setdefault("add_eos_token", False)
    if "legacy" not in out and tokenizer_json is not None:
        pre = tokenizer_json.get("pre_tokenizer") or {}
        if pre.get("type") == "Metaspace":
            out["legacy"] = pre.get("prepend_scheme", "always") != "first"
    return out


def compat_weight_names(names: list[str], model_type: str | None) -> dict[str, str]:
    """Renames that make a transformers-5 checkpoint load in 4.36 (empty when none is needed).

    5 saves a ``CLIPVisionModel`` without the ``vision_model.`` prefix of its module names;
    4.36 would find no weight and initialise the tower at random (with only a warning).
    """
    if model_type == "clip_vision_model" and not any(n.startswith("vision_model.") for n in names):
        return {name: f"vision_model.{name}" for name in names}
    return {}


def compat_copy(source: Path, target: Path) -> Path:
    """Copy a model folder with 4.36-readable ``config.json``, weight names and
    ``tokenizer_config.json``."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    config = target / "config.json"
    if config.is_file():
        loaded = json.loads(config.read_text())
        config.write_text(json.dumps(compat_config(loaded), indent=2))
        weights = target / "model.safetensors"
        if weights.is_file():
            from safetensors.torch import load_file, save_file

            state = load_file(weights)
            renames = compat_weight_names(list(state), loaded.get("model_type"))
            if renames:
                state = {renames[name]: value for name, value in state.items()}
                save_file(state, weights, metadata={"format": "pt"})
    tokenizer = target / "tokenizer_config.json"
    if tokenizer.is_file():
        fast = target / "tokenizer.json"
        fast_json = json.loads(fast.read_text()) if fast.is_file() else None
        converted = compat_tokenizer_config(json.loads(tokenizer.read_text()), fast_json)
        tokenizer.write_text(json.dumps(converted, indent=2))
        fast.unlink(missing_ok=True)  # LLaVA loads the slow tokenizer (use_fast=False)
    return target


def llava_argv(spec: dict, llm: Path, tower: Path, data: Path, output_dir: Path) -> list[str]:
    """``train()``'s arguments: LLaVA-1.5's ``pretrain.sh`` (align) or ``finetune.sh``
    (instruct) with the bench's sizes, fp32, no saving and no reporting, both stages starting
    from the spec's projector (``--pretrain_mm_mlp_adapter``) so every side starts alike.

    The conversation version follows the cell's data (``plain`` for the captions, ``v1`` for
    the mix), not the stage: the bench trains both stages on both shapes, and the prompt and
    labels must be the ones the other sides train on.
    """
    stage, version = spec["stage"], spec["version"]
    if stage not in STAGES or version not in VERSIONS:
        raise ValueError(
            f"spec: stage {stage!r} / version {version!r}: expected {STAGES} / {VERSIONS}"
        )
    # fmt: off
    argv = [
        "--model_name_or_path", str(llm),
        "--version", version,
        "--data_path", str(data),
        "--image_folder", str(spec["image_folder"]),
        "--vision_tower", str(tower),
        "--pretrain_mm_mlp_adapter", str(spec["projector"]),
        "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2",
        "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", "pad",
        "--group_by_modality_length", "False",
        "--bf16", "False",
        "--fp16", "False",
        "--output_dir", str(output_dir),
        "--max_steps", str(spec["max_steps"]),
        "--per_device_train_batch_size", str(spec["batch_size"]),
        "--gradient_accumulation_steps", "1",
        "--save_strategy", "no",
        "--learning_rate", str(spec["lr"]),
        "--weight_decay", str(spec["weight_decay"]),
        "--adam_beta1", str(spec["betas"][0]),
        "--adam_beta2", str(spec["betas"][1]),
        "--adam_epsilon", str(spec["eps"]),
        "--warmup_steps", str(spec["warmup_steps"]),
        "--lr_scheduler_type", spec["lr_scheduler"],
        "--max_grad_norm", str(spec["max_grad_norm"]),
        "--logging_steps", "1",
        "--model_max_length", str(spec["max_length"]),
        "--gradient_checkpointing", "False",
        "--dataloader_num_workers", str(spec["workers"]),
        "--lazy_preprocess", "True",
        "--report_to", "none",
        "--disable_tqdm", "True",
        "--seed", str(spec["seed"]),
        "--use_cpu", str(bool(spec.get("use_cpu", True))),
    ]
    # fmt: on
    if stage == "align":
        argv += ["--tune_mm_mlp_adapter", "True"]
    return argv


def sampler_order(count: int, batch_size: int, seed: int, workers: int) -> list[int]:
    """The indices ``RandomSampler`` yields when torch is seeded with ``seed`` just before
    the trainer's DataLoader starts (what :class:`_Probe` does at ``on_epoch_begin``)."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    torch.manual_seed(seed)
    indices = list(range(count))
    loader = DataLoader(
        indices, sampler=RandomSampler(indices), batch_size=batch_size, num_workers=workers
    )
    return [int(i) for batch in loader for i in batch]


def reordered_records(records: list[dict], order: list[int], drawn: list[int]) -> list[dict]:
    """The records to write so that reading position ``drawn[k]`` yields ``records[order[k]]``."""
    if sorted(drawn) != list(range(len(order))):
        raise ValueError("the sampler's draw is not a permutation of the records")
    out: list[dict | None] = [None] * len(order)
    for k, position in enumerate(drawn):
        out[position] = records[order[k]]
    return out  # type: ignore[return-value]


class TrainingDone(Exception):
    """Raised at ``on_train_end`` to leave ``train()`` before its final save: the bench needs
    no weights, and the projector-only save imports DeepSpeed (``maybe_zero_3``), which the
    side venv does not have."""


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _make_probe(seed: int, tower_fp32: bool):
    """The callback class (built here so that importing this file needs no transformers)."""
    import torch
    from transformers import TrainerCallback

    class _Probe(TrainerCallback):
        """Step ends, losses and peak RSS; seeds the sampler; optionally a float32 tower."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.losses: list[float] = []
            self.tower_dtype = ""
            self.peak_mib = 0.0
            self._stop = threading.Event()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            tower = model.get_vision_tower()
            self.tower_dtype = str(tower.dtype).removeprefix("torch.")
            if tower_fp32:  # back to the folder's float32 weights, not float16's rounding
                from safetensors.torch import load_file

                weights = Path(tower.vision_tower_name) / "model.safetensors"
                tower.vision_tower.to(torch.float32).load_state_dict(load_file(weights))
            self._start = self._highest = _rss_mib()
            threading.Thread(target=self._sample, daemon=True).start()

        def _sample(self) -> None:
            while not self._stop.wait(0.01):
                self._highest = max(self._highest, _rss_mib())

        def on_epoch_begin(self, args, state, control, **kwargs):
            torch.manual_seed(seed)

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_end(self, args, state, control, **kwargs):
            self._stop.set()
            self.peak_mib = max(self._highest, _rss_mib()) - self._start
            raise TrainingDone

    return _Probe()


def main(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    import torch

    torch.set_num_threads(int(spec.get("threads", 1)))
    work = Path(spec["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    llm = compat_copy(Path(spec["llm"]), work / "llm")
    tower = compat_copy(Path(spec["vision_tower"]), work / "tower")
    records = json.loads(Path(spec["records"]).read_text())
    order = spec["order"]
    drawn = sampler_order(len(order), spec["batch_size"], spec["seed"], spec["workers"])
    data = work / "records.json"
    data.write_text(json.dumps(reordered_records(records, order, drawn)))
    sys.argv = ["train.py", *llava_argv(spec, llm, tower, data, work / "out")]

    import transformers.trainer
    from llava.train import train as llava_train

    probe = _make_probe(spec["seed"], bool(spec.get("tower_fp32", True)))
    transformers.trainer.DEFAULT_CALLBACKS.append(probe)  # this process only: see the docstring
    with contextlib.suppress(TrainingDone):
        llava_train.train(attn_implementation=spec.get("attn_implementation", "sdpa"))
    if len(probe.ends) != spec["max_steps"]:
        raise RuntimeError(f"train() ran {len(probe.ends)} steps, not {spec['max_steps']}")
    result = {
        "step_ends": probe.ends,
        "losses": probe.losses,
        "peak_mib": probe.peak_mib,
        "tower_dtype_from_train": probe.tower_dtype,
        "tower_fp32": bool(spec.get("tower_fp32", True)),
        "versions": {
            "transformers": transformers.__version__,
            "llava": _version("llava-torch"),
        },
    }
    Path(spec["result"]).write_text(json.dumps(result, indent=1) + "\n")


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
