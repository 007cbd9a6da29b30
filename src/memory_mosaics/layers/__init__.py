"""Memory Mosaic layers: feature extractors, bandwidths, contextual and persistent memories."""

from .bandwidth import AdaptiveBandwidth, FixedBandwidth, LearnedBandwidth, make_bandwidth
from .contextual import ContextualMemory, ContextualState
from .extractors import ComplexLinear, GatedLeakyKey, LeakyAverageKey, LinearKey, PeekValue
from .multilevel import ShortLongMemory, SwiGLU
from .persistent import PersistentMemory

__all__ = [
    "AdaptiveBandwidth",
    "FixedBandwidth",
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
