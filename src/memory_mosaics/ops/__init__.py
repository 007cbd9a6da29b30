"""Tensor operations, each with a plain reference implementation and a fast one tested against it."""

from . import small_head
from .leaky_average import leaky_average, leaky_average_chunked, leaky_average_reference
from .retrieval import causal_retrieval, causal_retrieval_reference, causal_retrieval_weights, memory_readout

__all__ = [
    "leaky_average",
    "leaky_average_chunked",
    "leaky_average_reference",
    "causal_retrieval",
    "causal_retrieval_reference",
    "causal_retrieval_weights",
    "memory_readout",
    "small_head",
]
