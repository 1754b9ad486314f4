"""Speed benchmarks: our training and generation against transformers' Llava (scripts/bench.py)."""
