"""``mllm eval``: answer a LLaVA-format question file or a benchmark's questions with a model,
then score the answers.

Questions come from ``--questions`` (JSONL of ``{question_id, image, text[, category]}``,
images relative to ``--image-folder``; ``--answers`` scores exact match) or from
``--benchmark NAME --data-root DIR [--split S]`` (the benchmark's own files and official
metric). Answers are written in LLaVA's format ``{question_id, prompt, text, model_id}``,
the score is printed and written beside them (``answers.jsonl`` -> ``answers.report.json``).
The model is any folder ``mllm chat`` loads. Under ``torchrun --nproc_per_node N -m mllm eval``
(or ``deepspeed --module mllm eval``) each process answers every N-th question; a rerun with
the same ``--output`` continues an interrupted one. CPU-sized command::

    mllm eval --model runs/demo/shapes-mlp/instruct/final \\
        --questions runs/demo/data/test/questions.jsonl --image-folder runs/demo/data/images \\
        --output runs/demo/predictions.jsonl --answers runs/demo/data/test/answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mllm.commands.model_options import add_model_arguments, load_model_from_args
from mllm.errors import UsageError, exit_status
from mllm.eval.answer_files import AnswerFiles, report_path
from mllm.eval.benchmarks import BENCHMARKS, Benchmark, BenchmarkQuestion
from mllm.eval.run import (
    Shard,
    check_questions,
    format_score,
    questions_from_records,
    read_questions,
    run_questions,
)
from mllm.eval.scoring import score

#: ``--max-new-tokens`` for question files (a benchmark says its own).
QUESTION_FILE_MAX_NEW_TOKENS = 32


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mllm eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    files = parser.add_argument_group("a LLaVA question file")
    files.add_argument("--questions", type=Path, help="questions JSONL")
    files.add_argument("--image-folder", type=Path, help="the folder question images are in")
    files.add_argument("--answers", type=Path, help="gold answers JSONL; prints accuracy")
    bench = parser.add_argument_group("a benchmark")
    bench.add_argument("--benchmark", metavar="NAME", help="a registered benchmark's name")
    bench.add_argument("--data-root", type=Path, help="the benchmark's files")
    bench.add_argument("--split", help="the benchmark's split or subset (default: its own)")
    parser.add_argument(
        "--output",
        required=True,
        type=Path,
        help="answers JSONL to write (an existing one, and its partial files, are resumed)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="questions per batch, each rank")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help=f"answer budget (default: the benchmark's, or {QUESTION_FILE_MAX_NEW_TOKENS})",
    )
    parser.add_argument(
        "--blank-images", action="store_true", help="control: replace images by gray"
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="forget the answers already at --output (and its partial files); answer all again",
    )
    # Testing: stop after this many new answers per process, as an interrupted run would.
    parser.add_argument("--max-questions", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # deepspeed launcher
    return parser


@dataclass
class _Task:
    """What to ask and how to score it."""

    questions: list[BenchmarkQuestion]
    label: str
    max_new_tokens: int
    benchmark: Benchmark | None = None


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.questions is None) == (args.benchmark is None):
        parser.error("give --questions FILE or --benchmark NAME (one of them)")
    if args.benchmark is not None and args.data_root is None:
        parser.error("--benchmark needs --data-root (the folder with the benchmark's files)")
    if args.benchmark is not None:
        given = [
            f"--{n.replace('_', '-')}" for n in ("image_folder", "answers") if getattr(args, n)
        ]
        if given:
            parser.error(f"{' and '.join(given)} go with --questions; a benchmark has its own")
    elif args.data_root is not None or args.split is not None:
        parser.error("--data-root and --split go with --benchmark")
    for name in ("batch_size", "max_new_tokens", "max_questions"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _read_task(args: argparse.Namespace) -> _Task:
    """The questions, read and checked before the model loads.

    Raises:
        UnknownComponentError: no benchmark of that name (the message lists the known ones).
        UsageError: a question file or a benchmark's files that cannot be read.
        ImageLoadError: image files that do not exist.
    """
    try:
        if args.benchmark is not None:
            benchmark = BENCHMARKS.get(args.benchmark).target(args.data_root, args.split)
            questions = benchmark.questions()
            budget = benchmark.max_new_tokens
            label = args.benchmark if args.split is None else f"{args.benchmark}/{args.split}"
        else:
            benchmark = None
            questions = questions_from_records(read_questions(args.questions), args.image_folder)
            budget, label = QUESTION_FILE_MAX_NEW_TOKENS, args.questions.name
        check_questions(questions)
    except (ValueError, OSError) as exc:
        if _is_user_error(exc):
            raise
        raise UsageError(str(exc)) from exc
    if not questions:
        raise UsageError(f"{args.questions or args.data_root}: no questions")
    return _Task(questions, label, args.max_new_tokens or budget, benchmark)


def _is_user_error(exc: BaseException) -> bool:
    return exit_status(exc) is not None


def _join_processes(args: argparse.Namespace) -> Shard:
    """This process's shard, device and CPU threads under a launcher (none needed alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Shard()
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
        force=True,  # the cli configured logging without the rank
    )
    shard = Shard.from_launcher()
    from mllm.training.distributed import quiet_progress_bars

    quiet_progress_bars(shard.is_main)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "cuda":
        args.device = f"cuda:{local_rank}"
    if args.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(args.device))
    elif "OMP_NUM_THREADS" not in os.environ:
        # The processes on one machine share its cores; oversubscribing them costs far more.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", shard.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return shard


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)

    torch.manual_seed(0)
    task = _read_task(args)  # before the slow part
    shard = _join_processes(args)
    loaded = load_model_from_args(args)
    try:
        answers = run_questions(
            loaded,
            task.questions,
            AnswerFiles(args.output),
            shard=shard,
            batch_size=args.batch_size,
            max_new_tokens=task.max_new_tokens,
            blank_images=args.blank_images,
            restart=args.restart,
            max_questions=args.max_questions,
            label=task.label,
        )
    except ValueError as exc:
        if _is_user_error(exc):
            raise
        raise UsageError(str(exc)) from exc
    if answers is None:  # not rank 0, or stopped early (--max-questions)
        return 0
    report = {
        "benchmark": args.benchmark,
        "split": args.split,
        "questions": None if args.questions is None else str(args.questions),
        "model": args.model,
        "model_id": str(loaded.recipe.name),
        "answer_file": str(args.output),
        "blank_images": args.blank_images,
        "max_new_tokens": task.max_new_tokens,
    }
    try:
        if task.benchmark is not None:
            result = task.benchmark.score({a["question_id"]: a["text"] for a in answers})
            print("\n".join(result.lines()))
            report.update(result.to_dict())
        elif args.answers is not None:
            result = score(args.output, args.answers, args.questions)
            print(format_score(result, blank=args.blank_images))
            metrics = {"accuracy": result["accuracy"], "correct": result["correct"]}
            report.update(metrics=metrics, per_category=result["per_category"])
            report.update(count=result["count"])
        else:
            return 0
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    report_path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0
