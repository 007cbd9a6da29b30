"""``mosaics reproduce EXPERIMENT``: one command per experiment of the paper.

Each experiment is a module of :mod:`memory_mosaics.experiments` that defines ``EXPERIMENT``
(its name on the command line), ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

from .. import experiments

HELP = "reproduce an experiment (moons, regbench, language, mqar) or a study (ablations, sensitivity)"


def add_arguments(parser) -> None:
    from ..cli import add_subcommands

    add_subcommands(parser, experiments, "experiment", "EXPERIMENT")
