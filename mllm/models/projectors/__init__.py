"""Projectors, one file each; importing this package registers every one in ``PROJECTORS``.

Adding a projector is one file plus one name in the import below.
"""

from mllm.models.projectors import abstractor, c_abstractor, concat, ldp, linear, mlp, qformer

__all__ = ["abstractor", "c_abstractor", "concat", "ldp", "linear", "mlp", "qformer"]
