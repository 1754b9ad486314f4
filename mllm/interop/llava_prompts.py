"""Prompt ids as LLaVA's own code builds them for original LLaVA / LLaVA-NeXT checkpoints
(``prompt_tokenization: llava``): ``tokenizer_image_token``'s pieces around each image marker,
and the second BOS of conversations LLaVA-NeXT renders through the tokenizer's chat template.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

#: mllm templates of LLaVA conversations whose prompt LLaVA renders with the tokenizer's chat
#: template (LLaVA-NeXT's ``SeparatorStyle.LLAMA_3``): that text starts with the BOS token,
#: and ``tokenizer_image_token`` adds its own before it, so the model reads two.
CHAT_TEMPLATE_RENDERED = frozenset({"llava_llama_3"})


def _sentencepiece_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of ``text`` (with the tokenizer's BOS) as sentencepiece writes them, dummy prefix
    included.

    Sentencepiece's ``add_dummy_prefix`` puts a ``'▁'`` before the text even when the text
    starts with a space (``" What"`` -> ``"▁▁What"`` -> ``'▁', '▁W', ...``); a fast tokenizer's
    Metaspace puts one only where the text does not already start with ``'▁'``. So for text
    with n leading spaces, sentencepiece's pieces spell n + 1 leading ``'▁'``; where the fast
    tokenizer's spell only n, the text is tokenized with one more leading space, which hands
    the BPE model exactly the string sentencepiece sees. Tokenizers that already write the prefix, or use no ``'▁'`` at all
    (byte-level BPE), are left as they are.
    """
    ids = tokenizer(text)["input_ids"]
    spaces = len(text) - len(text.lstrip(" "))
    if not spaces:
        return ids
    start = int(bool(ids) and ids[0] == tokenizer.bos_token_id)
    spelled = "".join(tokenizer.convert_ids_to_tokens(ids[start:]))
    if len(spelled) - len(spelled.lstrip("▁")) == spaces:
        return tokenizer(" " + text)["input_ids"]
    return ids


def llava_prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    image_token: str,
    image_token_id: int,
    num_image_tokens: int | Sequence[int],
    template: str | None = None,
) -> list[int]:
    """Token ids of ``prompt`` as LLaVA's ``tokenizer_image_token`` builds them, each image
    marker expanded to its image's placeholder ids (where LLaVA splices in its features).

    LLaVA splits the prompt at each image marker and tokenizes every piece alone with the
    slow sentencepiece tokenizer, each with the tokenizer's BOS, and drops every BOS but the
    first. Each piece therefore starts with sentencepiece's dummy prefix ``'▁'``, also where
    it starts with a space (``"<image> What"`` -> ``<image>, '▁', '▁W'``), which tokenizing
    the whole prompt at once does not produce; LLaVA-trained models saw those tokens. Pieces
    are tokenized here as sentencepiece does (``_sentencepiece_ids``), whatever the fast
    tokenizer's ``legacy`` setting. Byte-level BPE tokenizers (Llama-3) have no dummy prefix;
    their pieces are tokenized as they are, as LLaVA does.

    For a template in ``CHAT_TEMPLATE_RENDERED`` the text starts with the BOS token, as the
    chat template LLaVA-NeXT renders it with writes it (mllm's templates leave the BOS to the
    tokenizer), so the ids start with two BOS, as LLaVA-NeXT's inference builds them (its
    training wrote one).

    Args:
        tokenizer: The checkpoint's tokenizer (fast), with ``image_token`` added.
        prompt: The rendered prompt, image markers included.
        image_token: The image marker in ``prompt``.
        image_token_id: The placeholder id each marker expands to.
        num_image_tokens: Placeholders per image, or per marker in order (anyres images).
        template: The mllm template ``prompt`` is rendered in.

    Returns:
        The prompt's ids, BOS first if the tokenizer adds one.

    Raises:
        ValueError: per-marker counts that are not one per marker.
    """
    if template in CHAT_TEMPLATE_RENDERED and tokenizer.bos_token is not None:
        prompt = tokenizer.bos_token + prompt
    pieces = [_sentencepiece_ids(tokenizer, piece) for piece in prompt.split(image_token)]
    if isinstance(num_image_tokens, int):
        num_image_tokens = [num_image_tokens] * (len(pieces) - 1)
    if len(num_image_tokens) != len(pieces) - 1:
        raise ValueError(
            f"{len(pieces) - 1} {image_token} markers but {len(num_image_tokens)} image counts"
        )
    bos = tokenizer.bos_token_id
    drop = int(bos is not None and bool(pieces[0]) and pieces[0][0] == bos)
    ids = pieces[0][:1] if drop else []
    for index, piece in enumerate(pieces):
        if index:
            ids.extend([image_token_id] * num_image_tokens[index - 1])
        ids.extend(piece[drop:])
    return ids
