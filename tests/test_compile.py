"""``stages.S.compile``: each block compiled on its own gives the losses of the eager model, with
LoRA, with activation checkpointing, on packed batches of changing shape, and under ZeRO-2 and
ZeRO-3 on two processes.

Inductor compiles C++ on CPU: the first step of a compiled model takes 30-60 s on 2 cores (a
warm ``/tmp/torchinductor_$USER`` cache cuts that), so each test compiles one configuration.
"""

from __future__ import annotations

import pytest
import torch
from training_utils import REPO, make_workspace, run_train, tiny_recipe, write_recipe

from mllm.config import validate_recipe
from mllm.data.stage_data import build_collator
from mllm.models.compile import compile_regions, is_compiled, repeated_blocks
from mllm.training.metrics import read_metrics
from mllm.training.run import set_up_stage
from mllm.training.stage import parameter_groups

STEPS = 3


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def _recipe(ws, tmp_path, **instruct):
    raw = tiny_recipe(
        ws, tmp_path, instruct={"init_from": None, "data": {"packing": True}, **instruct}
    )
    return validate_recipe(raw, "test")


def test_compile_regions_compiles_each_block_in_place(ws, tmp_path):
    recipe = _recipe(ws, tmp_path)
    setup = set_up_stage(recipe, "instruct", feature_cache=False)
    model = setup.built.model
    names = list(model.state_dict())
    regions = compile_regions(model)
    assert (regions.llm, regions.vision) == (2, 2)
    assert regions.block_types == ("LlamaDecoderLayer", "CLIPEncoderLayer")
    assert all(is_compiled(block) for block in repeated_blocks(model.llm))
    assert not is_compiled(model.llm) and not is_compiled(model.projector)
    assert list(model.state_dict()) == names  # checkpoints keep their keys (no _orig_mod.)


def test_compile_is_off_by_default_and_validated(ws, tmp_path):
    assert not _recipe(ws, tmp_path).stages["instruct"].compile
    with pytest.raises(ValueError, match="compile"):
        _recipe(ws, tmp_path, compile="sometimes")


def _losses(recipe, *, steps: int = STEPS) -> tuple[list[float], list[int]]:
    """Losses of ``steps`` AdamW steps of the instruct stage on packed batches of 2, 3, 4
    samples (rows and widths change every step), and the graphs dynamo compiled in each."""
    setup = set_up_stage(recipe, "instruct", feature_cache=False)
    stage = recipe.stages["instruct"]
    model = setup.built.model
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, stage.optim), lr=1e-2)
    collator = build_collator(stage.data, setup.built.tokenizer.pad_token_id)
    losses, graphs, start = [], [], 0
    for step in range(steps):
        size = 2 + step
        batch = collator([setup.dataset[i] for i in range(start, start + size)])
        start += size
        batch.pop("num_tokens", None)
        batch.pop("skipped", None)
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames)
    return losses, graphs


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"train": {"llm": "full"}}, id="full"),
        pytest.param(
            {
                "train": {"llm": "lora"},
                "lora": {"r": 4, "dropout": 0.0},  # inductor draws dropout from its own RNG
                "gradient_checkpointing": True,
            },
            id="lora+checkpointing",
        ),
    ],
)
def test_compiled_losses_equal_eager_on_packed_batches(ws, tmp_path, settings):
    torch._dynamo.reset()
    eager, no_graphs = _losses(_recipe(ws, tmp_path, **settings))
    compiled, graphs = _losses(_recipe(ws, tmp_path, compile=True, **settings))
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert eager[-1] < eager[0]  # it trains
    assert sum(no_graphs) == 0 and graphs[0] > 0  # the compiled run did compile
    # Dynamic shapes: later batches of other widths and row counts reuse the first graphs.
    assert graphs[1:] == [0] * (STEPS - 1)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_process_zero_with_compile_matches_eager(ws, tmp_path, zero):
    losses = {}
    for compiled in (False, True):
        settings = {
            "zero_config": str(REPO / "zero_configs" / f"{zero}.json"),
            "micro_batch_size": 1,
            "compile": compiled,
        }
        raw = tiny_recipe(
            ws,
            tmp_path / f"run_{compiled}",
            instruct={"init_from": None, "data": {"packing": True}, **settings},
        )
        path = write_recipe(tmp_path / f"recipe_{compiled}.yaml", raw)
        run_train([str(path), "--stage", "instruct"], nproc=2)
        rows = read_metrics(tmp_path / f"run_{compiled}/instruct/metrics.jsonl")
        losses[compiled] = [row["loss"] for row in rows]
    assert len(losses[True]) == 3
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=1e-5)


def _run(step_s: float, steps: int = 4):
    from mllm.bench.measure import TrainRun
    from mllm.training.timing import StepRecord

    records = [StepRecord(end=i * step_s, tokens=100, slots=100, samples=4) for i in range(steps)]
    return TrainRun(name="x", steps=records)


def test_compile_bench_says_when_compiling_does_not_pay():
    from mllm.bench.compiled import CompileRuns, compile_table, verdict

    # 10 steps in all; compiled steps 0.5 s faster, 30 s more wall time: compile = 35 s.
    pays = CompileRuns([_run(2.0)], [_run(1.5)], [20.0], [50.0])
    assert verdict(pays, 10) == (
        "pays after about 70 steps: compiled steps are 1.33x eager's speed (median of "
        "rounds), the first compile costs 35 s"
    )
    slower = CompileRuns([_run(1.0), _run(1.0)], [_run(1.1), _run(0.99)], [10, 10], [40, 12])
    assert verdict(slower, 10).startswith("does not pay: compiled steps are 0.96x")
    assert "leave compile off" in compile_table({"align": slower}, 10)
    noisy = CompileRuns([_run(1.0)] * 3, [_run(2.0), _run(0.8), _run(0.9)], [10] * 3, [9] * 3)
    assert verdict(noisy, 10).startswith("does not pay reliably: compiled steps are 1.11x")
