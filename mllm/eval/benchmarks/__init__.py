"""Standard benchmarks in their published formats, each scored by its official metric.

One module per benchmark registers its :class:`~mllm.eval.benchmarks.base.Benchmark` in
``BENCHMARKS``; importing this package fills the table.
"""

# Every benchmark module, imported for its registration.
from mllm.eval.benchmarks import (  # noqa: F401
    chair,
    gqa,
    mmbench,
    mme,
    pope,
    refcoco,
    scienceqa,
    seed,
    textvqa,
    vqav2,
)
from mllm.eval.benchmarks.base import (
    BENCHMARKS,
    Benchmark,
    BenchmarkDataError,
    BenchmarkQuestion,
    BenchmarkReport,
)

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkDataError",
    "BenchmarkQuestion",
    "BenchmarkReport",
]
