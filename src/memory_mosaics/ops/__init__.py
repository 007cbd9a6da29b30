"""Tensor operations, each with a plain reference implementation and a fast one tested against it.

``small_head`` is a compiled kernel registered as ``torch.library`` custom ops (``native`` builds and
loads it safely); ``leaky_average_matrix`` is the branch-free form used while ``torch.export`` traces.
"""

from . import native, small_head
from .leaky_average import (
    leaky_average,
    leaky_average_chunked,
    leaky_average_matrix,
    leaky_average_reference,
    leaky_average_scan,
)
from .retrieval import causal_retrieval, causal_retrieval_reference, causal_retrieval_weights, memory_readout

__all__ = [
    "leaky_average",
    "leaky_average_chunked",
    "leaky_average_matrix",
    "leaky_average_reference",
    "leaky_average_scan",
    "causal_retrieval",
    "causal_retrieval_reference",
    "causal_retrieval_weights",
    "memory_readout",
    "native",
    "small_head",
]
