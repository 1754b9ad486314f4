"""Glue between mllm models and other projects' tools (lmms-eval).

Each integration imports its host project only when the host loads it, so ``import mllm``
never needs them installed.
"""

from __future__ import annotations

from typing import Any


def lmms_eval_models() -> Any:
    """lmms-eval's ``lmms_eval.models`` entry point: the ``mllm`` model's manifest.

    lmms-eval calls this while building its model registry; the model class
    (:class:`mllm.integrations.lmms_eval.MllmModel`) is imported only when ``--model mllm``
    is asked for.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="mllm", simple_class_path="mllm.integrations.lmms_eval.MllmModel")
