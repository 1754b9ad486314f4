"""Evaluation helpers: scoring LLaVA-format predictions against reference answers.

Submodules are not re-exported here, so ``python -m mllm.eval.scoring`` runs without a
double-import warning.
"""
