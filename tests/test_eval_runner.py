"""``mllm eval --benchmark``: two processes write the answer file of one, an interrupted run
resumes to the same file, the JSON report lands beside the answers, and an unknown benchmark
is a usage error.

The benchmark is a test-only one over a dozen held-out questions of ``trained_shapes``,
registered by a fixture here and by the entry script the launched processes run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import pytest
from training_utils import REPO

from mllm.cli import main as cli
from mllm.eval.benchmarks import (
    BENCHMARKS,
    Benchmark,
    BenchmarkDataError,
    BenchmarkQuestion,
    BenchmarkReport,
)
from mllm.eval.scoring import is_correct

TEST_BENCHMARK = "test-held-out-shapes"
NUM_QUESTIONS = 12
TESTS = Path(__file__).resolve().parent


class HeldOutShapes(Benchmark):
    """``ROOT/questions.jsonl``: ``{question_id, image, text, answer, category}`` a line."""

    name = TEST_BENCHMARK
    max_new_tokens = 8

    def _records(self) -> list[dict]:
        return [
            json.loads(line) for line in (self.root / "questions.jsonl").read_text().splitlines()
        ]

    def questions(self) -> list[BenchmarkQuestion]:
        return [
            BenchmarkQuestion(r["question_id"], r["text"], self.root / r["image"], r["category"])
            for r in self._records()
        ]

    def score(self, answers: Mapping[str | int, str]) -> BenchmarkReport:
        records = self._records()
        if set(answers) != {r["question_id"] for r in records}:
            raise BenchmarkDataError("answers do not match the questions")
        hits: dict[str, list[bool]] = defaultdict(list)
        for record in records:
            hits[record["category"]].append(
                is_correct(answers[record["question_id"]], record["answer"])
            )
        everything = [hit for values in hits.values() for hit in values]
        return BenchmarkReport(
            TEST_BENCHMARK,
            {"accuracy": sum(everything) / len(everything)},
            {name: {"accuracy": sum(v) / len(v)} for name, v in sorted(hits.items())},
            len(everything),
        )


#: What a launched process runs: register the test benchmark, then ``mllm``.
ENTRY = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_eval_runner import TEST_BENCHMARK, HeldOutShapes
from mllm.eval.benchmarks import BENCHMARKS
BENCHMARKS.register(TEST_BENCHMARK)(HeldOutShapes)
from mllm.cli import main
sys.exit(main())
"""


@pytest.fixture(scope="module")
def held_out_benchmark():
    """The test benchmark, registered for this module's tests only."""
    BENCHMARKS.register(TEST_BENCHMARK)(HeldOutShapes)
    yield TEST_BENCHMARK
    BENCHMARKS._entries.pop(TEST_BENCHMARK)  # the registry has no public removal


