"""Vision towers, one file each; importing this package registers every one in ``VISION_TOWERS``.

Adding a tower is one file plus one name in the import below.
"""

from mllm.models.vision import clip, dinov2, eva_clip, siglip

__all__ = ["clip", "dinov2", "eva_clip", "siglip"]
