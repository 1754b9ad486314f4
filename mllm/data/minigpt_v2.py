"""MiniGPT-v2's conversation format: Llama-2-chat ``[INST]`` turns whose instruction opens with
a task identifier (``[refer] give me the location of the red star``).

The identifier tells one model which of its jobs a turn asks for: the same image and a similar
sentence want a box after ``[refer]`` and a phrase after ``[identify]``. MiniGPT-v2 renders a
turn as ``[INST] <Img><ImageHere></Img> [task] instruction [/INST]`` and appends the answer
and ``</s>`` directly (``minigpt_base.py``, ``CONV_VISION_minigptv2``). Here the image is
mllm's ``<image>`` marker, on its own line as in all of mllm's data and in ``mllm eval``'s
prompts; only the answer and its ``</s>`` carry labels. A later turn starts ``[INST]`` without
MiniGPT-v2's extra ``<s>`` (templates never write BOS, see ``templates.py``).

Imported at the end of ``templates.py``, which registers ``minigpt_v2`` in ``TEMPLATES``.
"""

from __future__ import annotations

from mllm.data.templates import DEFAULT_IMAGE_TOKEN, TEMPLATES, Template

#: MiniGPT-v2's task identifiers (paper, Table 1), as they appear in an instruction.
TASKS = ("vqa", "caption", "grounding", "refer", "detection", "identify")

MINIGPT_V2 = TEMPLATES.register("minigpt_v2")(
    Template(
        name="minigpt_v2",
        system_format="",
        user_format="[INST] {content} [/INST]",
        assistant_prefix="",
        assistant_end="</s>",
        stop_strings=("</s>",),
        special_tokens=("</s>",),
    )
)


def task_instruction(task: str, text: str, *, image: bool = True) -> str:
    """A human turn for ``task``: ``"<image>\\n[refer] give me the location of ..."``.

    Args:
        task: one of :data:`TASKS`.
        text: the instruction after the identifier.
        image: put the image marker first (a text-only turn has none).

    Raises:
        ValueError: an unknown task; the message lists them.
    """
    if task not in TASKS:
        raise ValueError(f"unknown MiniGPT-v2 task {task!r}; choose one of: {', '.join(TASKS)}")
    instruction = f"[{task}] {text}"
    return f"{DEFAULT_IMAGE_TOKEN}\n{instruction}" if image else instruction


def task_of(text: str) -> str | None:
    """The task identifier an instruction opens with (after any image marker), or None."""
    body = text.replace(DEFAULT_IMAGE_TOKEN, "").lstrip()
    for task in TASKS:
        if body.startswith(f"[{task}]"):
            return task
    return None
