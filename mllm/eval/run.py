"""Answering questions with a model as LLaVA's ``model_vqa`` loop does (image marker, greedy,
the model's template), sharded over processes and resumable; ``mllm eval``
(``mllm.commands.eval``) runs it on a question file or on a benchmark's questions.

Answers go to a per-process partial file beside the output as each batch finishes
(``answers.jsonl.rank0.partial``, ...; ``mllm.eval.answer_files``); at the end rank 0 writes
one merged file in the questions' order and removes the partial files. A rerun with the same
output skips the questions already answered in either.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mllm.data.images import ImageLoadError
from mllm.eval.answer_files import AnswerFiles, check_earlier
from mllm.eval.benchmarks.base import BenchmarkQuestion, QuestionId
from mllm.inference import GenerationRequest, LoadedModel, generate
from mllm.inference.inputs import image_question, read_image

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ questions
def read_questions(path: Path) -> list[dict]:
    """A LLaVA question file: JSONL of ``{question_id, text[, image, category]}``.

    Raises:
        ValueError: a line that is not JSON or lacks a key (naming file and line).
    """
    questions = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line_number}: not valid JSON: {exc}") from None
        for key in ("question_id", "text"):
            if key not in record:
                raise ValueError(f"{path}:{line_number}: missing {key!r}")
        questions.append(record)
    return questions


def questions_from_records(
    records: Sequence[dict], image_folder: Path | None
) -> list[BenchmarkQuestion]:
    """Question-file records as :class:`BenchmarkQuestion`, images joined to ``image_folder``.

    Raises:
        ValueError: a question has an image and there is no ``image_folder``.
    """
    questions = []
    for record in records:
        image = None
        if record.get("image"):
            if image_folder is None:
                raise ValueError(
                    f"question {record['question_id']} has an image; pass --image-folder"
                )
            image = image_folder / record["image"]
        questions.append(
            BenchmarkQuestion(record["question_id"], record["text"], image, record.get("category"))
        )
    return questions


def check_questions(questions: Sequence[BenchmarkQuestion]) -> None:
    """What would stop an evaluation half-way, checked before the model loads.

    Raises:
        ValueError: a question id that repeats (answers are keyed by it).
        ImageLoadError: image files that do not exist (the first few named).
    """
    seen: dict[QuestionId, int] = {}
    for position, question in enumerate(questions):
        if question.question_id in seen:
            raise ValueError(
                f"question_id {question.question_id!r} repeats (questions "
                f"{seen[question.question_id]} and {position}); answers are keyed by it"
            )
        seen[question.question_id] = position
    missing = [q for q in questions if q.image is not None and not Path(q.image).is_file()]
    if missing:
        shown = ", ".join(f"{q.image} (question {q.question_id!r})" for q in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ImageLoadError(f"{len(missing)} image file(s) do not exist: {shown}{more}")


# ------------------------------------------------------------------------------ answering
def answer_batch(
    loaded: LoadedModel,
    questions: Sequence[BenchmarkQuestion],
    *,
    max_new_tokens: int,
    blank_images: bool = False,
) -> list[dict]:
    """One batch of LLaVA's ``model_vqa``: the image marker (``image_question``) and the
    question, greedy, one left-padded batch (``mllm.inference.generate``).

    With ``blank_images`` every image is replaced by a uniform gray one of the same size:
    a control that shows how much of the accuracy comes from the image.

    Returns:
        One answer per question, in LLaVA's format ``{question_id, prompt, text, model_id}``
        (``prompt``: the question's text, without the image marker).
    """
    requests = []
    for question in questions:
        images: list[Image.Image] = []
        text = question.text
        if question.image is not None:
            image = read_image(question.image)
            if blank_images:
                image = Image.new("RGB", image.size, (128, 128, 128))
            images.append(image)
            text = image_question(loaded, text)
        requests.append(GenerationRequest([{"from": "human", "value": text}], images))
    answers = generate(loaded, requests, max_new_tokens=max_new_tokens)
    model_id = str(loaded.recipe.name)
    return [
        {"question_id": q.question_id, "prompt": q.text, "text": answer, "model_id": model_id}
        for q, answer in zip(questions, answers, strict=True)
    ]


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def answer_questions(
    loaded: LoadedModel,
    questions: list[dict],
    image_folder: Path | None,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    blank_images: bool = False,
) -> list[dict]:
    """Answer question-file records in one process, in memory (see :func:`answer_batch`)."""
    asked = questions_from_records(questions, image_folder)
    return [
        answer
        for batch in _batches(asked, batch_size)
        for answer in answer_batch(
            loaded, batch, max_new_tokens=max_new_tokens, blank_images=blank_images
        )
    ]


# ------------------------------------------------------------------------------ processes
@dataclass(frozen=True)
class Shard:
    """This process's share of the questions: those at positions ``i % world_size == rank``.

    With ``world_size`` above 1 the processes form a ``torch.distributed`` group (gloo: only
    the answers travel, on any device); one process needs none.
    """

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_launcher(cls) -> Shard:
        """The shard ``torchrun`` or ``deepspeed`` gives this process (``RANK``,
        ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``); joins their process group."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence) -> list:
        return list(items[self.rank :: self.world_size])

    def gather(self, records: list[dict]) -> list[dict] | None:
        """Every process's records on rank 0 (None elsewhere)."""
        if self.world_size == 1:
            return records
        parts: list | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(records, parts, dst=0)
        return [record for part in parts for record in part] if parts is not None else None

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


# ------------------------------------------------------------------------------ the run
def run_questions(
    loaded: LoadedModel,
    questions: Sequence[BenchmarkQuestion],
    files: AnswerFiles,
    *,
    shard: Shard = Shard(),
    batch_size: int = 16,
    max_new_tokens: int = 32,
    blank_images: bool = False,
    restart: bool = False,
    max_questions: int | None = None,
    label: str = "answering",
) -> list[dict] | None:
    """Answer this process's share of ``questions``, resuming from earlier runs' answers.

    Each batch's answers are appended to this process's partial file (flushed) as soon as they
    are generated; rank 0 then gathers every share and writes one merged file in question order.
    A progress bar with ETA (rank 0's share, on stderr) shows the way.

    Args:
        loaded: the model, on this process's device.
        questions: every question, in order (the same list on every process).
        files: where answers go (``files.output``: the merged file).
        shard: this process's share (every process calls this together).
        restart: forget answers written by earlier runs (rank 0 removes their files).
        max_questions: stop after this many new answers per process, without merging, as an
            interrupted run would (to test resuming).
        label: the progress bar's name.

    Returns:
        On rank 0, the answer to every question in question order; None on the other ranks,
        and on every rank when stopped by ``max_questions``.

    Raises:
        ValueError: a malformed earlier answer file, earlier answers from another model or to
            other prompts; anything generation raises (e.g. a prompt over the context).
    """
    model_id = str(loaded.recipe.name)
    if restart:
        if shard.is_main:
            files.remove_all()
        shard.barrier()
        earlier: dict[QuestionId, dict] = {}
    else:
        earlier = files.earlier_answers()
        check_earlier(earlier, questions, model_id)
    mine = shard.take(questions)
    todo = [q for q in mine if q.question_id not in earlier]
    if shard.is_main and earlier:
        done = sum(q.question_id in earlier for q in questions)
        logger.info(
            "%s: %d of %d questions answered by an earlier run; answering the rest",
            files.output,
            done,
            len(questions),
        )
    files.start_appending(shard.rank)
    new: dict[QuestionId, dict] = {}
    desc = label if shard.world_size == 1 else f"{label} (rank 0 of {shard.world_size})"
    progress = tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        disable=not shard.is_main,
        desc=desc,
        unit="question",
        dynamic_ncols=True,
    )
    with logging_redirect_tqdm(), progress:
        for batch in _batches(todo, batch_size):
            if max_questions is not None and len(new) >= max_questions:
                break
            records = answer_batch(
                loaded, batch, max_new_tokens=max_new_tokens, blank_images=blank_images
            )
            files.append(shard.rank, records)
            new.update((r["question_id"], r) for r in records)
            progress.update(len(batch))
    if max_questions is not None:
        return None
    gathered = shard.gather([new.get(q.question_id) or earlier[q.question_id] for q in mine])
    merged = None
    if gathered is not None:
        by_id = {record["question_id"]: record for record in gathered}
        merged = [by_id[q.question_id] for q in questions]
        files.write_merged(merged)
    shard.barrier()  # the merged file is written before any partial file goes
    files.remove_partials(None if shard.is_main else shard.rank)
    return merged


def format_score(result: dict, blank: bool = False) -> str:
    label = "accuracy (blank images)" if blank else "accuracy"
    lines = [f"{label}: {100 * result['accuracy']:.1f}% ({result['correct']}/{result['count']})"]
    for category, values in sorted(result.get("per_category", {}).items()):
        lines.append(
            f"  {category}: {100 * values['accuracy']:.1f}% ({values['correct']}/{values['count']})"
        )
    return "\n".join(lines)
