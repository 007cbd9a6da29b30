"""The ``mosaics`` command line: ``mosaics <command> [options]``.

Each command is a module of :mod:`memory_mosaics.commands` that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Bad input ends with a one-line
``mosaics: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosaics", description="Memory Mosaics: train, evaluate, generate, reproduce.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        name = getattr(module, "COMMAND", info.name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"mosaics: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mosaics: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
