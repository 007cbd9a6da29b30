"""``mosaics reproduce EXPERIMENT``: one command per experiment of the paper.

Each experiment is a module of :mod:`memory_mosaics.experiments` that defines ``EXPERIMENT``
(its name on the command line), ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import importlib
import pkgutil

from .. import experiments

HELP = "reproduce an experiment of the paper (moons, language, regbench)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for info in sorted(pkgutil.iter_modules(experiments.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{experiments.__name__}.{info.name}")
        if not hasattr(module, "EXPERIMENT"):
            continue
        p = sub.add_parser(module.EXPERIMENT, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_experiment=module.run)


def run(args) -> int:
    return args._experiment(args)
