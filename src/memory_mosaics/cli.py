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


def add_subcommands(parser: argparse.ArgumentParser, package, dest: str, name_attr: str) -> None:
    """One subcommand per module of ``package`` that defines ``HELP``, ``add_arguments(parser)`` and
    (unless it only groups subcommands) ``run(args)``; its name is the module's ``name_attr``
    (default: the module name). Modules without ``HELP`` (helpers) are skipped."""
    sub = parser.add_subparsers(dest=dest, required=True, metavar=dest.upper())
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if not hasattr(module, "HELP"):
            continue
        p = sub.add_parser(getattr(module, name_attr, info.name), help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        if hasattr(module, "run"):  # a group of subcommands (reproduce) leaves _run to the chosen one
            p.set_defaults(_run=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mosaics", description="Memory Mosaics: train, evaluate, generate, reproduce."
    )
    add_subcommands(parser, commands, "command", "COMMAND")
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
