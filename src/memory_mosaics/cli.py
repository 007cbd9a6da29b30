"""The ``mosaics`` command line: ``mosaics <command> [options]``.

Each command is a module of :mod:`memory_mosaics.commands` that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``.

Errors (one boundary, :func:`main`):

- an expected failure (a bad number or option, a missing, unreadable or wrongly typed path, a file
  that is not UTF-8 or not valid JSON, a corrupted or mismatched checkpoint, a full disk) ends with
  one line ``mosaics: error: <what, where, what to do>`` on stderr and exit status 2;
- a runtime failure (training diverged, out of memory) ends with one such line and exit status 1;
- Ctrl-C ends with ``mosaics: error: interrupted`` and exit status 130;
- a closed output pipe (``mosaics generate ... | head``) ends quietly with exit status 141 (128 +
  SIGPIPE, as a process killed by SIGPIPE);
- a malformed command line (unknown option, bad value) ends with one line naming the command and
  exit status 2 (:class:`Parser`);
- any other exception is a bug and prints its traceback.

``mosaics --debug COMMAND ...`` or the environment variable ``MOSAICS_DEBUG=1`` re-raises every
exception with its traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pickle
import pkgutil
import sys

from . import commands

USAGE_ERROR = 2  # expected failures: bad input, bad path, bad or corrupted file, full disk
RUNTIME_ERROR = 1  # the work itself failed: training diverged, out of memory
INTERRUPTED = 130  # Ctrl-C
BROKEN_PIPE = 141  # stdout closed by its reader (128 + SIGPIPE)

# torch's messages for a checkpoint it cannot read or that does not fit the model
_LOAD_ERRORS = (
    "PytorchStreamReader",
    "Error(s) in loading state_dict",
    "size mismatch",
    "Weights only load failed",
    "invalid load key",
    "failed finding central directory",
)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors (unknown option, missing or malformed value) are one
    line ``mosaics: error: ...`` with exit status 2, like every other expected failure."""

    def error(self, message: str):
        command = self.prog.removeprefix("mosaics").strip()
        where = f"{command}: " if command else ""
        self.exit(USAGE_ERROR, f"mosaics: error: {where}{one_line(message)} (see {self.prog} --help)\n")


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
    parser = Parser(prog="mosaics", description="Memory Mosaics: train, evaluate, generate, reproduce.")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of any error (also: environment variable MOSAICS_DEBUG=1)",
    )
    parser.add_argument(
        "--shared-data",
        metavar="DIR",
        help="the shared data folder that shared:PATH sources name (sets MOSAICS_SHARED_DATA; README, Data)",
    )
    add_subcommands(parser, commands, "command", "COMMAND")
    return parser


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` or ``MOSAICS_DEBUG`` set to anything but empty, 0, false or no."""
    env = os.environ.get("MOSAICS_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(args: argparse.Namespace) -> str:
    """The checkpoint or run folder the command was reading, for load errors that name no file."""
    for name in ("checkpoint", "out"):
        value = getattr(args, name, None)
        if value:
            return f" {value}"
    return ""


def _os_message(exc: OSError) -> str:
    path = exc.filename if exc.filename is not None else None
    if isinstance(exc, BlockingIOError) or path is None and exc.strerror is None:
        return str(exc)
    where = f" {path}" if path is not None else ""
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    if exc.errno == errno.ENOSPC:
        return (
            f"no space left on the device{' writing' + where if where else ''}; free some space or choose another path"
        )
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded{' writing' + where if where else ''}; free some space or choose another path"
    if path is None:
        return str(exc)
    hints = {
        FileNotFoundError: "check the path",
        FileExistsError: "it exists and is not a folder; choose another path",
        NotADirectoryError: "a part of the path is a file, not a folder; choose another path",
        IsADirectoryError: "it is a folder; give a file path",
        PermissionError: "check its permissions or choose another path",
    }
    hint = next((h for kind, h in hints.items() if isinstance(exc, kind)), "check the path and the device")
    return f"{exc.strerror or type(exc).__name__}:{where}; {hint}"


def classify(exc: BaseException, args: argparse.Namespace) -> tuple[int, str] | None:
    """``(exit status, one-line message)`` of an expected failure; None for a bug (traceback)."""
    from .training.loop import TrainingDiverged

    torch = sys.modules.get("torch")
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED, "interrupted (Ctrl-C); a training resumes with --resume"
    if isinstance(exc, TrainingDiverged):
        return RUNTIME_ERROR, f"{exc}"
    out_of_memory = isinstance(exc, RuntimeError) and any(
        key in str(exc) for key in ("can't allocate memory", "CUDA out of memory", "MPS backend out of memory")
    )
    if (
        out_of_memory
        or isinstance(exc, MemoryError)
        or (torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError))
    ):
        first = str(exc).splitlines()[0] if str(exc) else ""
        return RUNTIME_ERROR, f"out of memory ({first or type(exc).__name__}); use a smaller model, batch or input"
    if isinstance(exc, UnicodeDecodeError):
        return USAGE_ERROR, f"input is not UTF-8 text ({exc}); convert it to UTF-8"
    if isinstance(exc, OSError):
        return USAGE_ERROR, _os_message(exc)
    if isinstance(exc, (pickle.UnpicklingError, EOFError)) or type(exc).__name__ == "SafetensorError":
        return (
            USAGE_ERROR,
            f"cannot read the checkpoint{_where(args)}: {one_line(str(exc) or type(exc).__name__, 200)} "
            "(corrupted or truncated file); use another checkpoint",
        )
    if isinstance(exc, RuntimeError) and any(key in str(exc) for key in _LOAD_ERRORS):
        return (
            USAGE_ERROR,
            f"cannot load the checkpoint{_where(args)}: {one_line(str(exc), 200)}; "
            "it is corrupted or was saved by another model: use another checkpoint",
        )
    if isinstance(exc, ValueError):  # also json.JSONDecodeError
        return USAGE_ERROR, str(exc) or type(exc).__name__
    return None


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.shared_data:
        os.environ["MOSAICS_SHARED_DATA"] = args.shared_data  # also seen by worker processes
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:
        if debug_requested(args):
            raise
        _quiet_stdout()
        return BROKEN_PIPE
    except BaseException as exc:  # noqa: BLE001 - the one boundary; bugs are re-raised below
        if debug_requested(args) or isinstance(exc, SystemExit):
            raise
        verdict = classify(exc, args)
        if verdict is None:
            raise
        status, message = verdict
        try:
            print(f"mosaics: error: {one_line(message)}", file=sys.stderr, flush=True)
        except OSError:
            pass
        return status


if __name__ == "__main__":
    sys.exit(main())
