"""Registration with ``transformers`` on ``import memory_mosaics``, without importing it.

``transformers`` takes seconds to import, so ``import memory_mosaics`` does not import it. Instead
:func:`install` registers the Auto classes (by importing :mod:`.modeling`, which registers
its classes and :mod:`.configuration`'s) right away when ``transformers`` is
already imported, and otherwise when it is imported later (a one-shot import hook that runs after
``transformers``' own ``__init__``). Nothing happens when ``transformers`` is not installed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

ENTRY = ("memory_mosaics.hf.configuration", "memory_mosaics.hf.modeling")  # they register on import


def _register() -> None:
    if any(name in sys.modules for name in ENTRY):
        return  # being imported right now (it imported transformers): it registers when it is done
    try:
        importlib.import_module("memory_mosaics.hf.modeling")
    except Exception as err:  # never break the user's `import transformers`
        warnings.warn(f"memory_mosaics: could not register with transformers' Auto classes: {err}", stacklevel=2)


class _AfterTransformersImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of ``transformers`` to register after it ran."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if ``transformers`` is imported, else when it is (once)."""
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
        if importlib.util.find_spec("transformers") is not None:
            sys.meta_path.insert(0, _AfterTransformersImport())
