"""The ``tinymm`` command: a thin layer over the Python API.

Each subcommand lives in a module of ``tinymm.commands`` that exposes ``add_parser(subparsers)``
(returning its argparse parser) and ``run(args) -> int``; adding one means adding its module to
COMMAND_MODULES. This module gives every subcommand ``--json`` and ``-v``, and turns failures
into exit codes:

- a TinymmError prints one line, ``tinymm: error: <message>``, to stderr and exits with the
  error's ``exit_code`` (2 usage, 3 bad input, 4 bundle, 5 backend); with ``--json`` stdout also
  gets ``{"ok": false, "error": {"kind": ..., "message": ...}}``;
- any other exception prints its type, its message and a hint to rerun with ``-v`` for the
  traceback, and exits with 1;
- a closed stdout pipe (``tinymm listen x.wav | head -1``) ends the run quietly with 0.

Warnings are logged as one line each; OpenCV's and FFmpeg's own messages are silenced below ``-vv``.

Subcommand modules import heavy packages inside ``run()`` so that ``tinymm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import traceback
import warnings
from typing import Any, Iterator, Sequence

from tinymm import __version__
from tinymm.errors import EXIT_OK, EXIT_USAGE, TinymmError

COMMAND_MODULES = (  # each has add_parser(subparsers) and run(args)
    "tinymm.commands.info",
    "tinymm.commands.verify",
    "tinymm.commands.bench",
    "tinymm.commands.caption",
    "tinymm.commands.ask",
    "tinymm.commands.classify",
    "tinymm.commands.embed",
    "tinymm.commands.transcribe",
    "tinymm.commands.command",
    "tinymm.commands.watch",
    "tinymm.commands.listen",
    "tinymm.commands.demo",
)
EXIT_UNEXPECTED = 1  # an exception that is not a TinymmError: a bug, or an unforeseen environment
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
LOG_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)  # by number of -v flags
LOG_FORMAT = "tinymm: %(levelname)s: %(name)s: %(message)s"
# OpenCV's own log and FFmpeg's (through OpenCV) write to stderr directly; below -vv they stay quiet
# (tinymm reports what failed in its own one line). Set before cv2 is imported; a user's value wins.
QUIET_OPENCV_ENV = {"OPENCV_LOG_LEVEL": "SILENT", "OPENCV_FFMPEG_LOGLEVEL": "-8"}  # -8: AV_LOG_QUIET


class _UsageError(Exception):
    """argparse found bad arguments; carries the usage line and the message."""

    def __init__(self, usage: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises on bad arguments instead of exiting, so main() reports them."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(self.format_usage().strip(), message)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _write_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``tinymm`` parser with every subcommand of COMMAND_MODULES."""
    parser = _Parser(prog="tinymm", description="Edge-deployable compact multimodal runtime.")
    parser.add_argument("--version", action="version", version=f"tinymm {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more to stderr (-v info, -vv debug with tracebacks)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        sub = module.add_parser(subparsers)
        sub.add_argument("--json", action="store_true", help="print one JSON object to stdout, also on errors")
        # SUPPRESS keeps the top-level count when -v is not repeated after the subcommand.
        sub.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.set_defaults(run=module.run)
    return parser


@contextlib.contextmanager
def _log_to_stderr(verbosity: int) -> Iterator[None]:
    """Send the ``tinymm`` loggers to stderr at the level ``-v`` asks for, for one run."""
    logger = logging.getLogger("tinymm")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    old_level, old_showwarning = logger.level, warnings.showwarning
    logger.addHandler(handler)
    logger.setLevel(LOG_LEVELS[min(verbosity, len(LOG_LEVELS) - 1)])

    def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                          file: Any = None, line: str | None = None) -> None:
        # Python's form is two lines (the message, then the source line that warned): one here.
        logging.getLogger("tinymm.warnings").warning("%s: %s", category.__name__, _one_line(str(message)))

    warnings.showwarning = _one_line_warning
    try:
        yield
    finally:
        warnings.showwarning = old_showwarning
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _report_error(kind: str, message: str, *, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    sys.stderr.write(f"tinymm: error: {message}\n")
    if as_json:
        _write_json({"ok": False, "error": {"kind": kind, "message": message, **(extra or {})}})


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """Parsed arguments, or the exit code when parsing ended the run (--help, --version, bad usage)."""
    try:
        return parser.parse_args(argv)
    except _UsageError as e:
        if "--json" not in argv:
            sys.stderr.write(e.usage + "\n")
        _report_error("usage", _one_line(str(e)) + " (see tinymm --help)", as_json="--json" in argv)
        return EXIT_USAGE
    except SystemExit as e:  # --help and --version print, then exit 0
        return e.code if isinstance(e.code, int) else EXIT_OK


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (e.g. captured in tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tinymm`` with ``argv`` (default: the process arguments); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = _parse(build_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    args = parsed
    as_json = bool(getattr(args, "json", False))
    if args.verbose < 2:
        for name, value in QUIET_OPENCV_ENV.items():
            os.environ.setdefault(name, value)
    with _log_to_stderr(args.verbose):
        try:
            return int(args.run(args))
        except TinymmError as e:
            _report_error(e.kind, _one_line(str(e)), as_json=as_json)
            if args.verbose >= 2:
                traceback.print_exc(file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            _report_error("interrupted", "interrupted", as_json=as_json)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # the reader went away (`tinymm listen x.wav | head -1`): a normal end
            _silence_stdout()
            return EXIT_OK
        except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
            if args.verbose:
                traceback.print_exc(file=sys.stderr)
            hint = "" if args.verbose else " (rerun with -v to see the traceback)"
            message = f"unexpected {type(e).__name__}: {_one_line(str(e))}{hint}"
            _report_error("unexpected", message, as_json=as_json, extra={"type": type(e).__name__})
            return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
