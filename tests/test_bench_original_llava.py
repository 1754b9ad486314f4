"""The original-LLaVA side of ``scripts/bench.py``: the driver's pure parts (config conversion
for transformers 4.36, ``train()``'s arguments, the sample order), the projector export and
the tables; end to end only where ``MLLM_LLAVA_PYTHON`` names a side venv's python
(``scripts/make_llava_side_venv.sh``)."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch

from mllm.bench.measure import TrainRun
from mllm.bench.original_llava import NAME, llava_projector_state
from mllm.bench.report import breakdown_table, goal_table, training_table
from mllm.models.projectors.mlp import MLPProjector, MLPProjectorConfig
from mllm.training.timing import StepRecord

ROOT = Path(__file__).resolve().parent.parent


def _driver():
    spec = importlib.util.spec_from_file_location(
        "llava_train_driver", ROOT / "scripts" / "llava_train_driver.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


driver = _driver()


def test_compat_config_gives_transformers_4_36_its_rope_and_dtype_keys():
    config = {
        "model_type": "llama",
        "dtype": "float32",
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "hidden_size": 128,
    }
    out = driver.compat_config(config)
    assert out == {
        "model_type": "llama",
        "torch_dtype": "float32",
        "rope_theta": 500000.0,
        "rope_scaling": None,
        "hidden_size": 128,
    }
    scaled = {"rope_parameters": {"rope_theta": 1e4, "rope_type": "linear", "factor": 2.0}}
    assert driver.compat_config(scaled)["rope_scaling"] == {"type": "linear", "factor": 2.0}
    assert "rope_parameters" in config  # the input is left alone


def test_compat_tokenizer_config_keeps_4_36_keys_and_reads_legacy_from_tokenizer_json():
    config = {
        "backend": "tokenizers",
        "extra_special_tokens": ["<s>", "</s>"],
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 1024,
        "tokenizer_class": "LlamaTokenizer",
    }
    first = {"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}}
    out = driver.compat_tokenizer_config(config, first)
    assert out == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 1024,
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
    }
    always = {"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "always"}}
    assert driver.compat_tokenizer_config(config, always)["legacy"] is True
    assert driver.compat_tokenizer_config({**config, "legacy": True}, first)["legacy"] is True


def test_compat_weight_names_prefix_a_clip_tower_saved_by_transformers_5():
    names = ["embeddings.patch_embedding.weight", "post_layernorm.bias"]
    assert driver.compat_weight_names(names, "clip_vision_model") == {
        name: f"vision_model.{name}" for name in names
    }
    assert driver.compat_weight_names(["vision_model.x"], "clip_vision_model") == {}
    assert driver.compat_weight_names(["model.embed_tokens.weight"], "llama") == {}


SPEC = {
    "stage": "align",
    "version": "plain",
    "image_folder": "IMAGES",
    "projector": "START/mm_projector.bin",
    "max_steps": 10,
    "batch_size": 16,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "warmup_steps": 0,
    "lr_scheduler": "cosine",
    "max_grad_norm": 1.0,
    "max_length": 1024,
    "workers": 0,
    "seed": 0,
}


def _flags(argv: list[str]) -> dict[str, str]:
    assert len(argv) % 2 == 0 and all(a.startswith("--") for a in argv[::2])
    return dict(zip(argv[::2], argv[1::2], strict=True))


def test_llava_argv_is_pretrain_sh_or_finetune_sh_adapted():
    paths = (Path("LLM"), Path("TOWER"), Path("DATA.json"), Path("OUT"))
    align = _flags(driver.llava_argv(SPEC, *paths))
    assert align["--version"] == "plain" and align["--tune_mm_mlp_adapter"] == "True"
    expected = {
        "--model_name_or_path": "LLM",
        "--vision_tower": "TOWER",
        "--data_path": "DATA.json",
        "--pretrain_mm_mlp_adapter": "START/mm_projector.bin",
        "--mm_projector_type": "mlp2x_gelu",
        "--mm_vision_select_layer": "-2",
        "--mm_use_im_start_end": "False",
        "--mm_use_im_patch_token": "False",
        "--image_aspect_ratio": "pad",
        "--bf16": "False",
        "--max_steps": "10",
        "--per_device_train_batch_size": "16",
        "--learning_rate": "0.001",
        "--lr_scheduler_type": "cosine",
        "--max_grad_norm": "1.0",
        "--save_strategy": "no",
        "--report_to": "none",
        "--lazy_preprocess": "True",
        "--dataloader_num_workers": "0",
    }
    assert {key: align[key] for key in expected} == expected
    instruct = _flags(driver.llava_argv({**SPEC, "stage": "instruct", "version": "v1"}, *paths))
    assert instruct["--version"] == "v1" and "--tune_mm_mlp_adapter" not in instruct
    with pytest.raises(ValueError, match="vicuna_v1"):
        driver.llava_argv({**SPEC, "version": "vicuna_v1"}, *paths)


def test_records_are_written_so_that_the_sampler_reads_our_order():
    records = [{"id": f"r{i}"} for i in range(10)]
    order = [7, 2, 9, 0, 5, 3]  # what our sampler draws, in order
    drawn = driver.sampler_order(len(order), batch_size=2, seed=0, workers=0)
    assert drawn == driver.sampler_order(len(order), batch_size=2, seed=0, workers=0)
    written = driver.reordered_records(records, order, drawn)
    assert [written[position]["id"] for position in drawn] == [f"r{i}" for i in order]
    with pytest.raises(ValueError, match="permutation"):
        driver.reordered_records(records, order, [0, 0, 1, 2, 3, 4])


def test_projector_is_exported_under_llavas_names():
    projector = MLPProjector(MLPProjectorConfig(name="mlp", depth=2), 8, 16, num_patches=5)
    state = llava_projector_state(projector)
    assert sorted(state) == [
        "model.mm_projector.0.bias",
        "model.mm_projector.0.weight",
        "model.mm_projector.2.bias",
        "model.mm_projector.2.weight",
    ]
    # LLaVA's mlp2x_gelu, loaded as initialize_vision_modules loads mm_projector.bin
    llava = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16))
    llava.load_state_dict({k.split("mm_projector.")[1]: v for k, v in state.items()})
    features = torch.randn(2, 5, 8)
    torch.testing.assert_close(llava(features), projector(features), rtol=0, atol=0)


def _run(name: str, samples_per_s: float, losses: list[float], sections: bool) -> TrainRun:
    steps = [StepRecord(float(i) / samples_per_s * 16, 1000, 1100, 16) for i in range(3)]
    breakdown = dict.fromkeys(("data", "vision", "llm_forward", "backward", "optimizer"), 0.01)
    return TrainRun(name, steps, breakdown if sections else {}, 50.0, losses)


def test_tables_add_the_original_llava_side_only_when_it_ran():
    runs = {
        "baseline": [_run("baseline", 10.0, [7.0, 6.9], False)],
        NAME: [_run(NAME, 8.0, [7.003, 6.9], False)],
        "ours packed": [_run("ours packed", 20.0, [7.0, 6.9], True)],
    }
    goal = goal_table({"mix / align": runs})
    header, _, row = goal.splitlines()
    assert header.split()[-7:] == ["LLaVA", "samples/s", "vs", "LLaVA", "LLaVA", "loss", "diff"]
    assert re.search(r"2\.00x .* 8\.0 +2\.50x +3\.0e-03$", row)
    assert NAME not in goal  # a column, not a row
    assert NAME in training_table(runs)
    assert NAME not in breakdown_table(runs)
    without = {name: side for name, side in runs.items() if name != NAME}
    assert "LLaVA" not in goal_table({"mix / align": without})


@pytest.mark.skipif(
    not os.environ.get("MLLM_LLAVA_PYTHON"),
    reason="set MLLM_LLAVA_PYTHON to a side venv's python (scripts/make_llava_side_venv.sh)",
)
def test_bench_runs_the_original_llava_code_end_to_end(tmp_path, capsys):
    from mllm.bench.run import BenchOptions, run_bench

    options = BenchOptions(
        workdir=tmp_path,
        data=("captions",),
        stages=("align",),
        variants=("padded",),
        rounds=1,
        steps=1,
        warmup=1,
        batch_size=4,
        samples=16,
        gen_prompts=0,
        llava_python=Path(os.environ["MLLM_LLAVA_PYTHON"]),
    )
    assert run_bench(options) == 0
    out = capsys.readouterr().out
    assert f"round 1 {NAME}:" in out
    row = next(line for line in out.splitlines() if line.startswith("captions / align"))
    # LLaVA's first losses: the same weights and samples, but its piecewise tokenization
    # writes a dummy-prefix piece after the image (docs/benchmarks.md), so not to 1e-5.
    llava_diff = float(row.split()[-1])
    assert llava_diff < 2e-2
