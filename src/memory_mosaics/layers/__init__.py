"""Memory Mosaic layers: feature extractors, bandwidths, contextual and persistent memories."""

from .bandwidth import AdaptiveBandwidth, FixedBandwidth, LearnedBandwidth, make_bandwidth
from .contextual import ContextualMemory, ContextualState
from .extractors import ComplexLinear, GatedLeakyKey, LeakyAverageKey, LinearKey, PeekValue
from .feedforward import GeluMLP, SwiGLU
from .multilevel import ShortLongMemory
from .persistent import PersistentMemory

__all__ = [
    "AdaptiveBandwidth",
    "FixedBandwidth",
    "GeluMLP",
    "LearnedBandwidth",
    "make_bandwidth",
    "ContextualMemory",
    "ContextualState",
    "ComplexLinear",
    "GatedLeakyKey",
    "LeakyAverageKey",
    "LinearKey",
    "PeekValue",
    "PersistentMemory",
    "ShortLongMemory",
    "SwiGLU",
]
