"""Synthetic data for the CPU demo that trains a tiny multimodal model from scratch.

The generator lives in :mod:`mllm.demo.shapes` (not re-exported here, so that
``python -m mllm.demo.shapes`` runs it without a double-import warning).
"""
