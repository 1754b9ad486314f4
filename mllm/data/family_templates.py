"""The official chat formats of the LLM families, as :class:`Template` s.

Each one renders, character for character, what the family's own ``chat_template`` (its
``tokenizer_config.json``) renders for a plain-text conversation, minus the leading BOS that
the tokenizer adds itself (see ``templates.py``). ``tests/test_family_templates.py`` checks
that against the official Jinja templates, kept in ``mllm/tiny/chat_templates.py``. Labels
follow the rule of every template here: the reply and its end-of-turn token are trained, the
headers and the scaffolding after the end-of-turn token are not.

Imported at the end of ``templates.py``, so the registry is complete whenever templates can
be looked up.
"""

from __future__ import annotations

from dataclasses import replace

from mllm.data.templates import TEMPLATES, Template


def _register(template: Template) -> Template:
    return TEMPLATES.register(template.name)(template)


# Meta's Llama-3-Instruct chat template (messages trimmed; no default system prompt).
LLAMA3 = _register(
    Template(
        name="llama3",
        system_format="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        user_format="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant_end="<|eot_id|>",
        strip_content=True,
        strip_system=True,
        stop_strings=("<|eot_id|>",),
        special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    )
)

# LLaVA-NeXT's ``llava_llama_3`` conversation (lmms-lab/llama3-llava-next-8b): Llama-3's turns
# under LLaVA-NeXT's default system prompt. Its training (``preprocess_llama3``) tokenizes
# exactly this text with one BOS; its inference renders it through the tokenizer's chat
# template and tokenizes that again with a BOS, so an imported LLaVA-NeXT folder sees two
# (``mllm.interop.llava_prompts``).
LLAVA_LLAMA3 = _register(
    replace(
        LLAMA3,
        name="llava_llama_3",
        default_system=(
            "You are a helpful language and vision assistant. You are able to understand the "
            "visual content that the user provides, and assist the user with a variety of tasks "
            "using natural language."
        ),
    )
)

# Qwen2's ChatML: "<|im_start|>role\ntext<|im_end|>\n"; the newline after <|im_end|> is
# scaffolding for the next turn, so it is not trained.
CHATML = _register(
    Template(
        name="chatml",
        system_format="<|im_start|>system\n{system}<|im_end|>\n",
        user_format="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_end="<|im_end|>",
        assistant_suffix="\n",
        default_system="You are a helpful assistant.",
        stop_strings=("<|im_end|>",),
        special_tokens=("<|im_start|>", "<|im_end|>"),
    )
)

# Mistral-7B-Instruct-v0.2: "[INST] q [/INST]a</s>[INST] q2 [/INST]a2</s>". No system prompt
# and no generation header: a prompt ends with " [/INST]" and the reply follows directly.
# "[INST]" is plain text to this tokenizer (v0.3 made it a control token, with another
# template), so it is not a special token here.
MISTRAL = _register(
    Template(
        name="mistral",
        system_format="",
        user_format="[INST] {content} [/INST]",
        assistant_prefix="",
        assistant_end="</s>",
        stop_strings=("</s>",),
        special_tokens=("</s>",),
    )
)

# Llama-3.1 and 3.2 Instruct: Llama-3's turns, plus a system block that is always written and
# starts with the knowledge cut-off and a date. 3.1 fixes the date at "26 Jul 2024"; 3.2's
# template writes today's date unless ``date_string`` is given, which makes training text
# change from day to day, so mllm always writes 3.1's date (pass ``date_string="26 Jul 2024"``
# to ``apply_chat_template`` for the same text).
LLAMA3_1 = _register(
    replace(
        LLAMA3,
        name="llama3.1",
        system_format=(
            "<|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{system}<|eot_id|>"
        ),
        system_always=True,
    )
)

# Qwen2.5 Instruct: ChatML with Qwen2.5's default system prompt; its system block is written
# even for an empty system prompt.
QWEN2_5 = _register(
    replace(
        CHATML,
        name="qwen2.5",
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        system_always=True,
    )
)

# Gemma-2 instruct: "<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\na<end_of_turn>\n",
# messages trimmed, the assistant called "model"; a system turn is an error, as in its template.
GEMMA2 = _register(
    Template(
        name="gemma2",
        system_format="",
        user_format="<start_of_turn>user\n{content}<end_of_turn>\n",
        assistant_prefix="<start_of_turn>model\n",
        assistant_end="<end_of_turn>",
        assistant_suffix="\n",
        strip_content=True,
        stop_strings=("<end_of_turn>",),
        special_tokens=("<start_of_turn>", "<end_of_turn>"),
    )
)

# Gemma-3 instruct: Gemma-2's turns; a system prompt (not trimmed) + "\n\n" opens the first
# user message.
GEMMA3 = _register(
    replace(GEMMA2, name="gemma3", system_format="{system}\n\n", system_in_first_user=True)
)

# Phi-3 / Phi-3.5 mini instruct: "<|user|>\nq<|end|>\n<|assistant|>\na<|end|>\n"; a finished
# conversation ends with the EOS token "<|endoftext|>", which the model never has to write
# (it stops at "<|end|>"), so it is not trained.
PHI3 = _register(
    Template(
        name="phi3",
        system_format="<|system|>\n{system}<|end|>\n",
        user_format="<|user|>\n{content}<|end|>\n",
        assistant_prefix="<|assistant|>\n",
        assistant_end="<|end|>",
        assistant_suffix="\n",
        conversation_end="<|endoftext|>",
        stop_strings=("<|end|>",),
        special_tokens=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    )
)