@pytest.fixture(scope="module")
def data_root(trained_shapes, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("held_out_benchmark")
    lines = [
        json.dumps(
            {
                "question_id": f"shape-{i}",
                "image": str(q.image),
                "text": q.text,
                "answer": q.answer,
                "category": "count" if "many" in q.text else "color",
            }
        )
        for i, q in enumerate(trained_shapes.held_out[:NUM_QUESTIONS])
    ]
    (root / "questions.jsonl").write_text("".join(line + "\n" for line in lines))
    return root


def _eval_args(trained_shapes, data_root: Path, output: Path) -> list[str]:
    return [
        "eval",
        "--model",
        str(trained_shapes.checkpoint),
        "--benchmark",
        TEST_BENCHMARK,
        "--data-root",
        str(data_root),
        "--output",
        str(output),
        "--batch-size",
        "4",
    ]


@pytest.fixture(scope="module")
def one_process(trained_shapes, data_root, held_out_benchmark, tmp_path_factory) -> Path:
    """The answer file of an uninterrupted run in this process (one thread)."""
    import torch

    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("one_process") / "answers.jsonl"
    assert cli(_eval_args(trained_shapes, data_root, output)) == 0
    return output


def test_one_process_writes_llava_answers_and_a_report(one_process, trained_shapes):
    answers = [json.loads(line) for line in one_process.read_text().splitlines()]
    held_out = trained_shapes.held_out[:NUM_QUESTIONS]
    assert [a["question_id"] for a in answers] == [f"shape-{i}" for i in range(NUM_QUESTIONS)]
    assert [a["text"] for a in answers] == [q.answer for q in held_out]
    assert [a["prompt"] for a in answers] == [q.text for q in held_out]
    assert {a["model_id"] for a in answers} == {"tiny"}
    report = json.loads((one_process.parent / "answers.report.json").read_text())
    assert report["benchmark"] == TEST_BENCHMARK
    assert report["metrics"] == {"accuracy": 1.0}
    assert report["count"] == NUM_QUESTIONS
    assert report["max_new_tokens"] == HeldOutShapes.max_new_tokens
    assert report["answer_file"] == str(one_process)
    assert list(one_process.parent.glob("*.partial")) == []


@pytest.mark.distributed
def test_two_processes_write_the_answer_file_of_one(
    one_process, trained_shapes, data_root, tmp_path
):
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    output = tmp_path / "answers.jsonl"
    with socket.socket() as sock:  # torchrun's port 0 is not "any free port" for env:// ranks
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [
            *launch,
            f"--master_port={port}",
            str(entry),
            *_eval_args(trained_shapes, data_root, output),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert output.read_bytes() == one_process.read_bytes()
    assert f"{TEST_BENCHMARK} ({NUM_QUESTIONS} questions): accuracy 1.0000" in done.stdout
    assert done.stdout.count("questions): accuracy") == 1  # rank 0 alone scores
    assert (tmp_path / "answers.report.json").is_file()
    assert list(tmp_path.glob("*.partial")) == []


def test_an_interrupted_eval_resumes_to_the_same_answers(
    one_process, trained_shapes, data_root, tmp_path, caplog
):
    output = tmp_path / "answers.jsonl"
    args = _eval_args(trained_shapes, data_root, output)
    assert cli([*args, "--max-questions", "4"]) == 0  # one batch, then "killed"
    partial = tmp_path / "answers.jsonl.rank0.partial"
    assert not output.exists()
    assert len(partial.read_text().splitlines()) == 4
    with partial.open("a") as file:  # a kill in the middle of a line
        file.write('{"question_id": "shape-4", "pro')

    caplog.set_level(logging.INFO, logger="mllm.eval.run")
    assert cli(args) == 0
    assert f"4 of {NUM_QUESTIONS} questions answered by an earlier run" in caplog.text
    assert output.read_bytes() == one_process.read_bytes()
    assert not partial.exists()

    caplog.clear()
    assert cli(args) == 0  # finished: nothing left to answer, the same file again
    assert f"{NUM_QUESTIONS} of {NUM_QUESTIONS} questions answered" in caplog.text
    assert output.read_bytes() == one_process.read_bytes()


def test_answers_from_another_model_are_not_resumed(
    one_process, trained_shapes, data_root, tmp_path, capsys
):
    output = tmp_path / "answers.jsonl"
    other = one_process.read_text().replace('"model_id": "tiny"', '"model_id": "other"')
    output.write_text(other)
    args = _eval_args(trained_shapes, data_root, output)
    assert cli(args) == 2
    assert "pass --restart" in capsys.readouterr().err
    assert cli([*args, "--restart"]) == 0
    assert output.read_bytes() == one_process.read_bytes()


def test_an_unknown_benchmark_is_a_usage_error_listing_the_known_ones(
    held_out_benchmark, tmp_path, capsys
):
    args = ["eval", "--model", "/no/such/model", "--benchmark", "no-such-benchmark"]
    args += ["--data-root", str(tmp_path), "--output", str(tmp_path / "answers.jsonl")]
    assert cli(args) == 2  # before the model loads: its path does not exist either
    err = capsys.readouterr().err
    assert err.startswith("mllm eval: unknown benchmark 'no-such-benchmark'; choose one of: ")
    assert TEST_BENCHMARK in err
    assert err.count("\n") == 1
