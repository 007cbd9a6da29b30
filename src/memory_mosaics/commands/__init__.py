"""Sub-commands of the ``mosaics`` CLI, one module each (see :mod:`memory_mosaics.cli`)."""
