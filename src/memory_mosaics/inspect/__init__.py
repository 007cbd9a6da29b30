"""See inside a Memory Mosaic: what each memory retrieves, from where, and how sharply.

    from memory_mosaics.inspect import inspect
    ins = inspect(model, idx)                     # idx (T,) token ids
    mem = ins.layers[0].memories[0]               # layer 0's contextual memory
    mem.retrieval.sources[h, t], mem.retrieval.weights[h, t]   # top-k pairs read by query t, head h

Modules: :mod:`.sparse` (top-k retrieval weights, chunked), :mod:`.memories` (one memory's
retrieval and parameters), :mod:`.language` (a language model on a text), :mod:`.moons` (the
three-moons model), :mod:`.export` (JSON-ready data), :mod:`.page` (the self-contained HTML page).
"""

from .language import Inspection, LayerInspection, inspect
from .memories import MemoryInspection
from .sparse import SparseWeights

__all__ = ["Inspection", "LayerInspection", "MemoryInspection", "SparseWeights", "inspect"]
