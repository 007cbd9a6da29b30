"""matplotlib, optional everywhere: figures are drawn when it is installed (the ``plots`` extra)."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot with the Agg backend, or None (and one line saying so) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figures (pip install 'memory-mosaics[plots]')", flush=True)
        return None
    return plt
