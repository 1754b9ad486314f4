"""``mllm data check``: find bad records (structure, images, token lengths) before training."""

from mllm.data.preflight.report import CHECK_KINDS, CheckReport, Finding
from mllm.data.preflight.scan import TokenSettings, check_data

__all__ = ["CHECK_KINDS", "CheckReport", "Finding", "TokenSettings", "check_data"]
