"""The mllm checkpoint format: fixed file names, a manifest, atomic writes, safetensors weights.

Training writes it, inference, ``mllm merge`` and interop read it; this package imports neither
``mllm.training`` nor ``mllm.inference``. ``from mllm import checkpoint as ckpt`` gives:

- ``layout``: file names, ``FORMAT``, the manifest (``read_manifest``, ``write_manifest``),
  ``list_checkpoints``, ``CheckpointError``;
- ``folders``: atomic writes (``staging_path``, ``prepare_staging``, ``commit_staging``,
  ``write_folder``);
- ``weights``: tensors in and out, gathered under ZeRO-3 (``gather_state_dict``,
  ``gathered_parameters``, ``load_weights``, ``write_weights_and_manifest``);
- ``load``: ``load_mllm_checkpoint``, the model rebuilt from its saved recipe and weights.
"""

from mllm.checkpoint.folders import commit_staging, prepare_staging, staging_path, write_folder
from mllm.checkpoint.layout import (
    ENGINE_DIR,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    RECIPE_NAME,
    TRAINER_STATE_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    library_versions,
    list_checkpoints,
    read_manifest,
    write_manifest,
)
from mllm.checkpoint.load import LoadedModel, load_mllm_checkpoint
from mllm.checkpoint.weights import (
    BASE_FROM_CHECKPOINT,
    adapters_manifest,
    gather_state_dict,
    gathered_parameters,
    load_weights,
    write_weights_and_manifest,
)

__all__ = [
    "BASE_FROM_CHECKPOINT",
    "ENGINE_DIR",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "RECIPE_NAME",
    "TRAINER_STATE_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "LoadedModel",
    "adapters_manifest",
    "commit_staging",
    "gather_state_dict",
    "gathered_parameters",
    "library_versions",
    "list_checkpoints",
    "load_mllm_checkpoint",
    "load_weights",
    "prepare_staging",
    "read_manifest",
    "staging_path",
    "write_folder",
    "write_manifest",
    "write_weights_and_manifest",
]
